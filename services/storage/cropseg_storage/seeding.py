"""First start: load the committed sample tiles, with their labels, into an empty store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cropseg_core.repository import ImageRepository

log = logging.getLogger(__name__)


def seed_samples(repository: ImageRepository, samples: Path) -> int:
    """Add every tile of ``samples`` (images/, masks/, metadata.jsonl) as source=sample, once,
    each in the sensor layout its file was written in (``file_layout``).

    Does nothing when the store already has samples; returns how many were added. The
    images are content-addressed, so replicas seeding at the same time store each once.
    """
    if repository.count("sample"):
        return 0
    metadata = samples / "metadata.jsonl"
    if not metadata.is_file():
        log.warning("no sample tiles at %s: the gallery starts empty", samples)
        return 0
    added = 0
    for line in metadata.read_text().splitlines():
        entry = json.loads(line)
        name = entry["name"]
        image = next((samples / "images").glob(f"{name}.*"))
        label = samples / "masks" / f"{name}.png"
        _, created = repository.add_image(
            image.read_bytes(),
            source="sample",
            filename=image.name,
            label=label.read_bytes() if label.is_file() else None,
            layout=entry.get("file_layout"),
        )
        added += created
    log.info("seeded %d sample tiles with labels from %s", added, samples)
    return added
