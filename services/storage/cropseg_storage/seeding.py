"""First start: load the committed sample tiles and a few real field photos, with their labels,
into an empty store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cropseg_core.repository import ImageRepository

log = logging.getLogger(__name__)

REAL_PHOTOS_PER_SET = 2
"""Real photos seeded from each set's ``select/`` split: a few beside the generated tiles."""
LICENCE = "CC BY-SA 4.0, re-encoded by cropseg (see NOTICE)"
REAL_PHOTO_CREDITS = {
    "ews": f"Eschikon Wheat Segmentation, Zenkl et al., ETH Zurich · {LICENCE}",
    "peanut": f"Peanut dataset, T. H. Y. Tran and T. D. K. Phan · {LICENCE}",
}
"""Who made each set of ``model/data/real`` (the repository's NOTICE has the full attribution)."""


def seed_samples(repository: ImageRepository, samples: Path, real_photos: Path | None = None) -> int:
    """Add every tile of ``samples`` (images/, masks/, metadata.jsonl) as source=sample, once,
    each in the sensor layout its file was written in (``file_layout``), and the first
    REAL_PHOTOS_PER_SET photos of each credited set under ``real_photos`` with their credit.

    Does nothing when the store already has samples; returns how many were added. The
    images are content-addressed, so replicas seeding at the same time store each once.
    """
    if repository.count("sample"):
        return 0
    added = _seed_tiles(repository, samples)
    if real_photos is not None:
        added += _seed_real_photos(repository, real_photos)
    return added


def _seed_tiles(repository: ImageRepository, samples: Path) -> int:
    metadata = samples / "metadata.jsonl"
    if not metadata.is_file():
        log.warning("no sample tiles at %s: the gallery starts without them", samples)
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


def _seed_real_photos(repository: ImageRepository, root: Path) -> int:
    """True-colour photos with their masks, only from sets whose licence travels with them."""
    added = 0
    for name, credit in REAL_PHOTO_CREDITS.items():
        folder = root / name
        if not (folder / "LICENSE").is_file():
            log.warning("no licensed real photos at %s: the gallery shows none of them", folder)
            continue
        for image in sorted((folder / "select" / "images").glob("*"))[:REAL_PHOTOS_PER_SET]:
            label = folder / "select" / "masks" / f"{image.stem}.png"
            _, created = repository.add_image(
                image.read_bytes(),
                source="sample",
                filename=f"{name}-{image.name}",
                label=label.read_bytes() if label.is_file() else None,
                credit=credit,
            )
            added += created
    log.info("seeded %d real field photos with labels from %s", added, root)
    return added
