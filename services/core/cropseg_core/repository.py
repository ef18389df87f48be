"""Images, labels, masks and prediction records on a blob store, as the design lays them out.

    images/<id[:2]>/<id>.<ext> + <id>.json   the bytes as uploaded; metadata sidecar
    index/<source>/<inverted ms>-<id>        listing order, newest first (empty markers)
    labels/<id>.png                          ground truth, 255 = vegetation
    masks/<id>/<model-version>.png + .json   predicted mask and its summary
    thumbnails/<id[:2]>/<id>-<layout>.jpg    caches, rebuilt when missing: thumbnail, and the
    thumbnails/<id[:2]>/<id>-<layout>.png    picture of a layout that is not true colour
    predictions/<date>                       record stream, one record per segmentation

Writes to an existing image (label, also one sent with its upload; mask, thumbnail, layout)
check after writing that the image is still there, and take their write back when a DELETE came
in between (404): DELETE removes the sidecar first, so whatever a writer wrote either is removed
by that DELETE or by the writer itself, and nothing reappears when the same bytes are uploaded
again.

``id`` is the sha256 of the bytes, so the same image always gets the same id. An upload
writes the bytes, then its index marker, then creates the sidecar with a create-only write:
that is the commit point. Of two concurrent uploads of the same bytes exactly one creates
the sidecar; a crash before it leaves nothing visible (an unreferenced blob is rewritten by a
retry, a marker without a matching sidecar is skipped when listing).
"""

from __future__ import annotations

import hashlib
import heapq
import io
import random
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from cropseg_core.bands import DEFAULT_LAYOUT, check_channels, decode_picture, get_layout
from cropseg_core.errors import ClientError, ConflictError, NotFoundError
from cropseg_core.imaging import DecodedImage, decode_channels, decode_image
from cropseg_core.masks import BLACK_LEVEL, encode_png, overlay, overlay_colour
from cropseg_core.settings import ImageLimits
from cropseg_core.store import BlobNotFoundError, BlobStore, encode_json

Source = Literal["upload", "sample"]
SOURCES: tuple[Source, ...] = ("sample", "upload")
IMAGE_ID = re.compile(r"[0-9a-f]{64}")
MODEL_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_CURSOR = re.compile(r"[0-9]{13}-[0-9a-f]{64}")  # ASCII digits only
_NEWEST = 9_999_999_999_999  # index markers sort newest first: this minus created_at in ms
_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif"}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff"}


class ImageNotFoundError(NotFoundError):
    code = "image_not_found"


class InvalidIdError(ClientError):
    code = "invalid_id"


class InvalidCursorError(ClientError):
    code = "invalid_cursor"


class LabelSizeMismatchError(ClientError):
    code = "label_size_mismatch"


class NoLabelError(ConflictError):
    code = "no_label"


class NoSegmentationError(ConflictError):
    code = "no_segmentation"


def black_fraction(pixels: np.ndarray) -> float:
    """Share of pixels whose every channel is at most BLACK_LEVEL (out of field), 4 decimals."""
    channels = pixels if pixels.ndim == 2 else pixels.max(axis=2)
    return round(float((channels <= BLACK_LEVEL).mean()), 4)


def check_id(image_id: str) -> str:
    """``image_id`` if it is a lowercase hex sha256; ids never reach a path otherwise."""
    if not IMAGE_ID.fullmatch(image_id):
        raise InvalidIdError(f"invalid image id {image_id!r}: expected 64 lowercase hex digits (sha256)")
    return image_id


class ImageRecord(BaseModel):
    """What is known about a stored image (its sidecar)."""

    id: str = Field(description="sha256 of the image bytes")
    size: int = Field(description="Bytes as uploaded")
    width: int
    height: int
    format: str = Field(description="PNG, JPEG or TIFF (from the content)")
    media_type: str
    source: Source
    filename: str | None = Field(description="Name the client gave, for display only")
    layout: str = Field(
        default=DEFAULT_LAYOUT, description="Sensor layout of the channels (GET /api/v1/layouts); editable"
    )
    black_fraction: float | None = Field(
        default=None,
        description="Share of out-of-field (black) pixels, e.g. outside an orthomosaic's footprint; "
        "null for images stored before it was measured",
    )
    credit: str | None = Field(
        default=None, description="Author, source and licence of a photo that is not ours (samples)"
    )
    created_at: datetime

    @property
    def created_ms(self) -> int:
        return int(self.created_at.timestamp() * 1000)


