"""Drift benchmark: a drift run over 7,100 stored tiles against only decoding them.

    .venv/bin/python benchmarks/drift.py --write docs/performance.md

The seed checked 7,100 tiles. This fills a store with that many 360x480 generated tiles
(400 distinct tiles, each copy changed in one pixel so every upload is a new image, in the
generator's mix of PNG and JPEG) with one prediction record each, then, side by side:
1. decode-only: read every image from the store and decode it (the floor for any run);
2. a real drift run (``execute``) with each engine over the same images: read, decode,
   features, five checks, plots, report (Alibi Detect's import is timed apart: once per process);
3. per image, in one process: decode vs feature extraction.
The bar: the run within 2x of decode-only time. Same worker count for both; both engines.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from cropseg_drift.extraction import decode_all
from cropseg_drift.runner import execute
from cropseg_drift.settings import DriftSettings
from cropseg_stack.sections import replace_section
from PIL import Image
from tqdm import tqdm

from cropseg_core.features import image_features, load_reference_profile
from cropseg_core.imaging import decode_image
from cropseg_core.repository import ImageRecord, ImageRepository, SegmentationRecord
from cropseg_core.settings import ImageLimits
from cropseg_core.store import StoreSettings, open_store
from cropseg_model.synth import generate_tile

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "model" / "artifacts" / "reference_profile.npz"
START, END = "<!-- drift-benchmark:start -->", "<!-- drift-benchmark:end -->"
DISTINCT = 400


def _tile(index: int) -> tuple[np.ndarray, str, float]:
    tile, _, ext = generate_tile(4, index)
    return tile.rgb, ext, float(str(tile.meta["vegetation_fraction"]))


def _encode(image: np.ndarray, ext: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG" if ext == "jpg" else "PNG", quality=85)
    return buffer.getvalue()


def fill(data: Path, count: int) -> None:
    """A store with ``count`` distinct uploads and a prediction record for each (kept between runs)."""
    store = open_store(StoreSettings(path=data))
    repository = ImageRepository(store, ImageLimits())
    if repository.count("upload") >= count:
        return
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        tiles = list(tqdm(pool.imap(_tile, range(DISTINCT)), total=DISTINCT, desc="generating", unit="tile"))
    day = f"predictions/{datetime.now(UTC):%Y-%m-%d}"
    for n in tqdm(range(repository.count("upload"), count), desc="uploading", unit="img"):
        image, ext, fraction = tiles[n % DISTINCT]
        copy = image.copy()
        copy[:8, :8] = n // DISTINCT  # a new image each time (a whole JPEG block, so it survives
        copy[8:16, :8] = n % 256  # the encoding): uploads are content-addressed
        record, _ = repository.add_image(_encode(copy, ext), source="upload")
        store.append_record(day, SegmentationRecord(
            image_id=record.id, model_name="cropseg-unet", model_version="1.0.0", threshold=0.55,
            vegetation_fraction=fraction, latency_ms=60.0, created_at=datetime.now(UTC),
        ).model_dump(mode="json"))  # fmt: skip


def measure(data: Path, count: int) -> dict[str, float]:
    store = open_store(StoreSettings(path=data))
    repository = ImageRepository(store, ImageLimits())
    records: list[ImageRecord] = []
    cursor = None
    while len(records) < count:
        page, cursor = repository.page(limit=100, cursor=cursor, source="upload")
        records += page
        if cursor is None:
            break
    started = time.perf_counter()
    decode_all(((r.id, repository.image_bytes(r), r.layout) for r in records), len(records))
    decode_s = time.perf_counter() - started
    profile = load_reference_profile(PROFILE)
    runs = {}
    started = time.perf_counter()
    import alibi_detect.cd  # noqa: F401  - a one-off cost per process, reported on its own

    alibi_import_s = time.perf_counter() - started
    for engine in ("scipy", "alibi"):
        settings = DriftSettings(store=StoreSettings(path=data), reference_path=PROFILE, engine=engine,
                                 window_images=count)  # fmt: skip
        started = time.perf_counter()
        result = execute(settings, profile, store)
        runs[engine] = time.perf_counter() - started
        assert result.report is not None
        timings = result.report["timings_s"]
    sample = [repository.image_bytes(r) for r in records[:300]]
    started = time.perf_counter()
    pixels = [decode_image(b).pixels for b in sample]
    decode_ms = (time.perf_counter() - started) / len(sample) * 1000
    started = time.perf_counter()
    for image in pixels:
        image_features(image)
    features_ms = (time.perf_counter() - started) / len(sample) * 1000
    return {
        "images": float(len(records)),
        "workers": float(os.cpu_count() or 1),
        "decode_only_s": decode_s,
        "run_scipy_s": runs["scipy"],
        "run_alibi_s": runs["alibi"],
        "alibi_import_s": alibi_import_s,
        "features_s": timings["read_and_features"],
        "checks_s": timings["checks"],
        "plots_s": timings["plots"],
        "decode_ms": decode_ms,
        "features_ms": features_ms,
    }


def markdown(r: dict[str, float]) -> str:
    ratio = max(r["run_scipy_s"], r["run_alibi_s"]) / r["decode_only_s"]
    return "\n".join([
        f"Measured by `benchmarks/drift.py` on {int(r['images'])} stored 360×480 tiles "
        f"({int(r['workers'])} worker processes for both):",
        "",
        "| what | seconds | images/s | × decode-only |",
        "|---|---:|---:|---:|",
        f"| read + decode only | {r['decode_only_s']:.1f} | {r['images'] / r['decode_only_s']:.0f} | 1.00 |",
        f"| drift run, scipy engine | {r['run_scipy_s']:.1f} | {r['images'] / r['run_scipy_s']:.0f} "
        f"| {r['run_scipy_s'] / r['decode_only_s']:.2f} |",
        f"| drift run, alibi engine | {r['run_alibi_s']:.1f} | {r['images'] / r['run_alibi_s']:.0f} "
        f"| {r['run_alibi_s'] / r['decode_only_s']:.2f} |",
        "",
        f"**A run takes at most {ratio:.2f}× the decode-only time** (bar: 2×). Of the alibi run: "
        f"read + decode + features {r['features_s']:.1f} s, the five checks {r['checks_s']:.1f} s, plots and "
        f"report {r['plots_s']:.1f} s. Per image in one process: decoding {r['decode_ms']:.2f} ms, all drift "
        f"features {r['features_ms']:.2f} ms. Importing Alibi Detect costs {r['alibi_import_s']:.1f} s "
        "once per process (most of it torch, which this development environment has and the drift image "
        "does not).",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=7100, help="stored tiles (the seed checked 7,100)")
    parser.add_argument(
        "--data", type=Path, default=REPO / "var" / "bench" / "drift-store", help="store to fill and reuse"
    )
    parser.add_argument("--write", type=Path, help="replace the drift section of this markdown file")
    args = parser.parse_args()
    fill(args.data, args.count)
    table = markdown(measure(args.data, args.count))
    print(table)
    if args.write:
        replace_section(args.write, START, END, table)


if __name__ == "__main__":
    main()
