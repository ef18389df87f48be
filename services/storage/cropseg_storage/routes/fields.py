"""Fields: whole orthomosaics uploaded from the browser with tus (resumable), listed, read,
segmented in the background (:mod:`cropseg_storage.field_jobs`), their results downloaded, deleted.

The upload endpoints speak tus 1.0.0 (:mod:`cropseg_storage.tus`) over the staging folder
(:mod:`cropseg_storage.staging`); the last chunk's PATCH checks the file's header
(:mod:`cropseg_storage.orthomosaic`) and moves it into the store as a field
(:mod:`cropseg_core.fields`), whose id is the upload's. ``HEAD`` of an upload is its ``GET``
with the body dropped (the app's HTTP hygiene answers every HEAD so).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Body, Depends, Header, Request, Response
from fastapi import Path as PathParameter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, computed_field
from starlette.concurrency import run_in_threadpool

from cropseg_core.bands import LayoutError, get_layout
from cropseg_core.errors import ClientError, PayloadTooLargeError, ServiceError
from cropseg_core.fields import (
    ACTIVE,
    RESULTS,
    CoverRequest,
    FieldCatalogue,
    FieldJob,
    FieldNotFoundError,
    FieldRecord,
    check_field_id,
    result_key,
)
from cropseg_core.store import BlobNotFoundError, StoreError
from cropseg_core.web.auth import WRITE
from cropseg_core.web.bodies import paced_parts
from cropseg_core.web.errors import error_responses
from cropseg_storage import field_jobs, tus
from cropseg_storage.deps import Fields, Launcher, Metrics, Settings, Staging
from cropseg_storage.field_jobs import (
    cancel_segmentation,
    field_folders,
    request_segmentation,
    result_missing,
)
from cropseg_storage.metrics import StorageMetrics
from cropseg_storage.orthomosaic import TIFF_MAGIC, check_filename, check_magic, inspect
from cropseg_storage.settings import StorageSettings
from cropseg_storage.staging import Chunk, StagedUpload, UploadNotFoundError, UploadStaging
from cropseg_storage.tus import TusHeader

log = logging.getLogger(__name__)

PREFIX = "/api/v1/fields"
UPLOADS = f"{PREFIX}/uploads"
router = APIRouter(prefix=PREFIX, tags=["fields"])
TUS = [Depends(tus.check_version)]
WRITE_BYTES = 1024 * 1024
"""Bytes of a chunk gathered before they are written (the server's parts are ~64 KiB)."""
MAGIC_BYTES = len(TIFF_MAGIC[0])
SMALLEST_TIFF = 8
BINARY = {"type": "string", "format": "binary"}


class ChunkTooLargeError(PayloadTooLargeError):
    code = "chunk_too_large"


class UploadTooLargeError(PayloadTooLargeError):
    code = "upload_too_large"


class UploadStatus(BaseModel):
    """An upload in progress (the tus HEAD's headers, as JSON for a GET)."""

    id: str
    offset: int = Field(description="Bytes received (Upload-Offset)")
    length: int = Field(description="Bytes of the whole file (Upload-Length)")
    expires: datetime | None = Field(description="When an incomplete upload is deleted; null once complete")
    field: str | None = Field(description="The field's URL once the upload completed")


class JobOut(FieldJob):
    """The field's segmentation as a reader should take it (a worker silent for 10 minutes: failed)."""

    cancelling: bool = Field(description="A cancel was asked for: the worker stops at its next window")

    @computed_field(description="Share of the windows segmented, 0 to 100")  # type: ignore[prop-decorator]
    @property
    def percent(self) -> float:
        return round(super().percent, 1)


class FieldLinks(BaseModel):
    self: str = Field(description="This field")
    segment: str = Field(description="POST a CoverRequest here to segment the field")
    cancel: str = Field(description="POST here to cancel its segmentation")
    results: dict[str, str] = Field(
        description="The results the store holds, by name (mask.tif, map.png, cover.geojson...)"
    )


class FieldOut(FieldRecord):
    job: JobOut | None = Field(description="Its last segmentation; null if it was never asked for")
    links: FieldLinks


class FieldList(BaseModel):
    items: list[FieldOut] = Field(description="Newest first")


RESULT_PREFIX = "result/"


def job_out(job: FieldJob, *, cancelling: bool) -> JobOut:
    return JobOut(**job.model_dump(), cancelling=cancelling)


def describe(record: FieldRecord, job: FieldJob | None, names: set[str]) -> FieldOut:
    """``record`` with its job and links; ``names``: what its folder holds (one listing)."""
    url = f"{PREFIX}/{record.id}"
    results = {name: f"{url}/results/{name}" for name in RESULTS if f"{RESULT_PREFIX}{name}" in names}
    seen = job.as_seen() if job is not None else None
    links = FieldLinks(self=url, segment=f"{url}/segment", cancel=f"{url}/cancel", results=results)
    return FieldOut(
        **record.model_dump(),
        job=None if seen is None else job_out(seen, cancelling=seen.status in ACTIVE and "cancel" in names),
        links=links,
    )


def _described(fields: FieldCatalogue, field_id: str, names: set[str]) -> FieldOut:
    return describe(fields.get(field_id), fields.job(field_id) if "job.json" in names else None, names)


def _header_int(value: str | None, name: str) -> int:
    if value is None or not value.isdigit():
        shown = "is missing" if value is None else f"is {value!r}"
        raise ClientError(f"{name} {shown}: send the number of bytes as a non-negative integer")
    return int(value)


@router.options("/uploads", status_code=204, responses={204: {"description": "What the server supports"}})
def upload_options(settings: Settings) -> Response:
    """tus discovery: versions, extensions, the largest file (Tus-Max-Size) and, beyond tus,
    the largest chunk one PATCH may carry (X-Max-Chunk-Size)."""
    return Response(
        status_code=204,
        headers={
            TusHeader.VERSION: tus.VERSION,
            TusHeader.EXTENSION: ",".join(tus.EXTENSIONS),
            TusHeader.MAX_SIZE: str(settings.fields.max_bytes),
            TusHeader.MAX_CHUNK_SIZE: str(settings.fields.max_chunk_bytes),
        },
    )


@router.post(
    "/uploads",
    status_code=201,
    dependencies=[*TUS, *WRITE],
    responses={201: {"description": "Created: its URL in Location"},
               **error_responses(400, 401, 403, 412, 413, 415, 422, 507)},
)  # fmt: skip
async def create_upload(
    staging: Staging,
    settings: Settings,
    metrics: Metrics,
    upload_length: Annotated[
        str | None, Header(alias=TusHeader.UPLOAD_LENGTH, description="Bytes of the whole GeoTIFF")
    ] = None,
    upload_metadata: Annotated[
        str | None,
        Header(
            alias=TusHeader.UPLOAD_METADATA,
            description="base64 values: `filename` (.tif/.tiff, required), `layout` (default rgb), `name`",
        ),
    ] = None,
) -> Response:
    """Create an upload (tus creation). Refused at once: over the size limit (413), not a
    .tif/.tiff (415), an unknown layout (422), not enough disk space (507)."""
    try:
        upload = await run_in_threadpool(
            _create, staging, settings.fields.max_bytes, upload_length, tus.parse_metadata(upload_metadata)
        )
    except (ClientError, LayoutError):
        metrics.field_uploads.labels("rejected").inc()
        raise
    log.info("upload %s of %s (%d bytes) created", upload.id, upload.filename, upload.length)
    return Response(
        status_code=201,
        headers={
            "Location": f"{UPLOADS}/{upload.id}",
            TusHeader.UPLOAD_EXPIRES: tus.http_date(upload.expires),
        },
    )


def _create(
    staging: UploadStaging, max_bytes: int, length_header: str | None, metadata: dict[str, str]
) -> StagedUpload:
    if length_header is None:
        raise ClientError(
            "Upload-Length is missing: send the file's size (deferred lengths are not supported)"
        )
    length = _header_int(length_header, TusHeader.UPLOAD_LENGTH)
    filename = metadata.get("filename", "").strip()
    if not filename or len(filename) > 255:
        raise tus.MetadataError("Upload-Metadata needs the file's name (filename, up to 255 characters)")
    check_filename(filename)
    if length > max_bytes:
        raise UploadTooLargeError(
            f"the file is {length} bytes; the limit is {max_bytes} bytes ({max_bytes / 1024**3:.1f} GiB)"
        )
    if length < SMALLEST_TIFF:
        raise ClientError(f"the file is {length} bytes: too small to be a GeoTIFF")
    layout = get_layout(metadata.get("layout") or None).name
    name = (metadata.get("name") or Path(filename).stem).strip()[:200] or filename
    return staging.create(length=length, filename=filename, name=name, layout=layout)


@router.get(
    "/uploads/{upload_id}",
    response_model=UploadStatus,
    dependencies=TUS,
    responses=error_responses(404, 412),
)
def upload_status(upload_id: str, staging: Staging, fields: Fields) -> Response:
    """tus HEAD (or GET, with a JSON body): how many bytes arrived. A completed upload answers
    its full length, so a client resuming it does not send it again."""
    headers = {"Cache-Control": "no-store"}
    try:
        upload = staging.get(upload_id)
        status = UploadStatus(
            id=upload.id, offset=upload.offset, length=upload.length, expires=upload.expires, field=None
        )
        headers[TusHeader.UPLOAD_EXPIRES] = tus.http_date(upload.expires)
    except UploadNotFoundError:
        if not fields.exists(upload_id):
            raise
        record = fields.get(upload_id)
        status = UploadStatus(
            id=record.id, offset=record.size, length=record.size, expires=None, field=f"{PREFIX}/{record.id}"
        )
    headers |= {TusHeader.UPLOAD_OFFSET: str(status.offset), TusHeader.UPLOAD_LENGTH: str(status.length)}
    return Response(status.model_dump_json(), media_type="application/json", headers=headers)


@router.patch(
    "/uploads/{upload_id}",
    status_code=204,
    dependencies=[*TUS, *WRITE],
    responses={204: {"description": "Received: the new offset in Upload-Offset"},
               **error_responses(400, 401, 403, 404, 408, 409, 412, 413, 415, 422, 423, 503)},
    openapi_extra={"requestBody": {"required": True, "content": {tus.CHUNK_TYPE: {"schema": BINARY}}}},
)  # fmt: skip
async def append_chunk(
    upload_id: str,
    request: Request,
    staging: Staging,
    fields: Fields,
    settings: Settings,
    metrics: Metrics,
    upload_offset: Annotated[
        str | None, Header(alias=TusHeader.UPLOAD_OFFSET, description="Bytes the upload has (from HEAD)")
    ] = None,
) -> Response:
    """Append a chunk at the upload's offset (tus core), streamed to disk. The last chunk checks
    the file (not a TIFF: 415; no georeference, unsupported bands: 422) and stores the field; a
    rejected file leaves nothing behind. A chunk cut short keeps what arrived."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != tus.CHUNK_TYPE:
        raise tus.UnsupportedChunkTypeError(
            f"a chunk's Content-Type must be {tus.CHUNK_TYPE}, not {content_type or 'none'!r}"
        )
    offset = _header_int(upload_offset, TusHeader.UPLOAD_OFFSET)
    declared = request.headers.get("content-length")
    limit = settings.fields.max_chunk_bytes
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ChunkTooLargeError(
            f"the chunk is {declared} bytes; one PATCH may carry at most {limit}: set the client's "
            f"chunk size to {limit} bytes or less (tus-js-client: chunkSize)"
        )
    chunk = await run_in_threadpool(staging.open_chunk, upload_id, offset)
    room = min(limit, chunk.upload.length - offset)
    try:
        if declared is not None and declared.isdigit() and int(declared) > room:
            raise UploadTooLargeError(
                f"the chunk ({declared} bytes at offset {offset}) goes past the upload's length "
                f"({chunk.upload.length} bytes)"
            )
        await _receive(request, chunk, room)
    finally:
        with anyio.CancelScope(shield=True):  # what arrived is kept, even for a client that left
            upload = await run_in_threadpool(staging.close_chunk, chunk)
            metrics.field_upload_bytes.inc(chunk.written)
            if offset < MAGIC_BYTES <= upload.offset:
                await run_in_threadpool(_check_magic, staging, metrics, upload)
    if upload.complete:
        await run_in_threadpool(_complete, staging, fields, settings, metrics, upload)
    headers = {TusHeader.UPLOAD_OFFSET: str(upload.offset)}
    if not upload.complete:
        headers[TusHeader.UPLOAD_EXPIRES] = tus.http_date(upload.expires)
    return Response(status_code=204, headers=headers)


async def _receive(request: Request, chunk: Chunk, room: int) -> None:
    """Write the body into ``chunk`` a megabyte at a time; at most ``room`` bytes."""
    buffer = bytearray()
    try:
        async for data in paced_parts(request, resumable=True):
            if chunk.written + len(buffer) + len(data) > room:
                raise UploadTooLargeError(
                    f"the chunk goes past {room} bytes: the upload's length, or the largest chunk"
                )
            if not buffer and len(data) >= WRITE_BYTES:  # a large part (an in-process client's): no copy
                await run_in_threadpool(chunk.write, data)
                continue
            buffer += data
            if len(buffer) >= WRITE_BYTES:
                await run_in_threadpool(chunk.write, bytes(buffer))
                buffer.clear()
    finally:
        if buffer:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(chunk.write, bytes(buffer))


def _check_magic(staging: UploadStaging, metrics: StorageMetrics, upload: StagedUpload) -> None:
    try:
        check_magic(staging.head(upload.id, MAGIC_BYTES))
    except ClientError:
        _reject(staging, metrics, upload, "not a TIFF")
        raise


def _complete(
    staging: UploadStaging, fields: FieldCatalogue, settings: StorageSettings, metrics: StorageMetrics,
    upload: StagedUpload,
) -> None:  # fmt: skip
    """Check the whole file's header and move it into the store as a field; either way, the
    staging files go."""
    part = staging.part_path(upload.id)
    try:
        facts = inspect(part, upload.layout, max_pixels=settings.fields.max_pixels)
    except (ClientError, LayoutError) as e:
        _reject(staging, metrics, upload, str(e))
        raise
    record = FieldRecord(
        id=upload.id, name=upload.name, filename=upload.filename, size=upload.length, width=facts.width,
        height=facts.height, bands=facts.bands, alpha=facts.alpha, layout=upload.layout, crs=facts.crs,
        pixel_size=facts.pixel_size, bounds=facts.bounds, created=datetime.now(UTC),
    )  # fmt: skip
    try:
        fields.add(record, part)
    except StoreError as e:
        log.error("upload %s: cannot store the field: %s", upload.id, e)
        staging.remove(upload.id)
        raise ServiceError(f"the field could not be stored ({e}): upload it again") from e
    staging.remove(upload.id)
    metrics.field_uploads.labels("completed").inc()
    log.info("upload %s complete: field %r, %d x %d, %s", upload.id, record.name, record.width,
             record.height, record.crs)  # fmt: skip


def _reject(staging: UploadStaging, metrics: StorageMetrics, upload: StagedUpload, why: str) -> None:
    staging.remove(upload.id)
    metrics.field_uploads.labels("rejected").inc()
    log.info("upload %s (%s) rejected: %s", upload.id, upload.filename, why)


@router.delete(
    "/uploads/{upload_id}",
    status_code=204,
    dependencies=[*TUS, *WRITE],
    responses=error_responses(401, 403, 404, 412),
)
def terminate_upload(upload_id: str, staging: Staging, metrics: Metrics) -> Response:
    """Cancel an upload (tus termination): what arrived is deleted."""
    upload = staging.get(upload_id)
    if staging.remove(upload.id):
        metrics.field_uploads.labels("terminated").inc()
    return Response(status_code=204)


@router.get("", response_model=FieldList, summary="List the fields")
def list_fields(fields: Fields) -> FieldList:
    """Every field, newest first, each with its segmentation and the results it has (one listing
    of the store for all of them)."""
    described = []
    for field_id, names in field_folders(fields).items():
        if "field.json" in names:
            try:
                described.append(_described(fields, field_id, names))
            except FieldNotFoundError:  # deleted meanwhile
                continue
    return FieldList(items=sorted(described, key=lambda field: (field.created, field.id), reverse=True))


@router.get("/{field_id}", response_model=FieldOut, summary="Read a field", responses=error_responses(404))
def get_field(field_id: str, fields: Fields) -> FieldOut:
    """What is known about the field (size, bands, layout, CRS, pixel size, bounds), its
    segmentation (status, percent, windows, time left, throughput, why it failed) and links to
    the results the store holds."""
    check_field_id(field_id)
    return _described(fields, field_id, field_folders(fields, field_id).get(field_id, set()))


@router.post(
    "/{field_id}/segment",
    status_code=202,
    response_model=JobOut,
    summary="Segment a field",
    dependencies=WRITE,
    responses={202: {"description": "Queued: follow it with GET /api/v1/fields/{field_id}"},
               **error_responses(401, 403, 404, 409, 422, 503)},
)  # fmt: skip
def segment_field(
    field_id: str,
    fields: Fields,
    launcher: Launcher,
    metrics: Metrics,
    cover: Annotated[
        CoverRequest | None, Body(description="The cover grid: cell size and zones (all optional)")
    ] = None,
) -> JobOut:
    """Queue the field's segmentation in the background, by the code of `cropseg segment-raster`.
    409 `job_active` while one is queued or under way (a second ask of the same moment included);
    a failed or cancelled one resumes from its last checkpoint; a done one with only another
    cover (cell size, zones) recomputes the grid without segmenting again. 503 `launch_failed`
    when no worker could be started (the job reads failed, saying why)."""
    job = request_segmentation(fields, launcher, field_id, cover or CoverRequest())
    metrics.field_segmentations.inc()
    return job_out(job, cancelling=False)


@router.post(
    "/{field_id}/cancel",
    status_code=202,
    response_model=JobOut,
    summary="Cancel a field's segmentation",
    dependencies=WRITE,
    responses={202: {"description": "Cancelled (queued), or asked to stop (segmenting)"},
               **error_responses(401, 403, 404, 409)},
)  # fmt: skip
def cancel_field(field_id: str, fields: Fields) -> JobOut:
    """Cancel the field's segmentation: a queued one is cancelled at once; a running one is asked
    to stop (`cancelling`: the worker stops at its next window, then reads `cancelled`). 409
    `no_active_job` when nothing is queued or running."""
    job = cancel_segmentation(fields, field_id)
    return job_out(job, cancelling=job.status == "segmenting")


RESULT_MEDIA_TYPES = sorted({media_type for media_type, _ in RESULTS.values()})
INLINE = {"preview.png", "map.png"}
DOWNLOAD_CHUNK_BYTES = 1024 * 1024


def content_disposition(kind: str, filename: str) -> str:
    """RFC 6266: a plain-ASCII ``filename`` for old clients, the exact name in ``filename*``."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


RESULT_HELP = "".join(f"\n* `{name}`: {description}" for name, (_, description) in RESULTS.items())


@router.get(
    "/{field_id}/results/{name}",
    summary="Download a result of a field",
    description="A file the field's segmentation made, streamed from the store with Content-Length and "
    "Content-Disposition (attachment; the previews inline). 404 `result_not_found` for a name not "
    "listed here, or while the field has no such result (not segmented yet, under way, failed: the "
    "message says what to do)." + RESULT_HELP,
    response_class=StreamingResponse,
    responses={200: {"description": "The file, streamed, with Content-Length and Content-Disposition",
                     "content": {media_type: {"schema": BINARY} for media_type in RESULT_MEDIA_TYPES}},
               **error_responses(404)},
)  # fmt: skip
def get_result(
    field_id: str,
    name: Annotated[str, PathParameter(description=f"One of {', '.join(RESULTS)}")],
    fields: Fields,
) -> StreamingResponse:
    record = fields.get(field_id)
    if name not in RESULTS:
        raise result_missing(field_id, name, None)
    try:
        size, chunks = fields.store.read_chunks(result_key(field_id, name), DOWNLOAD_CHUNK_BYTES)
    except BlobNotFoundError:
        raise result_missing(field_id, name, fields.job(field_id)) from None
    media_type = RESULTS[name][0]
    disposition = content_disposition("inline" if name in INLINE else "attachment", f"{record.name}.{name}")
    headers = {"Content-Length": str(size), "Content-Disposition": disposition, "Cache-Control": "no-cache"}
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


@router.delete(
    "/{field_id}",
    status_code=204,
    summary="Delete a field",
    dependencies=WRITE,
    responses=error_responses(401, 403, 404),
)
def delete_field(field_id: str, fields: Fields) -> Response:
    """Delete the field with its GeoTIFF and results; a segmentation under way is asked to stop."""
    field_jobs.delete_field(fields, field_id)
    return Response(status_code=204)
