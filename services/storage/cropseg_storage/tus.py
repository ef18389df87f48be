"""The tus 1.0.0 resumable-upload protocol as storage speaks it (https://tus.io/protocols/resumable-upload):
the core protocol and the creation, termination and expiration extensions, the ones
``tus-js-client`` (the browser) and ``tuspy`` use. Header names, the ``Upload-Metadata`` codec,
the version check and the middleware that puts ``Tus-Resumable`` on every answer; the routes
are in :mod:`cropseg_storage.routes.fields`, the staging behind them in
:mod:`cropseg_storage.staging`.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from email.utils import format_datetime
from typing import Annotated, Final

from fastapi import Header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cropseg_core.errors import ClientError, UnsupportedMediaTypeError

VERSION: Final = "1.0.0"
EXTENSIONS: Final = ("creation", "termination", "expiration")
CHUNK_TYPE: Final = "application/offset+octet-stream"
"""The Content-Type of a PATCH body."""


class TusHeader:
    RESUMABLE = "Tus-Resumable"
    VERSION = "Tus-Version"
    EXTENSION = "Tus-Extension"
    MAX_SIZE = "Tus-Max-Size"
    UPLOAD_LENGTH = "Upload-Length"
    UPLOAD_OFFSET = "Upload-Offset"
    UPLOAD_METADATA = "Upload-Metadata"
    UPLOAD_EXPIRES = "Upload-Expires"
    MAX_CHUNK_SIZE = "X-Max-Chunk-Size"
    """Not tus: the largest PATCH body accepted (a client's chunk size), told by OPTIONS."""


REQUEST_HEADERS: Final = (
    TusHeader.RESUMABLE, TusHeader.UPLOAD_LENGTH, TusHeader.UPLOAD_OFFSET, TusHeader.UPLOAD_METADATA,
)  # fmt: skip
"""What a browser on another origin must be allowed to send (CORS)."""
RESPONSE_HEADERS: Final = (
    TusHeader.RESUMABLE, TusHeader.VERSION, TusHeader.EXTENSION, TusHeader.MAX_SIZE, TusHeader.UPLOAD_LENGTH,
    TusHeader.UPLOAD_OFFSET, TusHeader.UPLOAD_EXPIRES, TusHeader.MAX_CHUNK_SIZE,
)  # fmt: skip
"""What a browser on another origin must be allowed to read (CORS)."""


class UnsupportedVersionError(ClientError):
    status_code = 412
    code = "unsupported_tus_version"


class MetadataError(ClientError):
    code = "invalid_upload_metadata"


class UnsupportedChunkTypeError(UnsupportedMediaTypeError):
    code = "unsupported_chunk_type"


def check_version(
    tus_resumable: Annotated[
        str | None, Header(alias=TusHeader.RESUMABLE, description=f"The tus version: {VERSION}")
    ] = None,
) -> None:
    """A route dependency: the request speaks tus 1.0.0 (412 otherwise, naming the version spoken)."""
    if tus_resumable != VERSION:
        sent = f"Tus-Resumable {tus_resumable!r}" if tus_resumable else "no Tus-Resumable header"
        raise UnsupportedVersionError(
            f"this server speaks tus {VERSION} and the request sent {sent}: use a tus 1.0 client "
            "(tus-js-client, tuspy)",
            headers={TusHeader.VERSION: VERSION},
        )


def parse_metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64(value)`` pairs (a key alone: empty value)."""
    metadata: dict[str, str] = {}
    for pair in (header or "").split(","):
        if not pair.strip():
            continue
        key, _, encoded = pair.strip().partition(" ")
        if key in metadata:
            raise MetadataError(f"Upload-Metadata names {key!r} twice")
        try:
            metadata[key] = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as e:
            raise MetadataError(
                f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text: encode each value in base64"
            ) from e
    return metadata


def encode_metadata(metadata: dict[str, str]) -> str:
    """The ``Upload-Metadata`` header of ``metadata`` (what a client sends)."""
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in metadata.items())


def http_date(moment: datetime) -> str:
    """RFC 9110's date format, as ``Upload-Expires`` carries it."""
    return format_datetime(moment, usegmt=True)


class TusResumable:
    """Pure ASGI middleware: ``Tus-Resumable: 1.0.0`` on every answer under ``prefix``, errors
    from anywhere (token check, body budget, the error handler) included, as tus asks."""

    def __init__(self, app: ASGIApp, *, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return

        async def respond(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(n, v) for n, v in message.get("headers", []) if n.lower() != b"tus-resumable"]
                message = {**message, "headers": [*headers, (b"tus-resumable", VERSION.encode())]}
            await send(message)

        await self.app(scope, receive, respond)
