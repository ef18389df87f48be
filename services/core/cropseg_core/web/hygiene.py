"""HTTP hygiene every service shares, as one outermost ASGI middleware.

- ``HEAD`` is answered wherever ``GET`` is (FastAPI routes allow only the methods they declare,
  so HEAD was a 405): the GET is run and its body dropped, its headers (Content-Length, ETag)
  kept, as RFC 9110 asks.
- Every response says ``X-Content-Type-Options: nosniff`` (a browser never runs an uploaded
  image as a script) and may not be framed by another site (``frame-ancestors 'none'``, and
  ``X-Frame-Options`` for old browsers), unless a route set its own Content-Security-Policy.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
)
UI_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""The Content-Security-Policy of a service's own web pages: its scripts, styles and images only."""


class HttpHygiene:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}

        async def respond(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            elif message["type"] == "http.response.body" and head:
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, respond)


def install_http_hygiene(app: FastAPI) -> None:
    """Add the middleware; call it last, so that it is outermost."""
    app.add_middleware(HttpHygiene)
