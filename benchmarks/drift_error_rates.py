"""How often the drift check cries wolf, and how often it catches a real shift.

    .venv/bin/python benchmarks/drift_error_rates.py --write README.md

Everything goes through what a drift run does: the images are encoded as a user would upload
them, read by the run's feature extraction, their predicted vegetation cover comes from the
segmentation pipeline the API runs, and the five checks and the verdict are the run's own
(``run_checks``, ``overall_status``, default settings but the ones named below), against the
reference profile shipped with the model.

* **False alarms**: windows of 20 and 50 images drawn at random from the 57 real photos of the
  training sources the model never learned from (the ``val`` and ``select`` splits of EWS wheat
  and peanut). Windows of 50 out of 57 overlap heavily: the runs are not independent, so the
  rate has a coarse resolution; windows of 200 need more held-out photos than exist.
* **Power**: the same windows with every image shifted -- over-exposed (x1.6), under-exposed
  (x0.5), saved as JPEG at quality 30, blurred (Gaussian sigma 2) -- and "a crop never seen":
  peanut photos against the wheat rows of the reference alone. "Right reason" is the share of
  detections whose report names the cause first (exposure, compression, blur; any for the crop).
* **The new user's case** (issue 29): 44 real photos, 16 of them the model's own training
  images, in one window.
* **A colour-infrared file declared rgb**: no real CIR photos with labels exist here, and synthetic
  tiles differ from real photos in every feature, so this case is measured the way a user of
  synthetic-looking imagery would meet it: against a chosen reference of 200 synthetic true-colour
  tiles, windows of 60 other synthetic tiles as they are (false alarms) and as their CIR
  composites uploaded as ``rgb`` (detection; the right reason is "colour").

``--from-json`` starts from a saved run and measures only the cases it lacks.
"""

from __future__ import annotations

import argparse
import io
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from cropseg_drift.detectors import CHECK_LABELS, Current, run_checks
from cropseg_drift.extraction import ImageFeatures, extract
from cropseg_drift.report import describe_changes
from cropseg_drift.settings import DriftSettings
from cropseg_stack.sections import replace_section
from PIL import Image, ImageFilter
from tqdm import tqdm

from cropseg_core.bands import from_model_bands, get_layout
from cropseg_core.features import ReferenceProfile, load_reference_profile
from cropseg_core.imaging import decode_channels
from cropseg_core.masks import vegetation_fraction
from cropseg_model.evaluate import Evaluator
from cropseg_model.synth import generate_tile

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "model" / "data" / "real"
MODEL = REPO / "model" / "artifacts" / "cropseg-unet.onnx"
PROFILE = REPO / "model" / "artifacts" / "reference_profile.npz"
PLOT = REPO / "docs" / "img" / "drift_error_rates.png"
START, END = "<!-- drift-error-rates:start -->", "<!-- drift-error-rates:end -->"
HELD_OUT = ("ews/val", "ews/select", "peanut/val", "peanut/select")
NO_SHIFT, NEW_CROP = "held-out photos, no shift", "a crop never seen (peanut vs wheat reference)"
SYNTHETIC = "synthetic tiles, no shift (vs a chosen reference of synthetic tiles)"
CIR_AS_RGB = "colour-infrared files declared rgb (vs a chosen reference of synthetic tiles)"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _blurred(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2)))


def _scaled(factor: float) -> Callable[[np.ndarray], bytes]:
    return lambda pixels: _png(np.clip(pixels.astype(np.float32) * factor, 0, 255).astype(np.uint8))


SHIFTS: dict[str, tuple[Callable[[np.ndarray], bytes], str]] = {
    "over-exposed x1.6": (_scaled(1.6), "exposure"),
    "under-exposed x0.5": (_scaled(0.5), "exposure"),
    "JPEG quality 30": (lambda pixels: _jpeg(pixels, 30), "compression"),
    "blurred sigma 2": (lambda pixels: _png(_blurred(pixels)), "blur"),
}


CASES = (NO_SHIFT, *SHIFTS, NEW_CROP, SYNTHETIC, CIR_AS_RGB)
IN_DISTRIBUTION = (NO_SHIFT, SYNTHETIC)
"""Cases without a shift: what they report is a false alarm."""


