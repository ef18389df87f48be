"""Field uploads in progress, on a local disk: ``<id>.part`` (the bytes received) and
``<id>.json`` (:class:`StagedUpload`: length, offset, metadata, created, expires).

The offset is the bytes durably written: a chunk is fsynced before its offset is recorded, and
a chunk starts by cutting the file to the recorded offset, so bytes written after the last
record (a crash mid-chunk) are overwritten, never counted. A chunk that ends early (the client
went away, or stalled) keeps what arrived: the client asks for the offset and goes on from
there. One chunk at a time per upload (an exclusive ``flock`` on its file: 423 for a second
one), and at most ``max_receiving`` chunks at once per process (503: retry).

Nothing here knows HTTP: the errors carry their status, as :mod:`cropseg_core.errors` does.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ValidationError

from cropseg_core.errors import ClientError, ConflictError, NotFoundError, ServiceError, UnavailableError
from cropseg_core.files import fsync_dir, write_atomic

log = logging.getLogger(__name__)

UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
HEADROOM_BYTES = 256 * 1024 * 1024
"""Free space left on the volume beyond what uploads need (logs, records, the other services)."""
ORPHAN_AGE = timedelta(hours=1)
"""A ``.part`` without its record is a creation that died between the two files."""


class UploadNotFoundError(NotFoundError):
    code = "upload_not_found"


class OffsetMismatchError(ConflictError):
    code = "offset_mismatch"


class UploadLockedError(ClientError):
    status_code = 423
    code = "upload_locked"


class InsufficientStorageError(ServiceError):
    status_code = 507
    code = "insufficient_storage"


class StagedUpload(BaseModel):
    id: str
    length: int
    offset: int
    filename: str
    name: str
    layout: str
    created: datetime
    expires: datetime

    @property
    def complete(self) -> bool:
        return self.offset == self.length


@dataclass
class Chunk:
    """A PATCH being written: bytes go to the file at the upload's offset."""

    upload: StagedUpload
    handle: BinaryIO
    written: int = 0

    @property
    def offset(self) -> int:
        return self.upload.offset + self.written

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.written += len(data)


