"""Helpers shared by the drift tests: small field-like images, profiles and stores built from them."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from cropseg_drift.settings import DriftSettings
from PIL import Image

from cropseg_core.features import ReferenceProfile, encode_profile, image_features
from cropseg_core.repository import ImageRepository, SegmentationRecord
from cropseg_core.settings import ImageLimits
from cropseg_core.store import BlobStore


def field_image(
    rng: np.random.Generator, brightness: float = 1.0, size: tuple[int, int] = (48, 64)
) -> np.ndarray:
    """Brown soil with noise and a few green patches; ``brightness`` scales it (the seed's shift)."""
    height, width = size
    soil = np.array([120, 90, 60], np.float32) * rng.uniform(0.7, 1.3)
    image = soil + rng.normal(0, 18, (height, width, 3))
    for _ in range(rng.integers(2, 6)):
        y, x, r = rng.integers(0, height), rng.integers(0, width), rng.integers(3, 9)
        yy, xx = np.ogrid[:height, :width]
        image[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = np.array([60, 150, 50]) * rng.uniform(0.8, 1.2)
    return np.clip(image * brightness, 0, 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def make_profile(count: int = 200, seed: int = 0) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    features = [image_features(field_image(rng)) for _ in range(count)]
    return ReferenceProfile(
        grey_histograms=np.stack([f[0] for f in features]),
        properties=np.stack([f[1] for f in features]),
        vegetation_fraction=rng.uniform(0.05, 0.4, count).astype(np.float32),
        predicted_vegetation_fraction=rng.uniform(0.05, 0.4, count).astype(np.float32),
        image_names=np.array([f"ref{i}" for i in range(count)]),
        layouts=np.array(["rgb"] * count),
        sources=np.array(["fields/train"] * count),
        meta={"model_name": "cropseg-unet", "model_version": "1.0.0", "images": count},
    )


def write_profile(path: Path, profile: ReferenceProfile) -> Path:
    path.write_bytes(encode_profile(profile))
    return path


def add_uploads(
    store: BlobStore,
    count: int,
    *,
    brightness: float = 1.0,
    seed: int = 1,
    fractions: tuple[float, float] = (0.05, 0.4),
    confidence: np.ndarray | None = None,
) -> list[str]:
    """Store ``count`` uploads and one prediction record each, as the storage service would (an
    empty mask; ``confidence``: the counts the inference service would have sent)."""
    rng = np.random.default_rng(seed)
    repository = ImageRepository(store, ImageLimits())
    ids = []
    for _ in range(count):
        pixels = field_image(rng, brightness)
        record, _ = repository.add_image(png(pixels), source="upload")
        repository.save_segmentation(
            SegmentationRecord(
                image_id=record.id,
                model_name="cropseg-unet",
                model_version="1.0.0",
                threshold=0.55,
                vegetation_fraction=float(rng.uniform(*fractions)),
                latency_ms=5.0,
                confidence=None if confidence is None else confidence.tolist(),
                created_at=datetime.now(UTC),
            ),
            png(np.zeros(pixels.shape[:2], np.uint8)),
        )
        ids.append(record.id)
    return ids


def settings_for(store_path: Path, profile_path: Path, **overrides: object) -> DriftSettings:
    return DriftSettings(
        **{
            "store": {"path": store_path},
            "reference_path": profile_path,
            "classifier_trees": 30,
            "workers": 1,
            "min_samples": 20,
            **overrides,
        }
    )
