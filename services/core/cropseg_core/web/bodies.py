"""Reading request bodies with a size limit and a pace, as raw bytes or a multipart ``file`` field.

A client that stalls or trickles its body holds the memory of what it has sent and a
connection: a body gets ``body_idle_timeout_s`` between chunks and, after ``body_grace_s``,
must have averaged ``body_min_rate`` bytes a second (the app's
:class:`~cropseg_core.settings.ConnectionLimits`, installed by
:func:`cropseg_core.web.limits.install_request_limits`), or it is answered 408 and its
connection closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from cropseg_core.errors import (
    ClientError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)
from cropseg_core.settings import ConnectionLimits

M = TypeVar("M", bound=BaseModel)


def connection_limits(request: Request) -> ConnectionLimits:
    """The limits the app was given (the defaults for an app built without them)."""
    limits = getattr(request.app.state, "connection_limits", None)
    return limits if isinstance(limits, ConnectionLimits) else ConnectionLimits()


async def paced_parts(request: Request, *, resumable: bool = False) -> AsyncIterator[bytes]:
    """The body's parts as they arrive, under the app's pace rules: a stall or a trickle is 408.
    ``resumable``: the route keeps what arrived, and the messages say to resume (tus uploads)."""
    kept, stalled, slow = (
        (" and kept", "resume from the offset HEAD gives", "resume on a faster connection")
        if resumable
        else ("", "send the body without pausing", "retry on a faster connection")
    )
    limits = connection_limits(request)
    clock = asyncio.get_running_loop().time
    started, received = clock(), 0
    parts = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(limits.body_idle_timeout_s):
                data = await anext(parts)
        except StopAsyncIteration:
            return
        except TimeoutError as e:
            raise RequestTimeoutError(
                f"no part of the request body arrived for {limits.body_idle_timeout_s:g} s ({received} bytes "
                f"received{kept}): {stalled}"
            ) from e
        received += len(data)
        elapsed = clock() - started
        if elapsed > limits.body_grace_s and received < limits.body_min_rate * elapsed:
            raise RequestTimeoutError(
                f"the request body arrives too slowly ({received} bytes in {elapsed:.0f} s{kept}; at least "
                f"{limits.body_min_rate / 1024:g} KiB/s is needed): {slow}"
            )
        if data:
            yield data


async def read_limited_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refusing more than ``max_bytes`` before and while it is received, and a
    body that stalls or trickles (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"request body is {int(declared)} bytes; the limit is {max_bytes} bytes")
    chunks, received = [], 0
    async for chunk in paced_parts(request):
        received += len(chunk)
        if received > max_bytes:
            raise PayloadTooLargeError(f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, model: type[M], max_bytes: int) -> M:
    """A small JSON body as ``model``, read like every body (size limit, pace). Routes call it
    after their token check: a parameter typed with the model would have FastAPI read the body
    before any dependency runs. Invalid JSON or fields: 422, as FastAPI answers them."""
    data = await read_limited_body(request, max_bytes)
    try:
        return model.model_validate_json(data)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from e


@dataclass(frozen=True)
class Upload:
    """An uploaded file: its bytes, the client's file name, other file fields of the form and
    its text fields."""

    data: bytes
    filename: str | None = None
    extra: dict[str, bytes] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


def upload_body_limit(max_bytes: int, extra_files: tuple[str, ...] = ()) -> int:
    """Largest body of an upload of files up to ``max_bytes`` each (the multipart envelope is a
    few hundred bytes; 64 KiB leaves room for text fields)."""
    return max_bytes * (1 + len(extra_files)) + 64 * 1024


async def read_upload(request: Request, max_bytes: int, *, accepted: tuple[str, ...]) -> bytes:
    """Bytes of an upload sent as a raw body (one of ``accepted`` types) or multipart ``file``."""
    return (await receive_upload(request, max_bytes, accepted=accepted)).data


async def receive_upload(
    request: Request, max_bytes: int, *, accepted: tuple[str, ...], extra_files: tuple[str, ...] = ()
) -> Upload:
    """An upload sent as a raw body (one of ``accepted`` types) or as multipart/form-data
    with a ``file`` field and optionally the ``extra_files`` fields (each up to ``max_bytes``).

    The multipart envelope is a few hundred bytes, so the same limit applies to both forms.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        body = await read_limited_body(request, upload_body_limit(max_bytes, extra_files))
        return await _multipart(request, body, max_bytes, extra_files)
    if content_type not in accepted and content_type != "application/octet-stream":
        shown = content_type or "none"
        raise UnsupportedMediaTypeError(
            f"content type {shown!r} is not accepted: send the image as the raw body with "
            f"Content-Type {', '.join(accepted)} or application/octet-stream, "
            "or as multipart/form-data with a 'file' field"
        )
    return Upload(await read_limited_body(request, max_bytes))


async def _multipart(request: Request, body: bytes, max_bytes: int, extra_files: tuple[str, ...]) -> Upload:
    sent = False

    async def replay() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    replayed = Request(request.scope, replay)
    try:
        form = await replayed.form(max_files=1 + len(extra_files), max_fields=8)
    except Exception as e:  # python-multipart and Starlette raise several types for bad input
        raise ClientError(f"malformed multipart body: {e}") from e
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ClientError("multipart body has no 'file' field with the image")
        files = {}
        for name in ("file", *extra_files):
            part = form.get(name)
            if isinstance(part, UploadFile):
                files[name] = await part.read()
                if len(files[name]) > max_bytes:
                    raise PayloadTooLargeError(
                        f"field {name!r} is {len(files[name])} bytes; the limit is {max_bytes}"
                    )
        text = {name: value for name, value in form.items() if isinstance(value, str)}
        return Upload(files.pop("file"), upload.filename, files, text)
    finally:
        await form.close()