class UploadStaging:
    def __init__(
        self, folder: Path, *, expire_after: timedelta, max_receiving: int, retry_after_s: int,
        store_folder: Path | None = None,
    ) -> None:  # fmt: skip
        """``store_folder``: the filesystem store's data folder, which a completed upload is
        copied into (on the same volume it needs its size twice); None for an object store."""
        folder.mkdir(parents=True, exist_ok=True)  # OSError: start-up stops, saying which folder
        self.folder = folder.resolve()
        self.expire_after = expire_after
        self.max_receiving = max_receiving
        self.retry_after_s = retry_after_s
        self.store_folder = store_folder
        self.receiving = 0
        self._counting = threading.Lock()  # chunks open and close in worker threads

    def _part(self, upload_id: str) -> Path:
        return self.folder / f"{upload_id}.part"

    def _record(self, upload_id: str) -> Path:
        return self.folder / f"{upload_id}.json"

    def create(self, *, length: int, filename: str, name: str, layout: str) -> StagedUpload:
        """A new empty upload of ``length`` bytes; 507 when the volume cannot take it."""
        self._check_room(length)
        now = datetime.now(UTC)
        upload = StagedUpload(
            id=secrets.token_hex(16), length=length, offset=0, filename=filename, name=name, layout=layout,
            created=now, expires=now + self.expire_after,
        )  # fmt: skip
        with self._part(upload.id).open("xb"):
            pass
        self._save(upload)  # the record is the commit: a .part alone is an orphan, swept
        return upload

    def _save(self, upload: StagedUpload) -> None:
        write_atomic(self._record(upload.id), upload.model_dump_json().encode())

    def get(self, upload_id: str) -> StagedUpload:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise UploadNotFoundError(f"no upload {upload_id!r}: ids are 32 lowercase hex digits")
        try:
            return StagedUpload.model_validate_json(self._record(upload_id).read_bytes())
        except FileNotFoundError as e:
            raise UploadNotFoundError(
                f"no upload {upload_id}: it was completed, terminated or expired; create a new one"
            ) from e
        except ValidationError as e:
            raise ServiceError(f"the record of upload {upload_id} is damaged: {e}") from e

    def part_path(self, upload_id: str) -> Path:
        return self._part(self.get(upload_id).id)

    def head(self, upload_id: str, size: int) -> bytes:
        """The first ``size`` bytes received."""
        with self.part_path(upload_id).open("rb") as handle:
            return handle.read(size)

    def open_chunk(self, upload_id: str, offset: int) -> Chunk:
        """Start writing at ``offset``, which must be the upload's (409 otherwise); ended by
        :meth:`close_chunk`."""
        with self._counting:
            if self.receiving >= self.max_receiving:
                raise UnavailableError(
                    f"this server receives {self.receiving} chunks at once already; retry after "
                    f"{self.retry_after_s} s",
                    retry_after_s=self.retry_after_s,
                )
            self.receiving += 1
        try:
            return self._open_chunk(upload_id, offset)
        except BaseException:
            with self._counting:
                self.receiving -= 1
            raise

    def _open_chunk(self, upload_id: str, offset: int) -> Chunk:
        upload = self.get(upload_id)
        handle = self._part(upload.id).open("r+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            handle.close()
            raise UploadLockedError(
                f"upload {upload_id} is receiving another chunk: ask for its offset (HEAD) and retry"
            ) from e
        try:
            upload = self.get(upload_id)  # as the lock's holder: no chunk changes it any more
            if offset != upload.offset:
                raise OffsetMismatchError(
                    f"Upload-Offset is {offset} but the upload has {upload.offset} bytes: ask for the "
                    "offset (HEAD) and send the rest from there"
                )
            handle.seek(offset)
            handle.truncate()
        except BaseException:
            handle.close()  # and with it the lock
            raise
        return Chunk(upload, handle)

    def close_chunk(self, chunk: Chunk) -> StagedUpload:
        """Make what the chunk wrote durable and record the new offset; release the upload."""
        try:
            if chunk.written:
                chunk.handle.flush()
                os.fsync(chunk.handle.fileno())
                chunk.upload = chunk.upload.model_copy(update={"offset": chunk.offset})
                if self._record(chunk.upload.id).exists():  # not terminated meanwhile
                    self._save(chunk.upload)
            return chunk.upload
        finally:
            chunk.handle.close()
            with self._counting:
                self.receiving -= 1

    def remove(self, upload_id: str) -> bool:
        """Delete the upload (record first: it stops being one); True if it existed."""
        record = self._record(upload_id)
        existed = record.exists()
        record.unlink(missing_ok=True)
        self._part(upload_id).unlink(missing_ok=True)
        fsync_dir(self.folder)
        return existed

    def sweep_expired(self, now: datetime | None = None) -> int:
        """Remove uploads past their expiry, and orphaned parts; returns how many uploads expired."""
        now = now or datetime.now(UTC)
        expired = 0
        for record in self.folder.glob("*.json"):
            with contextlib.suppress(UploadNotFoundError, ServiceError):
                upload = self.get(record.stem)
                if upload.expires <= now and self.remove(upload.id):
                    expired += 1
                    log.info("upload %s (%s) expired at %d of %d bytes", upload.id, upload.filename,
                             upload.offset, upload.length)  # fmt: skip
        for part in self.folder.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                created = datetime.fromtimestamp(part.stat().st_mtime, UTC)
                if not self._record(part.stem).exists() and created < now - ORPHAN_AGE:
                    part.unlink()
        return expired

    def uploads(self) -> Iterator[StagedUpload]:
        for record in self.folder.glob("*.json"):
            with contextlib.suppress(UploadNotFoundError, ServiceError):
                yield self.get(record.stem)

    def _check_room(self, length: int) -> None:
        """Room for this upload and what the others still need, and for the copy into the store
        that completing it makes."""
        others = list(self.uploads())
        to_receive = length + sum(upload.length - upload.offset for upload in others)
        to_copy = length + sum(upload.length for upload in others)
        staging = shutil.disk_usage(self.folder)
        needed = to_receive + HEADROOM_BYTES
        if self.store_folder is not None:
            if os.stat(self.store_folder).st_dev == os.stat(self.folder).st_dev:
                needed += to_copy
            elif shutil.disk_usage(self.store_folder).free < to_copy + HEADROOM_BYTES:
                raise InsufficientStorageError(
                    f"the data volume has {_gib(shutil.disk_usage(self.store_folder).free)} free and "
                    f"this upload needs {_gib(length)}: delete fields or ask the operator for space"
                )
        if staging.free < needed:
            raise InsufficientStorageError(
                f"the server has {_gib(staging.free)} free for uploads and this one needs {_gib(needed)} "
                f"with {len(others)} others in progress: retry later, delete fields, or ask for more space"
            )


def _gib(size: int) -> str:
    return f"{size / 1024**3:.2f} GiB"
