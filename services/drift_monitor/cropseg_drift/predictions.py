"""The prediction records storage appends (``predictions/<date>``), newest first."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from cropseg_core.store import BlobStore


def newest_predictions(
    store: BlobStore, keep: Callable[[dict[str, Any]], bool] = lambda record: True
) -> Iterator[dict[str, Any]]:
    """Each image's newest record that ``keep`` accepts, newest first (its older ones skipped)."""
    seen: set[str] = set()
    for stream in reversed(store.streams("predictions/")):
        for record in reversed(store.read_records(stream)):
            if record["image_id"] not in seen and keep(record):
                seen.add(record["image_id"])
                yield record