class Pool:
    """Features and predicted cover of a set of encoded images, computed once."""

    def __init__(self, files: list[bytes], evaluator: Evaluator, label: str) -> None:
        items = [(str(i), data, "rgb") for i, data in enumerate(files)]
        self.features = extract(items, len(items), workers=1)
        assert not self.features.skipped, self.features.skipped
        layout = get_layout("rgb")
        self.fractions = np.array(
            [vegetation_fraction(evaluator.segment(decode_channels(data).pixels, layout))
             for data in tqdm(files, desc=f"segment {label}", unit="img", leave=False)],
            np.float32,
        )  # fmt: skip

    def window(self, rows: np.ndarray) -> Current:
        features = ImageFeatures(
            ids=[self.features.ids[i] for i in rows],
            histograms=self.features.histograms[rows],
            properties=self.features.properties[rows],
        )
        return Current(features, self.fractions[rows])


def _photos(*splits: str) -> list[tuple[str, bytes]]:
    files = []
    for split in splits:
        for path in sorted((REAL / split / "images").iterdir()):
            files.append((split, path.read_bytes()))
    return files


def adjusted_p_values(results: dict[str, dict[str, Any]], p_value: float) -> dict[str, float]:
    """Each check's smallest p-value times its number of features (its Bonferroni-adjusted p):
    the check fires at significance ``a`` exactly when this is below ``a``."""
    adjusted = {}
    for name, result in results.items():
        data = result["data"]
        if data["is_drift"] is not None:
            small = data["distance"] < data.get("min_distance", 0.0)  # an effect below the check's floor
            adjusted[name] = 1.0 if small else min(1.0, data["p_val"] * p_value / data["threshold"])
    return adjusted


def _windows(
    profile: ReferenceProfile, pool: Pool, size: int, runs: int, settings: DriftSettings
) -> list[dict[str, Any]]:
    """Per window: the adjusted p-value of each check and the cause the report names first."""
    rng = np.random.default_rng(size)
    found = []
    for _ in range(runs):
        rows = np.sort(rng.choice(len(pool.fractions), size, replace=False))
        results = run_checks(profile, pool.window(rows), settings)
        cause = describe_changes(results)[1][0]
        found.append({"p": adjusted_p_values(results, settings.p_value), "cause": cause})
    return found


def rates(windows: list[dict[str, Any]], alpha: float, across_checks: bool) -> tuple[float, dict[str, int]]:
    """Share of windows reporting drift at ``alpha`` (split over the checks when
    ``across_checks``), and how often each check fired."""
    fired: dict[str, int] = {}
    detected = 0
    for window in windows:
        limit = alpha / len(window["p"]) if across_checks else alpha
        hits = [name for name, p in window["p"].items() if p < limit]
        detected += bool(hits)
        for name in hits:
            fired[name] = fired.get(name, 0) + 1
    return detected / len(windows), fired


def _tiles(seed: int, count: int) -> list[np.ndarray]:
    """Generated four-band tiles (red, green, blue, NIR) that have an NIR band."""
    tiles = [generate_tile(seed, index)[0].image for index in range(count)]
    return [tile for tile in tiles if tile[..., 3].any()]


def _as_reference(pool: Pool, source: str) -> ReferenceProfile:
    """A pool's images as a (user-chosen) reference."""
    count = len(pool.fractions)
    return ReferenceProfile(
        pool.features.histograms, pool.features.properties, np.full(count, np.nan, np.float32),
        pool.fractions, np.array(pool.features.ids), np.array(["rgb"] * count), np.array([source] * count),
        {"kind": "chosen"},
    )  # fmt: skip


