"""Reading request bodies with a size limit, as raw bytes or as a multipart ``file`` field."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile

from cropseg_core.web.errors import ClientError, PayloadTooLargeError, UnsupportedMediaTypeError


async def read_limited_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refusing more than ``max_bytes`` before and while it is received."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"request body is {int(declared)} bytes; the limit is {max_bytes} bytes")
    chunks, received = [], 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise PayloadTooLargeError(f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, max_bytes: int, *, accepted: tuple[str, ...]) -> bytes:
    """Bytes of an upload sent as a raw body (one of ``accepted`` types) or multipart ``file``.

    The multipart envelope is a few hundred bytes, so the same limit applies to both forms.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        body = await read_limited_body(request, max_bytes + 64 * 1024)
        return await _multipart_file(request, body)
    if content_type not in accepted and content_type != "application/octet-stream":
        shown = content_type or "none"
        raise UnsupportedMediaTypeError(
            f"content type {shown!r} is not accepted: send the image as the raw body with "
            f"Content-Type {', '.join(accepted)} or application/octet-stream, "
            "or as multipart/form-data with a 'file' field"
        )
    return await read_limited_body(request, max_bytes)


async def _multipart_file(request: Request, body: bytes) -> bytes:
    sent = False

    async def replay() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    replayed = Request(request.scope, replay)
    try:
        form = await replayed.form(max_files=1, max_fields=8)
    except Exception as e:  # python-multipart and Starlette raise several types for bad input
        raise ClientError(f"malformed multipart body: {e}") from e
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        await form.close()
        raise ClientError("multipart body has no 'file' field with the image")
    try:
        return await upload.read()
    finally:
        await form.close()
