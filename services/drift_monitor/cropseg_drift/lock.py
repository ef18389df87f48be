"""One drift run at a time, on any backend: a lock object created with a create-only write."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator

from cropseg_core.store import BlobNotFoundError, BlobStore, encode_json

LOCK_KEY = "drift/run.lock"


class RunLockedError(RuntimeError):
    """Another run holds the lock."""


@contextlib.contextmanager
def run_lock(store: BlobStore, ttl_s: float) -> Iterator[None]:
    """Hold the drift lock for the block; a lock older than ``ttl_s`` (its run died) is taken over."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    now = time.time()
    payload = encode_json({"owner": owner, "acquired_at": now, "expires_at": now + ttl_s})
    # Released in `finally` whenever the lock is ours, even when a signal (SIGTERM -> SystemExit)
    # interrupts the acquisition after the create-only write landed but before it returned.
    try:
        if not store.put_if_absent(LOCK_KEY, payload):
            try:
                held = store.get_json(LOCK_KEY)
            except BlobNotFoundError:  # released in between: try once more below
                held = None
            if held is not None and held["expires_at"] > now:
                since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(held["acquired_at"]))
                raise RunLockedError(f"another drift run ({held['owner']}) has been running since {since}")
            store.delete(LOCK_KEY)  # stale: its run died without releasing it
            if not store.put_if_absent(LOCK_KEY, payload):
                raise RunLockedError("another drift run took the lock at the same moment")
        yield
    finally:
        with contextlib.suppress(BlobNotFoundError):
            if store.get_json(LOCK_KEY)["owner"] == owner:
                store.delete(LOCK_KEY)


def is_locked(store: BlobStore) -> bool:
    """True while a run that has not expired holds the lock."""
    try:
        return bool(store.get_json(LOCK_KEY)["expires_at"] > time.time())
    except BlobNotFoundError:
        return False
