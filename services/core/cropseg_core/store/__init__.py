"""Where cropseg keeps its data: one key/value interface, two backends.

Keys are relative POSIX paths (``images/ab/ab12....png``) laid out as in the design's
shared-volume map. Every write is atomic: a reader sees the old value or the whole new one.

* :class:`~cropseg_core.store.filesystem.FilesystemStore` -- a folder, locally or the shared
  volume (PVC) in Kubernetes: temp file + fsync + rename, records in append-only JSONL.
* :class:`~cropseg_core.store.s3.S3Store` -- an S3-compatible bucket for scale-out: a
  PUT is atomic by the protocol, create-only writes use ``If-None-Match: *``, each record
  is its own object.

Errors::

    StoreError                  the backend failed (I/O error, bucket unreachable)
     ├── BlobNotFoundError      no value under that key
     └── InvalidKeyError        the key is not a safe relative path
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.=-]*(/[A-Za-z0-9_-][A-Za-z0-9_.=-]*)*")


class StoreError(RuntimeError):
    """The storage backend failed; the message says which key and why."""


class BlobNotFoundError(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class InvalidKeyError(StoreError, ValueError):
    pass


def check_key(key: str) -> str:
    """``key`` if it is a relative path of plain names (no ``..``, no hidden or empty parts)."""
    if not _KEY.fullmatch(key) or any(part in (".", "..") for part in key.split("/")):
        raise InvalidKeyError(f"invalid storage key {key!r}")
    return key


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int


@dataclass(frozen=True)
class Usage:
    free_bytes: int
    total_bytes: int


class BlobStore(abc.ABC):
    """The operations every backend implements with the same meaning (tested as one suite)."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The value under ``key``; :class:`BlobNotFoundError` when there is none."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing any value."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` only if ``key`` has no value; True if this call created it.

        Of concurrent callers exactly one gets True: it is the commit point of an upload.
        """

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""

    @abc.abstractmethod
    def list_blobs(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[BlobInfo]:
        """Keys starting with ``prefix`` in byte order, after ``start_after``, at most ``limit``."""

    def list_keys(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """:meth:`list_blobs` without sizes: backends that must look each size up skip that."""
        return [blob.key for blob in self.list_blobs(prefix, start_after=start_after, limit=limit)]

    @abc.abstractmethod
    def append_record(self, stream: str, record: Mapping[str, Any]) -> None:
        """Append one JSON record to ``stream`` (e.g. ``predictions/2026-11-27``)."""

    @abc.abstractmethod
    def read_records(self, stream: str) -> list[dict[str, Any]]:
        """The records of ``stream`` in the order they were appended (empty if none)."""

    @abc.abstractmethod
    def streams(self, prefix: str) -> list[str]:
        """Names of the record streams under the folder ``prefix`` (``predictions/``), sorted."""

    @abc.abstractmethod
    def check_writable(self) -> None:
        """Write and remove a probe value; :class:`StoreError` saying why when that fails."""

    @abc.abstractmethod
    def usage(self) -> Usage | None:
        """Free and total bytes of the volume, or None where the backend has no such limit."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data lives, for logs and info endpoints (never credentials)."""

    def sweep_temporary(self) -> int:
        """Remove what writers that died left half-written; returns how many. Nothing by default:
        an object store's PUT is atomic."""
        return 0

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key starting with ``prefix``; returns how many."""
        removed = 0
        for blob in self.list_blobs(prefix):
            removed += self.delete(blob.key)
        return removed

    def download(self, key: str, path: Path) -> None:
        """Copy the value under ``key`` into the file ``path`` (backends stream large values)."""
        path.write_bytes(self.get(key))

    def upload(self, key: str, path: Path) -> None:
        """Store the file ``path`` under ``key`` atomically (backends stream large files)."""
        self.put(key, path.read_bytes())

    def read_chunks(self, key: str, chunk_size: int = 1 << 20) -> tuple[int, Iterator[bytes]]:
        """The size of the value under ``key`` and its bytes in chunks of at most ``chunk_size``,
        for answers too large to hold in memory. A missing key raises here, before any chunk;
        the iterator closes what it opened when exhausted or closed."""
        data = self.get(key)
        return len(data), iter([data[i : i + chunk_size] for i in range(0, len(data), chunk_size)])

    def local_path(self, key: str) -> Path | None:
        """The file holding ``key``'s value where the backend keeps values as files (readers
        that need a seekable file, such as GDAL, then need no copy); None elsewhere."""
        return None

    def get_json(self, key: str) -> Any:
        return json.loads(self.get(key))

    def put_json(self, key: str, payload: object) -> None:
        self.put(key, encode_json(payload))


def encode_json(payload: object) -> bytes:
    return (json.dumps(payload, sort_keys=True, separators=(",", ":")) + "\n").encode()


class S3Settings(BaseModel):
    """An S3-compatible bucket (AWS S3, MinIO, SeaweedFS, Ceph RGW...)."""

    endpoint_url: str | None = None
    """S3 API endpoint, e.g. ``http://seaweedfs:8333``; empty for AWS's own."""
    bucket: str = "cropseg"
    """Bucket holding the data; it must exist unless ``create_bucket`` is on."""
    prefix: str = Field(default="", pattern=r"^([A-Za-z0-9_.-]+/)*$")
    """Key prefix inside the bucket (ending in ``/``), to share a bucket between installs."""
    region: str = "us-east-1"
    """Region name sent in request signatures."""
    access_key_id: SecretStr | None = None
    """Access key; empty uses the default credential chain (env, IRSA, instance profile)."""
    secret_access_key: SecretStr | None = None
    """Secret key belonging to ``access_key_id``."""
    create_bucket: bool = False
    """Create the bucket at start-up when it does not exist."""
    timeout_s: float = Field(default=10.0, gt=0)
    """Connect and read timeout of each S3 call."""


class StoreSettings(BaseModel):
    """Which backend holds the data, and where."""

    backend: Literal["filesystem", "s3"] = "filesystem"
    """``filesystem`` (a folder or the shared volume) or ``s3`` (a bucket, for scale-out)."""
    path: Path = Path("var/data")
    """Data folder of the filesystem backend (the shared volume's mount point in Kubernetes)."""
    s3: S3Settings = S3Settings()
    """Bucket of the s3 backend."""


def open_store(settings: StoreSettings) -> BlobStore:
    """The backend ``settings`` names, ready to use."""
    if settings.backend == "s3":
        from cropseg_core.store.s3 import S3Store  # boto3 is only needed for this backend

        return S3Store(settings.s3)
    from cropseg_core.store.filesystem import FilesystemStore

    return FilesystemStore(settings.path)