def _pools(evaluator: Evaluator, profile: ReferenceProfile, wanted: set[str]) -> dict[str, Any]:
    """(pool, expected cause, reference) of each wanted case."""
    pools: dict[str, tuple[Pool, str | None, ReferenceProfile]] = {}
    held = _photos(*HELD_OUT)
    pixels = [decode_channels(data).pixels for _, data in held]
    if NO_SHIFT in wanted:
        pools[NO_SHIFT] = (Pool([d for _, d in held], evaluator, "held-out"), None, profile)
    for name, (shift, cause) in SHIFTS.items():
        if name in wanted:
            pools[name] = (Pool([shift(p) for p in pixels], evaluator, name), cause, profile)
    if NEW_CROP in wanted:
        peanut = [d for split, d in held if split.startswith("peanut")]
        peanut += [d for _, d in _photos("peanut/train")]
        wheat_only = _subset(profile, profile.sources == "ews/train")
        pools[NEW_CROP] = (Pool(peanut, evaluator, "peanut"), None, wheat_only)
    if wanted & {SYNTHETIC, CIR_AS_RGB}:
        rgb, cir = get_layout("rgb"), get_layout("cir")
        chosen = _as_reference(Pool([_png(from_model_bands(t, rgb)) for t in _tiles(4, 200)], evaluator,
                                    "synthetic reference"), "synthetic")  # fmt: skip
        tiles = _tiles(3, 60)
        pools[SYNTHETIC] = (Pool([_png(from_model_bands(t, rgb)) for t in tiles], evaluator, "synthetic"),
                            None, chosen)  # fmt: skip
        pools[CIR_AS_RGB] = (Pool([_png(from_model_bands(t, cir)) for t in tiles], evaluator, "CIR as rgb"),
                             "colour", chosen)  # fmt: skip
    return {name: pools[name] for name in CASES if name in wanted}


