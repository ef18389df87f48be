"""The Open Inference Protocol's wire types: the JSON of metadata, requests and responses.

Field names and shapes are the protocol's (KServe's ``open_inference_rest.yaml``); a request's
binary tensor data (Triton's extension) follows its JSON, whose length the
:data:`HEADER_LENGTH` header gives.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

HEADER_LENGTH = "Inference-Header-Content-Length"
"""Header of a body with binary tensor data: the byte length of its JSON part."""

Parameters = dict[str, str | int | float | bool]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]
