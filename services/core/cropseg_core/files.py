"""Atomic file writes: a reader sees the old file or the whole new one, never a half file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
FOLDER_TRIES = 5
"""Times a write makes its folder again when a concurrent delete removed it, empty, meanwhile."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync and rename."""
    temporary = write_temporary(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_temporary(path: Path, data: bytes) -> Path:
    """Write ``data`` to a hidden, fsynced temp file beside ``path`` (``.name.XXXX.tmp``); return it."""
    fd, tmp = create_in_folder(
        path.parent, lambda: tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    )
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


@contextlib.contextmanager
def written_beside(path: Path) -> Iterator[Path]:
    """A path for a library that writes files by name (GDAL) to write ``path``'s new content at:
    when the block succeeds it is fsynced and renamed to ``path``; when it fails it is gone.

    It lies in a fresh hidden folder beside ``path`` (the same file system, so the rename is
    atomic) under ``path``'s own name, so a driver that goes by the suffix, or writes files of
    its own beside it (a journal, a copy), finds what it expects and leaves nothing behind.
    """
    folder = create_in_folder(
        path.parent,
        lambda: Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")),
    )
    try:
        temporary = folder / path.name
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_json(path: Path, payload: object) -> None:
    """Write ``payload`` as indented, key-sorted JSON, atomically."""
    write_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def _read_umask() -> int:
    # os.umask can only be read by setting it; do it once at import, before any threads.
    current = os.umask(0)
    os.umask(current)
    return current


_UMASK = _read_umask()


def create_in_folder(folder: Path, create: Callable[[], T]) -> T:
    """``create()`` a file in ``folder``, making the folder (and its parents) first.

    A store removes a folder when its last file is deleted; a delete doing that while a write
    makes the folder or creates its file (a write and a delete racing in the same folder) is
    answered by making the folder again, a few times, rather than by failing the write.
    """
    tries = FOLDER_TRIES
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return create()
        except (FileNotFoundError, FileExistsError):  # FileExistsError: mkdir saw it, then it was gone
            tries -= 1
            if not tries:
                raise


def fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    with contextlib.suppress(FileNotFoundError):  # removed since, hence emptied: nothing to keep
        _fsync(folder)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
