"""Images: upload, list, random sample, bytes, thumbnail, labels, delete."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from cropseg_core.bands import LAYOUTS
from cropseg_core.repository import ImageRecord, ImageRepository, Source, check_id
from cropseg_core.web.auth import WRITE
from cropseg_core.web.bodies import read_json, read_upload, receive_upload
from cropseg_core.web.errors import error_responses
from cropseg_core.web.limits import hold_memory, image_memory, reserve_memory
from cropseg_storage.deps import Metrics, Repository, Settings

UPLOAD_FILES = ("label",)
"""Files an upload may carry beside its ``file`` field."""
router = APIRouter(prefix="/api/v1/images", tags=["images"])

ACCEPTED_TYPES = ("image/png", "image/jpeg", "image/tiff")
BROWSER_TYPES = ("image/png", "image/jpeg")
"""What every browser shows as it is: a true-colour file of these is its own picture."""
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{media: {"schema": {"type": "string", "format": "binary"}} for media in ACCEPTED_TYPES},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "label": {"type": "string", "format": "binary", "description": "optional mask"},
                        "layout": {"type": "string", "description": "sensor layout (default rgb)"},
                    },
                    "required": ["file"],
                }
            },
        },
    }
}
LAYOUT_HELP = "Sensor layout of the channels, stored with the image: " + ", ".join(LAYOUTS) + " (default rgb)"
IMMUTABLE = "public, max-age=31536000, immutable"  # content-addressed: the bytes never change


class ImageOut(ImageRecord):
    has_label: bool
    links: dict[str, str] = Field(description="Where to fetch what belongs to this image")


class ImagePage(BaseModel):
    items: list[ImageOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last")


class ImageSample(BaseModel):
    items: list[ImageOut]


def describe(repository: ImageRepository, record: ImageRecord) -> ImageOut:
    base = f"/api/v1/images/{record.id}"
    links = {
        "self": base,
        "metadata": f"{base}/metadata",
        "thumbnail": f"{base}/thumbnail?layout={record.layout}",  # a new URL when the layout changes
        # A TIFF (what drones export) or a false-colour layout: the rendered PNG browsers can show.
        "picture": base
        if record.layout == "rgb" and record.media_type in BROWSER_TYPES
        else f"{base}/picture?layout={record.layout}",
        "layout": f"{base}/layout",
        "label": f"{base}/label",
        "mask": f"{base}/mask",
        "overlay": f"{base}/overlay",
        "segmentation": f"{base}/segmentation",
        "evaluation": f"{base}/evaluation",
    }
    return ImageOut(**record.model_dump(), has_label=repository.has_label(record.id), links=links)


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: ``*`` matches any stored representation, and the comparison is
    weak (``W/"x"`` matches ``"x"``)."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


def cached(
    request: Request, content: bytes | Callable[[], bytes], media_type: str, etag: str, cache_control: str
) -> Response:
    """``content`` (or what the callable makes, only when needed) with its validator, or 304
    when the client already holds it."""
    headers = {"ETag": etag, "Cache-Control": cache_control}
    if not_modified(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    body = content() if callable(content) else content
    return Response(body, media_type=media_type, headers=headers)


@router.post(
    "",
    status_code=201,
    response_model=ImageOut,
    dependencies=WRITE,
    openapi_extra=IMAGE_BODY,
    responses={200: {"model": ImageOut, "description": "The same bytes were stored before"},
               **error_responses(400, 401, 403, 404, 413, 415, 422)},
)  # fmt: skip
async def upload(
    request: Request,
    repository: Repository,
    settings: Settings,
    metrics: Metrics,
    filename: Annotated[
        str | None, Query(max_length=255, description="Display name for a raw-body upload")
    ] = None,
    layout: Annotated[str | None, Query(max_length=32, description=LAYOUT_HELP)] = None,
) -> JSONResponse:
    """Store an image (raw body, or multipart ``file`` with an optional ``label`` mask and
    ``layout`` field).

    The id is the sha256 of the bytes: uploading the same bytes again answers 200 with the
    stored image instead of 201. An unknown layout, or one the file's channels do not fit,
    is refused with 422 before anything is stored. 404: the image was deleted while its label
    was being written (nothing of this upload is kept).
    """
    received = await receive_upload(
        request, settings.image_limits.max_bytes, accepted=ACCEPTED_TYPES, extra_files=UPLOAD_FILES
    )
    async with image_memory(request, received.data, "upload", settings.image_limits):
        record, created = await run_in_threadpool(
            repository.add_image,
            received.data,
            source="upload",
            filename=received.filename or filename,
            label=received.extra.get("label"),
            layout=received.fields.get("layout") or layout,
        )
    metrics.upload_size.observe(record.size)
    metrics.uploads.labels("created" if created else "duplicate").inc()
    if created:  # the gauges are recounted periodically; keep them current in between
        metrics.images.labels(record.source).inc()
        metrics.image_bytes.inc(record.size)
    body = describe(repository, record)
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=201 if created else 200,
        headers={"Location": body.links["self"]},
    )


@router.get("", response_model=ImagePage, responses=error_responses(400))
def list_images(
    repository: Repository,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    source: Source | None = None,
) -> ImagePage:
    """Stored images, newest first, a page at a time."""
    records, next_cursor = repository.page(limit=limit, cursor=cursor, source=source)
    return ImagePage(items=[describe(repository, r) for r in records], next_cursor=next_cursor)


@router.get("/sample", response_model=ImageSample)
def sample_images(
    repository: Repository,
    limit: Annotated[int, Query(ge=1, le=50)] = 9,
    source: Source | None = None,
    labelled: Annotated[bool, Query(description="only images with a ground-truth label; false: any")] = True,
) -> ImageSample:
    """A random selection of labelled examples (the gallery): images whose masks can be scored."""
    records = repository.sample(limit, source, labelled=labelled)
    return ImageSample(items=[describe(repository, r) for r in records])


@router.get(
    "/{image_id}",
    response_class=Response,
    responses={200: {"content": {m: {} for m in ACCEPTED_TYPES}, "description": "The bytes as uploaded"},
               304: {"description": "Not modified"}, **error_responses(400, 404)},
)  # fmt: skip
def image(request: Request, image_id: str, repository: Repository) -> Response:
    """The image exactly as uploaded."""
    record = repository.get(image_id)
    return cached(request, repository.image_bytes(record), record.media_type, f'"{record.id}"', IMMUTABLE)


@router.get("/{image_id}/metadata", response_model=ImageOut, responses=error_responses(400, 404))
def metadata(image_id: str, repository: Repository) -> ImageOut:
    """What is stored about the image, and links to its label, mask, overlay and evaluation."""
    return describe(repository, repository.get(image_id))


@router.get(
    "/{image_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, 304: {"description": "Not modified"},
               **error_responses(400, 404)},
)  # fmt: skip
def thumbnail(request: Request, image_id: str, repository: Repository, settings: Settings) -> Response:
    """A JPEG preview, at most ``STORAGE_THUMBNAIL_SIZE`` pixels a side."""
    record = repository.get(image_id)
    size = settings.thumbnail_size
    etag = f'"{record.id}-{record.layout}-{size}"'
    return cached(request, lambda: made_once(request, record, partial(repository.thumbnail, record, size)),
                  "image/jpeg", etag, IMMUTABLE)  # fmt: skip


class LayoutIn(BaseModel):
    layout: str = Field(max_length=32, description="One of GET /api/v1/layouts (inference)", examples=["cir"])


LAYOUT_BODY_BYTES = 1024


@router.put(
    "/{image_id}/layout",
    response_model=ImageOut,
    dependencies=WRITE,
    responses=error_responses(400, 401, 403, 404, 408, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": LayoutIn.model_json_schema()}},
        }
    },
)
async def put_layout(image_id: str, request: Request, repository: Repository) -> ImageOut:
    """Declare the sensor layout of the image's channels (e.g. ``cir`` for a colour-infrared
    composite). Segment again afterwards: stored masks were made in the previous layout."""
    check_id(image_id)
    body = await read_json(request, LayoutIn, LAYOUT_BODY_BYTES)  # after the token check
    record = await run_in_threadpool(repository.get, image_id)
    async with reserve_memory(request, "upload", record.width * record.height):  # checks the channels
        changed = await run_in_threadpool(repository.set_layout, image_id, body.layout)
    return describe(repository, changed)


@router.get(
    "/{image_id}/picture",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 304: {"description": "Not modified"},
               **error_responses(400, 404)},
)  # fmt: skip
def picture(request: Request, image_id: str, repository: Repository) -> Response:
    """The image as people see it in its layout: true colour, or the layout's false-colour
    composite (a four-band or two-band file is no picture a browser can show as it is)."""
    record = repository.get(image_id)
    etag = f'"{record.id}-{record.layout}-picture"'
    return cached(
        request,
        lambda: made_once(request, record, partial(repository.picture, record)),
        "image/png",
        etag,
        IMMUTABLE,
    )


def made_once(request: Request, record: ImageRecord, kept: Callable[..., bytes | None]) -> bytes:
    """What ``kept()`` finds stored, or what ``kept(make=True)`` makes, holding the memory that
    making a picture of ``record`` needs (only then: a stored picture waits for nobody)."""
    stored = kept(make=False)
    if stored is not None:
        return stored
    with hold_memory(request, "picture", record.width * record.height):
        made = kept(make=True)
    assert made is not None
    return made


@router.put(
    "/{image_id}/label",
    status_code=204,
    dependencies=WRITE,
    openapi_extra=IMAGE_BODY,
    responses=error_responses(400, 401, 403, 404, 413, 415),
)
async def put_label(image_id: str, request: Request, repository: Repository, settings: Settings) -> Response:
    """Set the ground-truth mask (same size as the image; any channel above 127 = vegetation)."""
    check_id(image_id)
    data = await read_upload(request, settings.image_limits.max_bytes, accepted=ACCEPTED_TYPES)
    async with image_memory(request, data, "upload", settings.image_limits):
        await run_in_threadpool(repository.put_label, image_id, data)
    return Response(status_code=204)


@router.get(
    "/{image_id}/label",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(400, 404, 409)},
)
def label(image_id: str, repository: Repository) -> Response:
    """The ground-truth mask as a PNG (255 = vegetation, 0 = soil)."""
    return Response(repository.label(image_id), media_type="image/png", headers={"Cache-Control": "no-cache"})


@router.delete(
    "/{image_id}", status_code=204, dependencies=WRITE, responses=error_responses(400, 401, 403, 404)
)
def delete_image(image_id: str, repository: Repository, metrics: Metrics) -> Response:
    """Delete the image with its label, masks and thumbnail (prediction records stay: they are history)."""
    record = repository.delete(image_id)
    metrics.images.labels(record.source).dec()
    metrics.image_bytes.dec(record.size)
    return Response(status_code=204)
