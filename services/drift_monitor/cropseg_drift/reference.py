"""The reference a run compares with: the training images shipped with the model, or uploads the
user chose (Evidently's reference dataset, NannyML's reference period), per layout.

A chosen reference is a profile file in the store, ``drift/references/<layout>.npz``, so the API,
the CLI and the CronJob (which shares the volume or bucket) all read the same one. It is built
from the images of a report (the run already computed their features) or from the uploads of a
layout in a date range, the first N of them if asked. Choosing again replaces it; resetting
returns the layout to the training reference. The label-free IoU calibration stays the model's.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cropseg_core.errors import ClientError, ConflictError, NotFoundError
from cropseg_core.features import ReferenceProfile, decode_profile, encode_profile
from cropseg_core.repository import ImageRepository
from cropseg_core.store import BlobNotFoundError, BlobStore
from cropseg_drift.extraction import ImageFeatures, extract
from cropseg_drift.predictions import newest_predictions
from cropseg_drift.settings import DriftSettings

PREFIX = "drift/references/"
# Choosing from uploads reads at most this many images.
MAX_IMAGES = 2000


def as_utc(value: datetime | None) -> datetime | None:
    """A time without a zone is read as UTC (upload times are stored in UTC)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def reference_key(layout: str) -> str:
    return f"{PREFIX}{layout}.npz"


def load_reference(shipped: ReferenceProfile, store: BlobStore, layout: str) -> ReferenceProfile:
    """The reference of ``layout``: the chosen one in the store, else the shipped training rows."""
    try:
        data = store.get(reference_key(layout))
    except BlobNotFoundError:
        return shipped.for_layout(layout)
    return decode_profile(data, reference_key(layout))


def describe(profile: ReferenceProfile) -> str:
    """What a report says it compared with: "128 ews/train + 48 peanut/train images (the training
    images of cropseg-unet 2.0.0)", or "uploads chosen as the reference on 2026-12-07: ..."."""
    meta = profile.meta
    if meta.get("kind") == "chosen":
        return f"uploads chosen as the reference on {meta['chosen_at'][:10]}: {meta['selection']}"
    sources = " + ".join(f"{count} {name}" for name, count in profile.source_counts().items())
    model = f"{meta.get('model_name', 'the model')} {meta.get('model_version', '')}".rstrip()
    return f"{sources} images (the training images of {model})"


def chosen_references(store: BlobStore) -> dict[str, dict[str, Any]]:
    """Per layout with a chosen reference: its images, selection and when it was chosen."""
    found = {}
    for blob in store.list_blobs(PREFIX):
        layout = blob.key.removeprefix(PREFIX).removesuffix(".npz")
        profile = decode_profile(store.get(blob.key), blob.key)
        found[layout] = {"images": len(profile.image_names), "description": describe(profile),
                         "chosen_at": profile.meta["chosen_at"]}  # fmt: skip
    return found


def reset(store: BlobStore, layout: str) -> bool:
    """Back to the training reference; False when the layout had no chosen one."""
    return store.delete(reference_key(layout))


def _latest_fractions(store: BlobStore, image_ids: set[str]) -> dict[str, float]:
    """The newest predicted vegetation fraction of each of ``image_ids``."""
    found: dict[str, float] = {}
    for record in newest_predictions(store):
        if record["image_id"] in image_ids:
            found[record["image_id"]] = float(record["vegetation_fraction"])
            if len(found) == len(image_ids):
                break
    return found


def _save(
    store: BlobStore,
    shipped: ReferenceProfile,
    layout: str,
    features: ImageFeatures,
    selection: str,
    need: int,
) -> dict[str, Any]:
    fractions = _latest_fractions(store, set(features.ids))
    rows = [index for index, image_id in enumerate(features.ids) if image_id in fractions]
    if len(rows) < need:
        raise ConflictError(
            f"{len(rows)} segmented {layout} images in {selection}: a reference needs at least {need} "
            "(DRIFT_MIN_SAMPLES); segment more uploads or choose a wider selection"
        )
    ids = [features.ids[index] for index in rows]
    meta = {**shipped.meta, "kind": "chosen", "layout": layout, "selection": selection, "images": len(rows)}
    profile = ReferenceProfile(
        grey_histograms=features.histograms[rows],
        properties=features.properties[rows],
        vegetation_fraction=np.full(len(rows), np.nan, np.float32),  # unknown without labels
        predicted_vegetation_fraction=np.array([fractions[i] for i in ids], np.float32),
        image_names=np.array(ids),
        layouts=np.array([layout] * len(rows)),
        sources=np.array(["uploads"] * len(rows)),
        meta={**meta, "chosen_at": datetime.now(UTC).isoformat()},
    )
    store.put(reference_key(layout), encode_profile(profile))
    return {"layout": layout, "images": len(rows), "description": describe(profile)}


def choose_report(
    store: BlobStore, shipped: ReferenceProfile, report: dict[str, Any], need: int
) -> dict[str, Any]:
    """The images of ``report`` (a stored report) become the reference of its layout."""
    try:
        data = store.get(f"drift/features/{report['id']}-features.npz")
    except BlobNotFoundError as e:
        raise NotFoundError(f"report {report['id']} kept no features: choose a newer report") from e
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        features = ImageFeatures(
            ids=[str(i) for i in arrays["image_ids"]],
            histograms=arrays["grey_histograms"],
            properties=arrays["properties"],
        )
    selection = f"the {len(features.ids)} images of report {report['id']}"
    return _save(store, shipped, report["window"]["layout"], features, selection, need)


def choose_uploads(
    store: BlobStore,
    shipped: ReferenceProfile,
    settings: DriftSettings,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    first: int | None = None,
) -> dict[str, Any]:
    """The uploads of ``settings.layout`` created in [since, until) -- the first ``first`` of them
    when given -- become that layout's reference."""
    if since is not None and until is not None and since >= until:
        raise ClientError(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
    repository = ImageRepository(store, settings.image_limits)
    found = []
    cursor = None
    while True:  # newest first
        page, cursor = repository.page(limit=100, cursor=cursor, source="upload")
        for record in page:
            if record.layout != settings.layout or (until is not None and record.created_at >= until):
                continue
            if since is not None and record.created_at < since:
                cursor = None
                break
            found.append(record)
        if cursor is None or len(found) >= MAX_IMAGES:
            break
    found.reverse()  # oldest first: "the first N"
    chosen = found[:first] if first else found[:MAX_IMAGES]
    items = ((record.id, repository.image_bytes(record), record.layout) for record in chosen)
    features = extract(items, len(chosen), workers=settings.workers)
    selection = f"the first {len(chosen)} uploads" if first else f"{len(chosen)} uploads"
    if since:
        selection += f" from {since:%Y-%m-%d %H:%M}"
    if until:
        selection += f" until {until:%Y-%m-%d %H:%M}"
    return _save(store, shipped, settings.layout, features, selection, settings.min_samples)
