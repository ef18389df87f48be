"""Fields: whole orthomosaics kept in the store, one folder each, for storage and the worker.

A field is what a grower uploads from the browser (issue 32): one GeoTIFF of up to a few GB,
too large for the image routes, segmented in the background. Its folder in the store::

    fields/<id>/source.tif     the GeoTIFF as uploaded (byte for byte)
    fields/<id>/field.json     its record (:class:`FieldRecord`), written last: the commit

A folder without ``field.json`` is an upload that failed half-way: it is not a field, and is
neither listed nor served. The id is the id of the resumable upload that brought the file
(32 hex digits), so a client that knows its upload knows its field.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from cropseg_core.errors import NotFoundError
from cropseg_core.store import BlobNotFoundError, BlobStore, StoreError

FIELD_ID = re.compile(r"[0-9a-f]{32}")
FIELDS_PREFIX = "fields/"
FieldStatus = Literal["uploaded"]
"""Where the field stands: ``uploaded`` (stored and checked, not yet segmented)."""


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

    def delete(self, field_id: str) -> FieldRecord:
        """Remove the field: its record first (it stops being a field), then its files."""
        record = self.get(field_id)
        self.store.delete(record_key(field_id))
        self.store.delete_prefix(f"{FIELDS_PREFIX}{field_id}/")
        return record