def measure(runs: int, sizes: list[int], done: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every case the ``done`` result (a saved run) lacks, added to it."""
    result = done or {"cases": []}
    # Each check at the run's whole significance: the tables apply the split over the checks.
    settings = DriftSettings(min_samples=20, split_p_value_over_checks=False)
    result["settings_p_value"] = settings.p_value
    profile = load_reference_profile(PROFILE).for_layout("rgb")
    evaluator = Evaluator(MODEL)
    wanted = set(CASES) - {case["case"] for case in result["cases"]}
    for name, (pool, cause, reference) in tqdm(_pools(evaluator, profile, wanted).items(), desc="cases"):
        for size in sizes:
            if size <= len(pool.fractions):
                windows = _windows(reference, pool, size, runs, settings)
                result["cases"].append({"case": name, "cause": cause, "window": size, "windows": windows})
    result["cases"].sort(key=lambda case: (CASES.index(case["case"]), case["window"]))
    if "newcomer" not in result:
        held = _photos(*HELD_OUT)
        training = _photos("ews/train")[:8] + _photos("peanut/train")[:8]
        newcomer = Pool([d for _, d in training + held[:28]], evaluator, "newcomer")
        results = run_checks(profile, newcomer.window(np.arange(44)), settings)
        result["newcomer"] = adjusted_p_values(results, settings.p_value)
    return result


def _subset(profile: ReferenceProfile, rows: np.ndarray) -> ReferenceProfile:
    return ReferenceProfile(
        profile.grey_histograms[rows], profile.properties[rows], profile.vegetation_fraction[rows],
        profile.predicted_vegetation_fraction[rows], profile.image_names[rows], profile.layouts[rows],
        profile.sources[rows], profile.meta,
    )  # fmt: skip


ALPHAS = (0.01, 0.005, 0.002, 0.001)


def choice_table(result: dict[str, Any]) -> str:
    """False alarms and the weakest detection at each significance, with and without splitting it
    over the checks: the numbers the default is chosen from."""
    sizes = sorted({case["window"] for case in result["cases"]})
    head = " | ".join(f"false alarms, {s}" for s in sizes) + " | " + " | ".join(
        f"weakest detection, {s}" for s in sizes)  # fmt: skip
    lines = [f"| significance of a run | {head} |", "|---|" + "---:|" * 2 * len(sizes)]
    for across in (False, True):
        for alpha in ALPHAS:
            alarms, weakest = [], []
            for size in sizes:
                found = {c["case"]: rates(c["windows"], alpha, across)[0] for c in result["cases"]
                         if c["window"] == size}  # fmt: skip
                alarms.append(found[NO_SHIFT])
                weakest.append(min(v for name, v in found.items() if name not in IN_DISTRIBUTION))
            label = f"{alpha:g} split over the checks" if across else f"{alpha:g} per check"
            lines.append(f"| {label} | " + " | ".join(f"{v:.0%}" for v in alarms + weakest) + " |")
    return "\n".join(lines)


def case_table(result: dict[str, Any], alpha: float, across: bool) -> str:
    lines = [
        "| case | window | runs | drift found | right reason | checks that fired (runs) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for case in result["cases"]:
        windows = case["windows"]
        detected, fired = rates(windows, alpha, across)
        limit = [alpha / len(w["p"]) if across else alpha for w in windows]
        hits = [w for w, cut in zip(windows, limit, strict=True) if min(w["p"].values()) < cut]
        right = "–" if case["cause"] is None or not hits else (
            f"{sum(w['cause'] == case['cause'] for w in hits) / len(hits):.0%}")  # fmt: skip
        checks = ", ".join(f"{CHECK_LABELS[name]} {count}" for name, count in fired.items()) or "–"
        row = (case["case"], case["window"], len(windows), f"{detected:.0%}", right, checks)
        lines.append("| " + " | ".join(map(str, row)) + " |")
    newcomer = result["newcomer"]
    cut = alpha / len(newcomer) if across else alpha
    alarms = [CHECK_LABELS[name] for name, p in newcomer.items() if p < cut]
    verdict = f"**drift** ({', '.join(alarms)})" if alarms else "**no drift**"
    lines += ["", f"The new user's 44 photos (16 of them training images, 28 held-out): {verdict}."]
    return "\n".join(lines)


def plot(result: dict[str, Any], alpha: float, across: bool, path: Path) -> None:
    cases = list(dict.fromkeys(case["case"] for case in result["cases"]))
    sizes = sorted({case["window"] for case in result["cases"]})
    figure, axis = plt.subplots(figsize=(12, 4.4), layout="constrained")
    width = 0.8 / len(sizes)
    for offset, size in enumerate(sizes):
        values = [next((rates(c["windows"], alpha, across)[0] for c in result["cases"]
                        if c["case"] == name and c["window"] == size), 0) for name in cases]  # fmt: skip
        axis.bar(np.arange(len(cases)) + offset * width, values, width, label=f"window of {size}")
    axis.axhline(0.05, color="#c62828", linestyle="--", linewidth=1, label="5 % (false-alarm target)")
    axis.axhline(0.9, color="#2e7d32", linestyle=":", linewidth=1, label="90 % (detection target)")
    axis.set_xticks(np.arange(len(cases)) + width * (len(sizes) - 1) / 2,
                    [textwrap.fill(c, 15) for c in cases], fontsize=7)  # fmt: skip
    axis.set_ylabel("share of windows reporting drift")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100, help="windows per case and size (default 100)")
    parser.add_argument("--sizes", default="20,50", help="window sizes (default 20,50)")
    parser.add_argument("--json", type=Path, help="keep every window's p-values here")
    parser.add_argument("--write", type=Path, help="replace the tables between the markers of this file")
    parser.add_argument("--from-json", type=Path,
                        help="the windows a --json run kept; measure only what it lacks")  # fmt: skip
    args = parser.parse_args()
    done = json.loads(args.from_json.read_text()) if args.from_json else None
    if done:
        args.runs = len(done["cases"][0]["windows"])
    result = measure(args.runs, [int(s) for s in args.sizes.split(",")], done)
    settings = DriftSettings()
    alpha, across = settings.p_value, settings.split_p_value_over_checks
    text = "\n".join([
        f"`python benchmarks/drift_error_rates.py` ({args.runs} random windows per row; "
        "`DRIFT_MIN_SAMPLES=20` so that windows of 20 get a verdict). The default, "
        f"`DRIFT_P_VALUE={alpha:g}`" + (" split over the checks" if across else " per check") + ":",
        "", case_table(result, alpha, across), "",
        "What the default was chosen from (share of windows that report drift):", "", choice_table(result),
    ])  # fmt: skip
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.write:
        plot(result, alpha, across, PLOT)
        replace_section(args.write, START, END, text)


if __name__ == "__main__":
    main()