class SegmentationRecord(BaseModel):
    """A stored prediction of one model version for one image."""

    image_id: str
    source: Source = Field(default="upload", description="Source of the image (drift checks uploads only)")
    model_name: str
    model_version: str
    threshold: float
    vegetation_fraction: float
    latency_ms: float = Field(description="Round trip to the inference service")
    layout: str = Field(default=DEFAULT_LAYOUT, description="Sensor layout the image was read in")
    working_scale: float = Field(default=1.0, description="Factor the image was resized by for the model")
    confidence: list[list[int]] | None = Field(
        default=None,
        description="Pixels by predicted probability, soil then plant (cropseg_core.confidence): what "
        "the drift monitor's label-free IoU estimate reads; absent from inference versions before it",
    )
    created_at: datetime


def _image_key(record: ImageRecord) -> str:
    return f"images/{record.id[:2]}/{record.id}.{_EXTENSIONS[record.format]}"


def _sidecar_key(image_id: str) -> str:
    return f"images/{image_id[:2]}/{image_id}.json"


def _marker_name(record: ImageRecord) -> str:
    return f"{_NEWEST - record.created_ms:013d}-{record.id}"


def binary_label(label: DecodedImage) -> np.ndarray:
    """A label image as a 0/255 mask: any channel above 127 is vegetation."""
    return np.multiply(label.pixels.max(axis=2) > 127, 255, dtype=np.uint8)  # uint8 all the way


