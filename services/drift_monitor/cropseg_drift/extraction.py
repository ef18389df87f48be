"""Features of many images, decoded and computed in worker processes, with a progress bar."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from cropseg_core.bands import LayoutError, decode_picture
from cropseg_core.features import PROPERTY_NAMES, image_features
from cropseg_core.imaging import ImageDecodeError, decode_image

# Below this many images, starting worker processes costs more than it saves.
PARALLEL_FROM = 64


@dataclass
class ImageFeatures:
    """Features of the images that could be read, and why the others could not."""

    ids: list[str] = field(default_factory=list)
    histograms: np.ndarray = field(default_factory=lambda: np.zeros((0, 256), np.float32))
    properties: np.ndarray = field(default_factory=lambda: np.zeros((0, len(PROPERTY_NAMES)), np.float32))
    skipped: list[dict[str, str]] = field(default_factory=list)
    """``{"id": ..., "reason": ...}`` per image that could not be decoded."""


Item = tuple[str, bytes, str]
"""(image id, encoded bytes, sensor layout)."""


def _features_of(item: Item) -> tuple[str, np.ndarray | None, np.ndarray | None, str]:
    image_id, data, layout = item
    try:
        pixels = decode_picture(data, layout)
    except (ImageDecodeError, LayoutError) as e:
        return image_id, None, None, str(e)
    histogram, properties = image_features(pixels)
    return image_id, histogram, properties, ""


def _decode_only(item: Item) -> tuple[str, np.ndarray | None, np.ndarray | None, str]:
    image_id, data, _ = item
    decode_image(data)
    return image_id, None, None, ""


def _map(
    work: Callable[[Item], tuple[str, np.ndarray | None, np.ndarray | None, str]],
    items: Iterable[Item],
    total: int,
    workers: int,
    progress: bool,
) -> Iterator[tuple[str, np.ndarray | None, np.ndarray | None, str]]:
    processes = workers or os.cpu_count() or 1
    parallel = processes > 1 and total >= PARALLEL_FROM
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) if parallel else nullcontext() as pool:
        results = pool.imap(work, items, chunksize=16) if pool else map(work, items)
        yield from tqdm(results, total=total, desc="features", unit="img", disable=not progress)


def extract(items: Iterable[Item], total: int, *, workers: int = 0, progress: bool = False) -> ImageFeatures:
    """Grey histogram and properties of each ``(id, encoded bytes, layout)``, computed on the
    picture in its layout; unreadable images are skipped."""
    found = ImageFeatures()
    histograms, properties = [], []
    for image_id, histogram, values, problem in _map(_features_of, items, total, workers, progress):
        if histogram is None or values is None:
            found.skipped.append({"id": image_id, "reason": problem})
            continue
        found.ids.append(image_id)
        histograms.append(histogram)
        properties.append(values)
    if found.ids:
        found.histograms = np.stack(histograms)
        found.properties = np.stack(properties)
    return found


def decode_all(items: Iterable[Item], total: int, *, workers: int = 0) -> None:
    """Only decode (the benchmark's baseline for :func:`extract`)."""
    for _ in _map(_decode_only, items, total, workers, progress=False):
        pass
