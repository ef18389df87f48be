"""The seed's experiment, reproduced: does the drift check see brightness changes?

    .venv/bin/python benchmarks/drift_experiment.py --count 7100 --write docs/drift.md

The seed took 7,100 training tiles, made darker and brighter copies and ran KS on grey-level
histograms (distance 0.398 / 0.383, p 7.6e-19 / 2.2e-17). Here the images are split in two
halves: the first is the reference, the second (an independent sample of the same
distribution) is compared unaltered, darker, brighter and blurred. Each case is judged by
the seed's method (one KS test over the 256 values of the *average* histograms) and by the
sound ones the drift monitor runs (per-image histograms and image properties, feature-wise
KS with Bonferroni).

Exit 0 when the verdicts are the expected ones (the unaltered half quiet, darker and brighter
found by the per-image histograms), 1 otherwise, 2 on bad input. Settings not given as flags
(``DRIFT_ENGINE``, ``DRIFT_WORKERS``) are the drift monitor's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from cropseg_drift.detectors import engine
from cropseg_drift.settings import DriftSettings, Engine
from cropseg_stack.sections import publish
from PIL import Image, ImageFilter
from scipy.stats import ks_2samp
from tqdm import tqdm

from cropseg_core.features import PROPERTY_NAMES, image_features
from cropseg_core.imaging import decode_image
from cropseg_model.synth import generate_tile

START, END = "<!-- drift-experiment:start -->", "<!-- drift-experiment:end -->"
CASES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "unaltered": lambda image: image,
    "darker": lambda image: np.clip(image.astype(np.float32) * 0.6, 0, 255).astype(np.uint8),
    "brighter": lambda image: np.clip(image.astype(np.float32) * 1.4, 0, 255).astype(np.uint8),
    "blurred": lambda image: np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(2))),
}


def _load(source: tuple[int, int] | Path) -> np.ndarray:
    if isinstance(source, Path):
        return decode_image(source.read_bytes()).pixels
    seed, index = source
    return generate_tile(seed, index)[0].rgb


def _case_features(source: tuple[int, int] | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    image = _load(source)
    return [image_features(transform(image)) for transform in CASES.values()]


def run_experiment(
    count: int, *, images: Path | None = None, seed: int = 1, engine_name: Engine = "alibi",
    p_value: float = 0.01, workers: int = 0, progress: bool = True,
) -> list[dict[str, object]]:  # fmt: skip
    """The table rows: one per case and method, each test at the seed's significance ``p_value``
    (not the drift run's ``DRIFT_P_VALUE``: this reproduces the seed's experiment)."""
    sources: list[tuple[int, int] | Path]
    if images is not None:
        files = sorted(
            p for p in images.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff")
        )
        if len(files) < 20:
            raise ValueError(f"{images} holds {len(files)} images; the experiment needs at least 20")
        sources = list(files[:count])
    else:
        sources = [(seed, index) for index in range(count)]
    processes = workers or os.cpu_count() or 1
    with multiprocessing.get_context("spawn").Pool(processes) if processes > 1 else nullcontext() as pool:
        mapped = pool.imap(_case_features, sources, chunksize=8) if pool else map(_case_features, sources)
        per_image = list(
            tqdm(mapped, total=len(sources), desc="experiment", unit="img", disable=not progress)
        )
    half = len(per_image) // 2
    reference_histograms = np.stack([features[0][0] for features in per_image[:half]])
    reference_properties = np.stack([features[0][1] for features in per_image[:half]])
    used = engine(engine_name)
    rows: list[dict[str, object]] = []
    for case_index, case in enumerate(CASES):
        histograms = np.stack([features[case_index][0] for features in per_image[half:]])
        properties = np.stack([features[case_index][1] for features in per_image[half:]])
        distance, p_val = ks_2samp(reference_histograms.mean(axis=0), histograms.mean(axis=0))
        rows.append(
            _row(case, "seed: KS over the average histogram", p_value, p_val < p_value, distance, p_val, "")
        )
        test = used.ks(reference_histograms, histograms, p_value)
        bins = f"{int(test.drifted.sum())} bins"
        rows.append(_row(case, "KS per-image histograms", test.threshold, test.is_drift, test.distances.max(),
                         test.p_vals.min(), bins))  # fmt: skip
        test = used.ks(reference_properties, properties, p_value)
        drifted = ", ".join(name for name, flag in zip(PROPERTY_NAMES, test.drifted, strict=True) if flag)
        rows.append(_row(case, "KS image properties", test.threshold, test.is_drift, test.distances.max(),
                         test.p_vals.min(), drifted))  # fmt: skip
    return rows


def _row(
    case: str, method: str, threshold: float, drift: object, distance: object, p_val: object, drifted: str
) -> dict[str, object]:
    return {
        "case": case, "method": method, "threshold": float(threshold), "drift": bool(drift),
        "distance": float(distance), "p_val": float(p_val), "drifted": drifted,  # type: ignore[arg-type]
    }  # fmt: skip


def _p(value: object) -> str:
    """p-values below double precision come out of the asymptotic KS as exactly 0."""
    number = float(value)  # type: ignore[arg-type]
    return f"{number:.2g}" if number > 0 else "< 1e-300"


def format_table(rows: list[dict[str, object]], reference: int, current: int) -> str:
    lines = [
        f"reference: {reference} images; each case: {current} other images of the same distribution",
        "",
        "| case | method | threshold | drift | distance | p-value | drifted |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        drift = "yes" if row["drift"] else "no"
        lines.append(
            f"| {row['case']} | {row['method']} | {row['threshold']:.2g} | {drift} | "
            f"{row['distance']:.4f} | {_p(row['p_val'])} | {row['drifted']} |"
        )
    return "\n".join(lines) + "\n"


def verdicts_hold(rows: list[dict[str, object]]) -> bool:
    """The unaltered half quiet and darker and brighter found, by the per-image histograms."""
    per_image = [row for row in rows if "per-image" in str(row["method"])]
    unaltered = [row for row in per_image if row["case"] == "unaltered"]
    shifted = [row for row in per_image if row["case"] in ("darker", "brighter")]
    return not any(row["drift"] for row in unaltered) and all(row["drift"] for row in shifted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--count", type=int, default=1000, help="images in all, half reference (default 1000)"
    )
    parser.add_argument("--images", type=Path, help="a folder of images instead of generated tiles")
    parser.add_argument("--seed", type=int, default=1, help="generator seed of the tiles (1 = training set)")
    parser.add_argument("--engine", choices=("alibi", "scipy"), help="DRIFT_ENGINE")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--write", type=Path, help="put the table in this markdown file (docs/drift.md)")
    args = parser.parse_args(argv)
    settings = DriftSettings(**({"engine": args.engine} if args.engine else {}))
    try:
        rows = run_experiment(
            args.count, images=args.images, seed=args.seed, engine_name=settings.engine,
            workers=settings.workers, progress=not args.quiet,
        )  # fmt: skip
    except ValueError as e:
        print(f"drift_experiment: {e}", file=sys.stderr)
        return 2
    half = args.count // 2
    table = format_table(rows, half, args.count - half)
    publish(table.rstrip("\n"), rows, args.json, args.write, START, END)
    return 0 if verdicts_hold(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