class ImageRepository:
    def __init__(self, store: BlobStore, limits: ImageLimits) -> None:
        self.store = store
        self.limits = limits

    # Images

    def add_image(
        self,
        data: bytes,
        *,
        source: Source,
        filename: str | None = None,
        label: bytes | None = None,
        layout: str | None = None,
        credit: str | None = None,
    ) -> tuple[ImageRecord, bool]:
        """Validate and store ``data``; returns the record and whether it was new.

        A ``label`` and the ``layout`` (the file's channels must fit it) are checked before
        anything is written; the label is written after the image, and taken back with
        ImageNotFoundError when a DELETE removed the image meanwhile. The same bytes uploaded
        again keep the layout stored first.
        """
        sensor = get_layout(layout)
        decoded = decode_channels(data, self.limits)
        check_channels(decoded.pixels, sensor)  # ChannelCountError (422) when the file does not fit
        label_png = self._label_png(label, decoded.width, decoded.height) if label is not None else None
        image_id = hashlib.sha256(data).hexdigest()
        record = self.find(image_id)
        created = False
        if record is None:
            record = ImageRecord(
                id=image_id,
                size=len(data),
                width=decoded.width,
                height=decoded.height,
                format=decoded.format,
                media_type=MEDIA_TYPES[decoded.format],
                source=source,
                filename=_display_name(filename),
                layout=sensor.name,
                black_fraction=black_fraction(decoded.pixels),
                credit=credit,
                created_at=datetime.now(UTC),
            )
            self.store.put(_image_key(record), data)
            marker = f"index/{source}/{_marker_name(record)}"
            self.store.put(marker, b"")
            created = self.store.put_if_absent(
                _sidecar_key(image_id), encode_json(record.model_dump(mode="json"))
            )
            if not created:  # a concurrent upload of the same bytes committed first
                record = self.get(image_id)
                if marker != f"index/{record.source}/{_marker_name(record)}":  # same millisecond: same marker
                    self.store.delete(marker)
        if label_png is not None:  # after the commit, and taken back if a DELETE came meanwhile
            self.store.put(f"labels/{image_id}.png", label_png)
            self._still_there(image_id, f"labels/{image_id}.png")
        return record, created

    def find(self, image_id: str) -> ImageRecord | None:
        try:
            return ImageRecord.model_validate(self.store.get_json(_sidecar_key(check_id(image_id))))
        except BlobNotFoundError:
            return None

    def get(self, image_id: str) -> ImageRecord:
        record = self.find(image_id)
        if record is None:
            raise ImageNotFoundError(f"no image with id {image_id}")
        return record

    def set_layout(self, image_id: str, layout: str) -> ImageRecord:
        """Declare the image's sensor layout (its channels must fit); rewrites the sidecar."""
        record = self.get(image_id)
        sensor = get_layout(layout)
        check_channels(decode_channels(self.image_bytes(record), self.limits).pixels, sensor)
        updated = record.model_copy(update={"layout": sensor.name})
        self.store.put(_sidecar_key(image_id), encode_json(updated.model_dump(mode="json")))
        if not self.store.exists(_image_key(record)):  # deleted meanwhile: no sidecar without bytes
            self.store.delete(_sidecar_key(image_id))
            raise ImageNotFoundError(f"image {image_id} was deleted while its layout was being changed")
        return updated

    def image_bytes(self, record: ImageRecord) -> bytes:
        return self.store.get(_image_key(record))

    def _still_there(self, image_id: str, *written: str) -> None:
        """After writing ``written`` for an image: take them back and answer 404 if a DELETE
        removed the image meanwhile (its sidecar goes first)."""
        if not self.store.exists(_sidecar_key(image_id)):
            for key in written:
                self.store.delete(key)
            raise ImageNotFoundError(f"image {image_id} was deleted while this request was writing to it")

    def delete(self, image_id: str) -> ImageRecord:
        """Remove the image and everything derived from it (the sidecar goes first: uncommit)."""
        record = self.get(image_id)
        self.store.delete(_sidecar_key(image_id))
        self.store.delete(f"index/{record.source}/{_marker_name(record)}")
        self.store.delete(_image_key(record))
        self.store.delete(f"labels/{image_id}.png")
        self.store.delete_prefix(f"thumbnails/{image_id[:2]}/{image_id}")
        self.store.delete_prefix(f"masks/{image_id}/")
        return record

    def page(
        self, *, limit: int, cursor: str | None = None, source: Source | None = None
    ) -> tuple[list[ImageRecord], str | None]:
        """Up to ``limit`` images, newest first, after ``cursor``; and the next page's cursor."""
        if cursor is not None and not _CURSOR.fullmatch(cursor):
            raise InvalidCursorError("invalid cursor: pass the next_cursor of the previous page unchanged")
        sources = (source,) if source else SOURCES
        records: list[ImageRecord] = []
        after = cursor
        while len(records) < limit:
            wanted = limit - len(records)
            listings = [
                [
                    key.rsplit("/", 1)[1]
                    for key in self.store.list_keys(
                        f"index/{name}/", start_after=f"index/{name}/{after}" if after else None, limit=wanted
                    )
                ]
                for name in sources
            ]
            names = list(heapq.merge(*listings))[:wanted]
            if not names:
                return records, None
            for name in names:
                record = self.find(name[14:])
                if record is not None and _marker_name(record) == name:  # else: stale marker
                    records.append(record)
            after = names[-1]
        return records, after

    def sample(self, limit: int, source: Source | None = None, labelled: bool = False) -> list[ImageRecord]:
        """Up to ``limit`` images chosen at random (the seed's gallery); only those with a label
        when ``labelled``."""
        markers = [
            key
            for name in ((source,) if source else SOURCES)
            for key in self.store.list_keys(f"index/{name}/")
        ]
        records = []
        for marker in random.sample(markers, len(markers)):
            record = self.find(marker.rsplit("-", 1)[1])
            if record is not None and (not labelled or self.has_label(record.id)):
                records.append(record)
                if len(records) == limit:
                    break
        return records

    def count(self, source: Source) -> int:
        return len(self.store.list_keys(f"index/{source}/"))

    def stored_bytes(self) -> int:
        """Bytes of image files as uploaded (not sidecars, labels or masks)."""
        return sum(blob.size for blob in self.store.list_blobs("images/") if not blob.key.endswith(".json"))

    def thumbnail(self, record: ImageRecord, size: int, *, make: bool = True) -> bytes | None:
        """A JPEG at most ``size`` pixels a side (a picture of the image in its layout), cached;
        None when it is not cached yet and ``make`` is False."""

        def thumbnail() -> bytes:
            image = Image.fromarray(self.decode(record))
            image.thumbnail((size, size), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
            return buffer.getvalue()

        return self._kept(
            record.id, f"thumbnails/{record.id[:2]}/{record.id}-{record.layout}.jpg", thumbnail, make
        )

    def picture(self, record: ImageRecord, *, make: bool = True) -> bytes | None:
        """The image as a PNG people can look at in its layout (:meth:`decode`), cached; None
        when it is not cached yet and ``make`` is False."""
        key = f"thumbnails/{record.id[:2]}/{record.id}-{record.layout}.png"
        return self._kept(record.id, key, lambda: encode_png(self.decode(record), compress_level=3), make)

    def _kept(self, image_id: str, key: str, make: Callable[[], bytes], allowed: bool) -> bytes | None:
        """What is stored at ``key``, or what ``make`` makes, stored there (if ``allowed``)."""
        try:
            return self.store.get(key)
        except BlobNotFoundError:
            if not allowed:
                return None
        data = make()
        self.store.put(key, data)
        self._still_there(image_id, key)
        return data

    def decode(self, record: ImageRecord) -> np.ndarray:
        """An RGB picture of the image: true colour, or its layout's false-colour composite."""
        return decode_picture(self.image_bytes(record), record.layout, self.limits)

    # Labels

    def _label_png(self, data: bytes, width: int, height: int) -> bytes:
        label = decode_image(data, self.limits)
        if (label.width, label.height) != (width, height):
            raise LabelSizeMismatchError(
                f"the label is {label.width}x{label.height} but the image is {width}x{height}: "
                "send a mask of the same size (255 = vegetation, 0 = soil)"
            )
        return encode_png(binary_label(label))

    def put_label(self, image_id: str, data: bytes) -> None:
        record = self.get(image_id)
        self.store.put(f"labels/{image_id}.png", self._label_png(data, record.width, record.height))
        self._still_there(image_id, f"labels/{image_id}.png")

    def label(self, image_id: str) -> bytes:
        self.get(image_id)
        try:
            return self.store.get(f"labels/{image_id}.png")
        except BlobNotFoundError as e:
            raise NoLabelError(
                f"image {image_id} has no label: PUT /api/v1/images/{image_id}/label with a mask first"
            ) from e

    def has_label(self, image_id: str) -> bool:
        return self.store.exists(f"labels/{image_id}.png")

    # Segmentations

    def save_segmentation(self, segmentation: SegmentationRecord, mask_png: bytes) -> None:
        """Store the mask and its summary, then append the prediction record (drift reads it)."""
        version = segmentation.model_version
        base = f"masks/{segmentation.image_id}/{version}"
        summary = segmentation.model_dump(mode="json")
        self.store.delete_prefix(f"{base}.overlay-")  # made from the mask this one replaces
        self.store.put(f"{base}.png", mask_png)
        self.store.put(f"{base}.json", encode_json(summary))
        self._still_there(segmentation.image_id, f"{base}.png", f"{base}.json")
        self.store.append_record(f"predictions/{segmentation.created_at:%Y-%m-%d}", summary)

    def segmentations(self, image_id: str) -> list[SegmentationRecord]:
        """Every model version's latest segmentation of the image, newest first."""
        records = [
            SegmentationRecord.model_validate(self.store.get_json(blob.key))
            for blob in self.store.list_blobs(f"masks/{check_id(image_id)}/")
            if blob.key.endswith(".json")
        ]
        return sorted(records, key=lambda record: record.created_at, reverse=True)

    def mask(self, image_id: str, model_version: str | None = None) -> tuple[SegmentationRecord, bytes]:
        """The predicted mask of ``model_version`` (default: the newest segmentation)."""
        self.get(image_id)
        found = [s for s in self.segmentations(image_id) if model_version in (None, s.model_version)]
        if not found:
            which = f" by model version {model_version}" if model_version else ""
            raise NoSegmentationError(
                f"image {image_id} has no segmentation{which}: "
                f"POST /api/v1/images/{image_id}/segmentation first"
            )
        return found[0], self.store.get(f"masks/{image_id}/{found[0].model_version}.png")

    def mask_and_label(
        self, image_id: str, model_version: str | None = None
    ) -> tuple[SegmentationRecord, np.ndarray, np.ndarray]:
        """The stored mask of ``model_version`` and the image's label, decoded (H, W) for scoring;
        NoLabelError, NoSegmentationError when either is missing."""
        # Both are single-band PNGs this service wrote: decoded as stored, not widened to RGB.
        label = binary_label(decode_channels(self.label(image_id), self.limits))
        segmentation, png = self.mask(image_id, model_version)
        return segmentation, decode_channels(png, self.limits).pixels[..., 0], label

    def overlay(
        self, image_id: str, model_version: str | None = None, *, make: bool = True
    ) -> tuple[SegmentationRecord, bytes | None]:
        """The picture with the predicted vegetation tinted (PNG), made once and kept beside the
        mask (per layout; a new segmentation of that model version replaces it); None when it is
        not kept yet and ``make`` is False."""
        record = self.get(image_id)
        segmentation, mask_png = self.mask(image_id, model_version)
        colour = overlay_colour(get_layout(record.layout))

        def tinted() -> bytes:
            with Image.open(io.BytesIO(mask_png)) as stored:  # our own PNG: one grey channel
                predicted = np.asarray(stored.convert("L"))
            return encode_png(overlay(self.decode(record), predicted, colour=colour), compress_level=3)

        # The colour in the name: an overlay kept before the layout's colour changed is not served.
        tint = "".join(f"{channel:02x}" for channel in colour)
        key = f"masks/{image_id}/{segmentation.model_version}.overlay-{record.layout}-{tint}.png"
        return segmentation, self._kept(image_id, key, tinted, make)

    def predictions(self, day: str) -> list[dict[str, Any]]:
        return self.store.read_records(f"predictions/{day}")


def _display_name(filename: str | None) -> str | None:
    """The last path component of a client-supplied name, printable, at most 200 characters."""
    if not filename:
        return None
    name = re.split(r"[\\/]", filename)[-1]
    name = "".join(character for character in name if character.isprintable())[:200]
    return name or None
