"""Fields: whole orthomosaics kept in the store, one folder each, for storage and the worker.

A field is what a grower uploads from the browser (issue 32): one GeoTIFF of up to a few GB,
too large for the image routes, segmented in the background. Its folder in the store::

    fields/<id>/source.tif     the GeoTIFF as uploaded (byte for byte)
    fields/<id>/field.json     its record (:class:`FieldRecord`), written last: the commit
    fields/<id>/job.json       its segmentation (:class:`FieldJob`): asked for by storage,
                               then progress and outcome written by the worker
    fields/<id>/cancel         present while a cancel asked for is not yet carried out
    fields/<id>/result/<file>  what the worker made (:data:`RESULTS`), each file whole
    fields/<id>/segment-claims/<token>  created-if-absent by each ask to segment: of asks that
                               found the same earlier job, one wins (storage's field_jobs)

A folder without ``field.json`` is an upload that failed half-way: it is not a field, and is
neither listed nor served. The id is the id of the resumable upload that brought the file
(32 hex digits), so a client that knows its upload knows its field.

Storage and the worker meet only through these keys, so the worker may be a local process
(``make up``) or a Kubernetes Job: storage writes ``job.json`` as ``queued`` (and in a cluster
creates the Job), the worker claims it (``segmenting``), rewrites it after every window with
its progress, and ends it ``done``, ``failed`` or ``cancelled``. A worker that dies mid-run
stops updating it: after :data:`STALE_AFTER` the job reads as failed, and asking again resumes
from the worker's last checkpoint.
"""

from __future__ import annotations

import builtins
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from cropseg_core.errors import NotFoundError
from cropseg_core.store import BlobNotFoundError, BlobStore, StoreError

FIELD_ID = re.compile(r"[0-9a-f]{32}")
FIELDS_PREFIX = "fields/"
FieldStatus = Literal["uploaded"]
"""Where the field stands: ``uploaded`` (stored and checked, not yet segmented)."""
JobStatus = Literal["queued", "segmenting", "done", "failed", "cancelled"]
ACTIVE: tuple[JobStatus, ...] = ("queued", "segmenting")
STALE_AFTER = timedelta(minutes=10)
"""A segmenting job whose worker has not written for this long is taken as dead (a window takes
seconds; a worker killed by the OOM killer or a node drain writes nothing more)."""
RESULTS: dict[str, tuple[str, str]] = {
    "mask.tif": ("image/tiff", "The mask as a Cloud-Optimised GeoTIFF: 0 soil, 1 vegetation, 255 no data"),
    "preview.png": ("image/png", "The field with its vegetation tinted, at most 1024 px a side (source CRS)"),
    "map.png": ("image/png", "The preview warped to Web Mercator (EPSG:3857), for web maps"),
    "cover.csv": ("text/csv", "Cover per grid cell: row, col, vegetation_cover, data_area_m2, zone"),
    "cover.geojson": ("application/geo+json", "The grid cells as polygons in WGS84, with cover and zone"),
    "cover.gpkg": ("application/geopackage+sqlite3", "The grid cells in the source CRS, for QGIS and FMIS"),
    "cell-counts.tif": ("image/tiff", "Vegetation and data pixels per 1 m cell: other grids are cut from it"),
    "report.json": ("application/json", "The run's report: sizes, scale, cover summary and zones, timings"),
}
"""The files of a finished field under ``fields/<id>/result/``: media type and description."""


class FieldNotFoundError(NotFoundError):
    code = "field_not_found"


def check_field_id(field_id: str) -> str:
    """``field_id`` if it is 32 lowercase hex digits; :class:`FieldNotFoundError` otherwise (no
    such field can exist, and the id never reaches a key)."""
    if not FIELD_ID.fullmatch(field_id):
        raise FieldNotFoundError(f"no field {field_id!r}: ids are 32 lowercase hex digits")
    return field_id


def source_key(field_id: str) -> str:
    return f"{FIELDS_PREFIX}{check_field_id(field_id)}/source.tif"


def record_key(field_id: str) -> str:
    return f"{FIELDS_PREFIX}{check_field_id(field_id)}/field.json"


def job_key(field_id: str) -> str:
    return f"{FIELDS_PREFIX}{check_field_id(field_id)}/job.json"


def cancel_key(field_id: str) -> str:
    return f"{FIELDS_PREFIX}{check_field_id(field_id)}/cancel"


def result_key(field_id: str, name: str) -> str:
    if name not in RESULTS:
        raise FieldNotFoundError(f"no result {name!r}: a field's results are {', '.join(RESULTS)}")
    return f"{FIELDS_PREFIX}{check_field_id(field_id)}/result/{name}"


class CoverRequest(BaseModel):
    """How the cover grid of a segmentation is cut and classified (``cropseg segment-raster``'s
    ``--cell-m``, ``--zones``, ``--zone-method``)."""

    cell_m: float = Field(default=10.0, gt=0, le=10_000, description="Side of a grid cell in metres")
    zones: int = Field(default=3, ge=2, le=9, description="Number of management zones")
    zone_method: Literal["jenks", "quantile"] = Field(
        default="jenks", description="Natural breaks (Jenks) or equal cell counts per zone (quantile)"
    )


