"""The S3 backend: the same interface over an S3-compatible bucket, for scale-out.

A PUT replaces an object atomically by the protocol, so no temp objects are needed;
create-only writes send ``If-None-Match: *`` (AWS S3 since 2024, MinIO, SeaweedFS).
Objects cannot be appended to, so each record of a stream is its own object,
``<stream>/<nanoseconds>-<random>.json``, read back in key (= time) order.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cropseg_core.store import (
    BlobInfo,
    BlobNotFoundError,
    BlobStore,
    S3Settings,
    StoreError,
    check_key,
    encode_json,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_MISSING = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3Store(BlobStore):
    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.client: S3Client = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id.get_secret_value() if settings.access_key_id else None,
            aws_secret_access_key=(
                settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
            ),
            config=Config(
                connect_timeout=settings.timeout_s,
                read_timeout=settings.timeout_s,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"},  # works with every S3-compatible server
            ),
        )
        if settings.create_bucket:
            self._create_bucket()

    def _create_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except ClientError as e:
                if _code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise StoreError(f"cannot create bucket {self.bucket}: {e}") from e
        except BotoCoreError as e:
            raise StoreError(f"S3 endpoint {self.settings.endpoint_url} unreachable: {e}") from e

    def _object(self, key: str) -> str:
        return self.prefix + check_key(key)

    @contextlib.contextmanager
    def _reading(self, key: str) -> Iterator[None]:
        """S3's errors of a read as the store's: a missing object, or a failure saying which key."""
        try:
            yield
        except ClientError as e:
            if _code(e) in _MISSING:
                raise BlobNotFoundError(f"{key} not found") from e
            raise StoreError(f"cannot read {key}: {e}") from e
        except BotoCoreError as e:
            raise StoreError(f"cannot read {key}: {e}") from e

    def get(self, key: str) -> bytes:
        with self._reading(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._object(key))["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data)
        except (ClientError, BotoCoreError) as e:
            raise StoreError(f"cannot write {key}: {e}") from e

    def download(self, key: str, path: Path) -> None:
        with self._reading(key):
            self.client.download_file(self.bucket, self._object(key), str(path))

    def read_chunks(self, key: str, chunk_size: int = 1 << 20) -> tuple[int, Iterator[bytes]]:
        with self._reading(key):
            answer = self.client.get_object(Bucket=self.bucket, Key=self._object(key))
        body = answer["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                with self._reading(key):
                    yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

        return int(answer["ContentLength"]), chunks()

    def upload(self, key: str, path: Path) -> None:
        # Large files go up in parts; the object appears only when the upload completes.
        try:
            self.client.upload_file(str(path), self.bucket, self._object(key))
        except (ClientError, BotoCoreError, S3UploadFailedError) as e:
            raise StoreError(f"cannot write {key}: {e}") from e

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data, IfNoneMatch="*")
        except ClientError as e:
            if _code(e) in _PRECONDITION_FAILED:
                return False
            raise StoreError(f"cannot write {key}: {e}") from e
        except BotoCoreError as e:
            raise StoreError(f"cannot write {key}: {e}") from e
        return True

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as e:
            if _code(e) in _MISSING:
                return False
            raise StoreError(f"cannot look up {key}: {e}") from e
        except BotoCoreError as e:
            raise StoreError(f"cannot look up {key}: {e}") from e
        return True

    def delete(self, key: str) -> bool:
        existed = self.exists(key)  # S3's DELETE succeeds either way
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._object(key))
        except (ClientError, BotoCoreError) as e:
            raise StoreError(f"cannot delete {key}: {e}") from e
        return existed

    def list_blobs(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[BlobInfo]:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after is not None:
            arguments["StartAfter"] = self.prefix + start_after
        blobs: list[BlobInfo] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**arguments):
                for item in page.get("Contents", []):
                    blobs.append(BlobInfo(item["Key"].removeprefix(self.prefix), item["Size"]))
                    if limit is not None and len(blobs) >= limit:
                        return blobs
        except (ClientError, BotoCoreError) as e:
            raise StoreError(f"cannot list {prefix!r}: {e}") from e
        return blobs

    def append_record(self, stream: str, record: Mapping[str, Any]) -> None:
        check_key(stream)
        self.put(f"{stream}/{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.json", encode_json(record))

    def read_records(self, stream: str) -> list[dict[str, Any]]:
        return [json.loads(self.get(blob.key)) for blob in self.list_blobs(check_key(stream) + "/")]

    def streams(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            pages = list(paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix, Delimiter="/"))
        except (ClientError, BotoCoreError) as e:
            raise StoreError(f"cannot list {prefix!r}: {e}") from e
        folders = [common["Prefix"] for page in pages for common in page.get("CommonPrefixes", [])]
        return sorted(folder.removeprefix(self.prefix).rstrip("/") for folder in folders)

    def check_writable(self) -> None:
        key = f"health/probe-{uuid.uuid4().hex}"
        try:
            self.put(key, b"ok")
            self.client.delete_object(Bucket=self.bucket, Key=self._object(key))
        except (StoreError, ClientError, BotoCoreError) as e:
            raise StoreError(
                f"bucket {self.bucket} at {self.settings.endpoint_url} is not writable: {e}"
            ) from e

    def usage(self) -> None:
        return None

    def describe(self) -> str:
        where = self.settings.endpoint_url or "AWS S3"
        return f"s3 {where} bucket {self.bucket}" + (f" prefix {self.prefix}" if self.prefix else "")
