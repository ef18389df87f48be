"""The errors of cropseg's domain, with no web framework: what went wrong and whose fault it is.

Each class carries the HTTP status and the stable ``code`` a service answers with, so that
``cropseg_core.web.errors`` only maps them to responses (and a CLI to exit messages)::

    ServiceError                     500 internal_error
     ├── ClientError                 400 bad_request      the client can fix it
     │    ├── UnauthorizedError      401 unauthorized     (WWW-Authenticate: Bearer)
     │    ├── ForbiddenError         403 forbidden
     │    ├── NotFoundError          404 not_found
     │    ├── ConflictError          409 conflict         not possible in the resource's state
     │    ├── RequestTimeoutError    408 request_timeout
     │    ├── PayloadTooLargeError   413 payload_too_large
     │    └── UnsupportedMediaTypeError 415 unsupported_media_type
     ├── BadGatewayError             502 bad_gateway      a service we call failed
     ├── UnavailableError            503 unavailable      retry later (Retry-After)
     └── GatewayTimeoutError         504 gateway_timeout  a service we call did not answer in time

``cropseg_core.imaging.ImageDecodeError``, ``cropseg_core.bands.LayoutError`` (422: unknown
layout, or a channel count the layout cannot hold) and ``cropseg_core.pipeline.ScaleError``
(422) carry ``code`` and ``status_code`` the same way.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class ClientError(ServiceError):
    status_code = 400
    code = "bad_request"


class UnauthorizedError(ClientError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(ClientError):
    status_code = 403
    code = "forbidden"


class NotFoundError(ClientError):
    status_code = 404
    code = "not_found"


class ConflictError(ClientError):
    status_code = 409
    code = "conflict"


class RequestTimeoutError(ClientError):
    status_code = 408
    code = "request_timeout"


class PayloadTooLargeError(ClientError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(ClientError):
    status_code = 415
    code = "unsupported_media_type"


class BadGatewayError(ServiceError):
    status_code = 502
    code = "bad_gateway"


class GatewayTimeoutError(ServiceError):
    status_code = 504
    code = "gateway_timeout"


class UnavailableError(ServiceError):
    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
