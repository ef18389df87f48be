"""The filesystem backend: a data folder, locally or the shared volume in Kubernetes.

Values are files named by their key. Writes go to a hidden temp file in the same folder,
are fsynced and renamed over the target (or hard-linked for create-only writes, which fails
when the target exists), so a crash -- even SIGKILL or power loss -- leaves either no file
or a whole one. Hidden files are never listed; stale temp files are swept at start-up.
A delete removes the folders it leaves empty; a write racing it in the same folder makes the
folder again (:func:`cropseg_core.files.create_in_folder`).
Record streams are JSONL files appended with one ``write`` per record; a torn last line
from a crash is skipped when read.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cropseg_core.files import create_in_folder, fsync_dir, write_atomic, write_temporary
from cropseg_core.store import (
    BlobInfo,
    BlobNotFoundError,
    BlobStore,
    StoreError,
    Usage,
    check_key,
    encode_json,
)

log = logging.getLogger(__name__)

# Older temp files belong to a writer that died, not a slow one: bodies are read whole before a
# write starts, so a write takes seconds. Swept at start and periodically (storage: every 5 min).
STALE_TEMP_AGE_S = 600
RECORD_SUFFIX = ".jsonl"


class FilesystemStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the data folder {self.root}: {e}") from e
        if not os.access(self.root, os.W_OK | os.X_OK):
            owner = self.root.stat().st_uid
            raise StoreError(
                f"the data folder {self.root} is not writable by this process (uid {os.getuid()}, "
                f"gid {os.getgid()}); it belongs to uid {owner}: chown it to the service's user, "
                "or use a named volume (compose) or the chart's fsGroup"
            )
        self.sweep_temporary()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise BlobNotFoundError(f"{key} not found") from e
        except OSError as e:
            raise StoreError(f"cannot read {key}: {e}") from e

    def put(self, key: str, data: bytes) -> None:
        try:
            write_atomic(self._path(key), data)
        except OSError as e:
            raise StoreError(f"cannot write {key}: {e}") from e

    def download(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise BlobNotFoundError(f"{key} not found") from e
        except OSError as e:
            raise StoreError(f"cannot read {key}: {e}") from e

    def read_chunks(self, key: str, chunk_size: int = 1 << 20) -> tuple[int, Iterator[bytes]]:
        try:
            handle = self._path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise BlobNotFoundError(f"{key} not found") from e
        except OSError as e:
            raise StoreError(f"cannot read {key}: {e}") from e

        def chunks() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(chunk_size):
                    yield chunk

        return os.fstat(handle.fileno()).st_size, chunks()

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def upload(self, key: str, path: Path) -> None:
        target = self._path(key)
        try:
            temporary = write_temporary(target, b"")
            try:
                shutil.copyfile(path, temporary)
                with temporary.open("rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(temporary, target)
            finally:
                temporary.unlink(missing_ok=True)
            fsync_dir(target.parent)
        except OSError as e:
            raise StoreError(f"cannot write {key}: {e}") from e

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            temporary = write_temporary(path, data)
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
            finally:
                temporary.unlink()
            fsync_dir(path.parent)
        except OSError as e:
            raise StoreError(f"cannot write {key}: {e}") from e
        return True

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StoreError(f"cannot delete {key}: {e}") from e
        self._remove_empty_parents(path.parent)
        return True

    def _remove_empty_parents(self, folder: Path) -> None:
        while folder != self.root:
            try:
                folder.rmdir()
            except OSError:  # not empty (or being filled right now): leave it
                return
            folder = folder.parent

    def list_blobs(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[BlobInfo]:
        blobs = []
        for key in self.list_keys(prefix, start_after=start_after):
            try:
                size = (self.root / key).stat().st_size
            except FileNotFoundError:  # deleted while listing
                continue
            blobs.append(BlobInfo(key, size))
            if limit is not None and len(blobs) >= limit:
                break
        return blobs

    def list_keys(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        parent = prefix.rpartition("/")[0]  # the deepest folder the prefix names in full
        folder = self.root / check_key(parent) if parent else self.root
        keys = sorted(
            key
            for key in self._walk(folder)
            if key.startswith(prefix) and (start_after is None or key > start_after)
        )
        return keys if limit is None else keys[:limit]

    def _walk(self, folder: Path) -> list[str]:
        keys: list[str] = []
        for directory, subdirectories, files in os.walk(folder):
            subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
            base = Path(directory).relative_to(self.root).as_posix()
            keys.extend(
                name if base == "." else f"{base}/{name}" for name in files if not name.startswith(".")
            )
        return keys

    def append_record(self, stream: str, record: Mapping[str, Any]) -> None:
        path = self._path(stream + RECORD_SUFFIX)
        line = encode_json(record)
        try:
            descriptor = create_in_folder(
                path.parent, lambda: os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            )
            try:
                os.write(descriptor, line)  # one write: appends from other processes cannot interleave
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except OSError as e:
            raise StoreError(f"cannot append to {stream}: {e}") from e

    def read_records(self, stream: str) -> list[dict[str, Any]]:
        try:
            lines = self._path(stream + RECORD_SUFFIX).read_bytes().splitlines()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StoreError(f"cannot read {stream}: {e}") from e
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except ValueError:
                log.warning("skipping unreadable line %d of %s (torn by a crash?)", number, stream)
        return records

    def streams(self, prefix: str) -> list[str]:
        return [
            blob.key.removesuffix(RECORD_SUFFIX)
            for blob in self.list_blobs(prefix)
            if blob.key.endswith(RECORD_SUFFIX)
        ]

    def check_writable(self) -> None:
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        try:
            write_atomic(probe, b"ok")
            probe.unlink()
        except OSError as e:
            raise StoreError(f"the data folder {self.root} is not writable: {e}") from e

    def usage(self) -> Usage:
        total, _, free = shutil.disk_usage(self.root)
        return Usage(free_bytes=free, total_bytes=total)

    def describe(self) -> str:
        return f"filesystem {self.root}"

    def sweep_temporary(self) -> int:
        """Remove temp files that writers which died left behind; returns how many."""
        cutoff = time.time() - STALE_TEMP_AGE_S
        removed = 0
        for directory, subdirectories, files in os.walk(self.root):
            subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
            for name in files:
                path = Path(directory, name)
                if not (name.startswith(".") and name.endswith(".tmp")):
                    continue
                try:
                    stale = path.stat().st_mtime < cutoff
                except FileNotFoundError:  # its writer renamed or removed it meanwhile
                    continue
                if stale:
                    path.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.info("removed %d stale temp files under %s", removed, self.root)
        return removed
