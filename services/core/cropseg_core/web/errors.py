"""One error shape for every service, registered once per app: the domain's errors
(``cropseg_core.errors``, which carry their status and code) mapped to HTTP.

Bodies look like ``{"error": {"code": "not_an_image", "message": "..."}}``; routes under a
*plain* prefix (the Open Inference Protocol's ``/v2``) answer ``{"error": "..."}`` as that
protocol requires.

A client that disconnects while its body is being read (Starlette's ``ClientDisconnect``) caused
no error of ours: it is logged at INFO and answered -- to nobody -- with 499, the status request
metrics count for a client that left (not 500, which would feed the error-ratio alert).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cropseg_core.bands import LayoutError
from cropseg_core.errors import ServiceError
from cropseg_core.imaging import ImageDecodeError
from cropseg_core.pipeline import ScaleError
from cropseg_core.web.metrics import CLIENT_CLOSED

INPUT_ERRORS = (ImageDecodeError, LayoutError, ScaleError)
"""Errors of the core library that a client causes, with their own status_code and code."""

log = logging.getLogger(__name__)


ERROR_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error statuses a route can answer."""
    return {
        status: {"description": "Error", "content": {"application/json": {"schema": ERROR_RESPONSE_SCHEMA}}}
        for status in statuses
    }


def _describe_validation(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
    return f"{location}: {error.get('msg', 'invalid')}" if location else str(error.get("msg", "invalid"))


def install_error_handlers(app: FastAPI, *, plain_prefixes: Sequence[str] = ()) -> None:
    """Register the one error handler for every error a request can end in."""

    def respond(
        request: Request, status: int, code: str, message: str, headers: dict[str, str]
    ) -> JSONResponse:
        if any(request.url.path.startswith(prefix) for prefix in plain_prefixes):
            body: dict[str, Any] = {"error": message}
        else:
            body = {"error": {"code": code, "message": message}}
        return JSONResponse(body, status_code=status, headers=headers or None)

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError | ImageDecodeError | LayoutError | ScaleError)
        headers = exc.headers if isinstance(exc, ServiceError) else {}
        return respond(request, exc.status_code, exc.code, str(exc), headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message = "; ".join(_describe_validation(error) for error in exc.errors())
        return respond(request, 422, "invalid_request", message, {})

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            message = f"{message}: {request.method} {request.url.path} is not an endpoint here (see /docs)"
        return respond(request, exc.status_code, code, message, dict(exc.headers or {}))

    async def client_left(request: Request, exc: Exception) -> JSONResponse:
        log.info("client disconnected while sending the body of %s %s", request.method, request.url.path)
        return respond(request, CLIENT_CLOSED, "client_closed_request", "the client closed the request", {})

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return respond(request, 500, "internal_error", "internal error; see the service log", {})

    app.add_exception_handler(ServiceError, service_error)
    for error in INPUT_ERRORS:
        app.add_exception_handler(error, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_left)
    app.add_exception_handler(Exception, unexpected_error)