class FieldJob(BaseModel):
    """A field's segmentation: asked for, under way, or over (``fields/<id>/job.json``)."""

    status: JobStatus
    cover: CoverRequest = Field(default_factory=CoverRequest)
    requested: datetime = Field(description="When the segmentation was last asked for")
    backend: Literal["local", "kubernetes"] = Field(
        description="Who runs it: the worker process (make up) or a Kubernetes Job"
    )
    job: str | None = Field(default=None, description="The Kubernetes Job's name (backend kubernetes)")
    started: datetime | None = None
    updated: datetime | None = Field(default=None, description="The worker's last write (its heartbeat)")
    finished: datetime | None = None
    windows_done: int = Field(default=0, ge=0, description="Windows of the raster segmented so far")
    windows_total: int | None = Field(default=None, description="Windows in all (known once started)")
    resumed_from: int = Field(default=0, ge=0, description="Windows a previous run had already done")
    megapixels_per_s: float | None = Field(default=None, description="This run's throughput so far")
    seconds_left: float | None = Field(default=None, description="Estimated, from this run's throughput")
    error: str | None = Field(default=None, description="Why it failed, for a person to act on")

    @property
    def percent(self) -> float:
        if self.status == "done":
            return 100.0
        return 100.0 * self.windows_done / self.windows_total if self.windows_total else 0.0

    def as_seen(self, now: datetime | None = None) -> FieldJob:
        """The job as a reader should take it: one whose worker stopped writing is failed."""
        now = now or datetime.now(UTC)
        last = self.updated or self.started
        if self.status == "segmenting" and last is not None and now - last > STALE_AFTER:
            minutes = int((now - last).total_seconds() // 60)
            return self.model_copy(
                update={
                    "status": "failed",
                    "error": f"the worker stopped reporting {minutes} min ago (killed or evicted?): "
                    "segment again to resume from its last checkpoint",
                }
            )
        return self


class FieldRecord(BaseModel):
    """What is known about a stored field (``fields/<id>/field.json``)."""

    id: str = Field(
        pattern=FIELD_ID.pattern, description="32 hex digits: the id of the upload that brought it"
    )
    name: str = Field(description="Display name (the upload's ``name``, else the file name without suffix)")
    filename: str = Field(description="The file's name on the uploader's computer")
    size: int = Field(ge=0, description="Bytes of the GeoTIFF as uploaded")
    width: int = Field(gt=0, description="Pixels")
    height: int = Field(gt=0, description="Pixels")
    bands: int = Field(gt=0, description="Samples per pixel in the file, alpha included")
    alpha: bool = Field(description="Whether the last band is an alpha (transparency) band")
    layout: str = Field(description="Sensor layout the bands are read in (GET /api/v1/layouts)")
    crs: str | None = Field(description="The CRS as EPSG:<code>, when the GeoKeys name an EPSG code")
    pixel_size: tuple[float, float] | None = Field(
        description="Pixel width and height in CRS units (metres, or degrees for a geographic CRS)"
    )
    bounds: tuple[float, float, float, float] | None = Field(
        description="west, south, east, north in CRS units (north-up rasters with a tie point)"
    )
    created: datetime
    status: FieldStatus = "uploaded"


class FieldCatalogue:
    """The fields of a store: added whole or not at all, listed newest first."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def add(self, record: FieldRecord, source: Path) -> None:
        """Store the file ``source`` as the field's GeoTIFF, then its record; on failure neither."""
        try:
            self.store.upload(source_key(record.id), source)
            self.store.put_json(record_key(record.id), record.model_dump(mode="json"))
        except BaseException:
            self.store.delete_prefix(f"{FIELDS_PREFIX}{record.id}/")
            raise

    def get(self, field_id: str) -> FieldRecord:
        try:
            return FieldRecord.model_validate(self.store.get_json(record_key(field_id)))
        except BlobNotFoundError as e:
            raise FieldNotFoundError(f"no field {field_id}: it was deleted, or never completed") from e
        except ValidationError as e:
            raise StoreError(f"the record of field {field_id} is damaged: {e}") from e

    def exists(self, field_id: str) -> bool:
        return FIELD_ID.fullmatch(field_id) is not None and self.store.exists(record_key(field_id))

    def list(self) -> list[FieldRecord]:
        """Every field, newest first (a field whose record is being deleted meanwhile is left out)."""
        records = []
        for key in self.store.list_keys(FIELDS_PREFIX):
            if key.endswith("/field.json"):
                try:
                    records.append(self.get(key.split("/")[1]))
                except FieldNotFoundError:
                    continue
        return sorted(records, key=lambda record: (record.created, record.id), reverse=True)

    def job(self, field_id: str) -> FieldJob | None:
        """The field's segmentation, None if it was never asked for."""
        try:
            return FieldJob.model_validate(self.store.get_json(job_key(field_id)))
        except BlobNotFoundError:
            return None
        except ValidationError as e:
            raise StoreError(f"the job record of field {field_id} is damaged: {e}") from e

    def put_job(self, field_id: str, job: FieldJob) -> None:
        self.store.put_json(job_key(field_id), job.model_dump(mode="json"))

    def ask_cancel(self, field_id: str) -> None:
        self.store.put(cancel_key(field_id), b"")

    def cancel_asked(self, field_id: str) -> bool:
        return self.store.exists(cancel_key(field_id))

    def clear_cancel(self, field_id: str) -> None:
        self.store.delete(cancel_key(field_id))

    def queued(self) -> builtins.list[str]:
        """Ids of the fields whose segmentation waits for a worker, oldest request first."""
        waiting = []
        for key in self.store.list_keys(FIELDS_PREFIX):
            if key.endswith("/job.json"):
                field_id = key.split("/")[1]
                job = self.job(field_id)
                if job is not None and job.status == "queued":
                    waiting.append((job.requested, field_id))
        return [field_id for _, field_id in sorted(waiting)]

    def delete(self, field_id: str) -> FieldRecord:
        """Remove the field: its record first (it stops being a field), then its files."""
        record = self.get(field_id)
        self.store.delete(record_key(field_id))
        self.store.delete_prefix(f"{FIELDS_PREFIX}{field_id}/")
        return record
