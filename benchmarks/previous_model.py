"""The committed model against the previous one: latency side by side, and quality through
the same segmentation pipeline on the same images.

The previous model is read from git history (``--previous REV``, default the last commit
with cropseg-unet 1.0.0: the plain U-Net trained from scratch on real photos and synthetic
tiles; the first, synthetic-only files took RGB alone and are read that way too).

Latency: both run in this process with ONNX Runtime on the same 360x480 tile, interleaved
round by round in a shuffled order so that machine noise hits both alike (each call once
untimed, then twice timed: with 2 cores, the intra-op threads of the session that ran just
before still spin and would slow whichever call comes next). Reported: the median of the bare
model call and of the whole segmentation pipeline (band mapping, automatic working resolution,
model, threshold) for the new one, and the ratios.

Quality: vegetation IoU (mean per image, images with in-field pixels) of both model files run
through today's pipeline (band mapping, automatic working resolution, tiles, resize back, each
file's own threshold) in true colour, beside ExG + Otsu, on the real validation splits and on
the synthetic evaluation tiles ``make model`` scores (generated here with the same seed and
count): what a user gets from either file.

    .venv/bin/python benchmarks/previous_model.py [--rounds 30] [--limit N] [--write docs/performance.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from cropseg_stack.sections import publish
from inference import Call, interleaved

from cropseg_core.bands import Layout, from_model_bands, get_layout, to_model_bands
from cropseg_core.model import LoadedModel
from cropseg_core.segmenter import INPUT_NAME, OnnxSegmenter
from cropseg_model.evaluate import Evaluator, Method, evaluate
from cropseg_model.synth import generate_tile, write_dataset

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "model" / "artifacts" / "cropseg-unet.onnx"
PREVIOUS = "6ed7fab"  # cropseg-unet 1.0.0: the plain U-Net, from scratch on real photos and synthetic tiles
REAL = {name: REPO / "model/data/real" / name for name in ("ews/val", "peanut/val")}
SYNTHETIC_SEED, SYNTHETIC_TILES = 3, 150  # the evaluation tiles of `make model`
START, END = "<!-- previous-model:start -->", "<!-- previous-model:end -->"


def previous_model(revision: str, folder: Path) -> Path:
    path = folder / "previous.onnx"
    try:
        data = subprocess.run(
            ["git", "show", f"{revision}:model/artifacts/cropseg-unet.onnx"],
            cwd=REPO, capture_output=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"previous_model: cannot read the model at {revision} from git ({e}): it needs a full clone")
    path.write_bytes(data)
    return path


class PreviousModel:
    """A previous model file: four bands like today's, or (the first synthetic-only files)
    RGB alone, which get the pipeline's bands minus NIR."""

    def __init__(self, path: Path) -> None:
        segmenter = OnnxSegmenter(path)
        self.threshold = segmenter.load().threshold
        assert segmenter._session is not None  # its input may be RGB: call the session directly
        self.session = segmenter._session
        self.bands = int(self.session.get_inputs()[0].shape[-1])

    def input(self, bands: np.ndarray) -> np.ndarray:
        """(H, W, 4) model bands -> the (1, H, W, C) batch this file takes."""
        return np.ascontiguousarray(bands[None, ..., : self.bands])

    def predict(self, bands: np.ndarray) -> np.ndarray:
        """(H, W, 4) model bands -> (H, W) probability, like OnnxSegmenter.predict."""
        return self.session.run(None, {INPUT_NAME: self.input(bands)})[0][0, 0]


def measure(rounds: int, previous: Path) -> dict[str, float]:
    tile = generate_tile(3, 0, 360, 480)[0].rgb
    rgb = get_layout("rgb")
    bands = to_model_bands(tile, rgb)
    old = PreviousModel(previous)
    old_input = old.input(bands)
    new = LoadedModel.load(MODEL, warmup_runs=0)
    calls: dict[str, Call] = {
        "previous": lambda: old.session.run(None, {INPUT_NAME: old_input}),
        "new": lambda: new.segmenter.predict(bands[None]),
        "new_pipeline": lambda: new.run(tile, rgb),
    }
    result = {f"{name}_ms": ms for name, ms in interleaved(calls, rounds).items()}
    result["ratio_model"] = result["new_ms"] / result["previous_ms"]
    result["ratio_pipeline"] = result["new_pipeline_ms"] / result["previous_ms"]
    result["rounds"] = rounds
    return result


class WithPrevious(Evaluator):
    """Today's model and ExG + Otsu, plus the previous model file through the same pipeline."""

    def __init__(self, previous: Path) -> None:
        super().__init__(MODEL)
        self.previous = PreviousModel(previous)

    def methods(self, layout: Layout) -> dict[str, Method]:
        def previous(bands: np.ndarray) -> np.ndarray:
            channels = from_model_bands(bands, layout)
            return self.pipeline.run(self.previous.predict, channels, self.previous.threshold, layout).mask

        today = super().methods(layout)
        return {"unet": today["unet"], "previous": previous, "exg_otsu": today["exg_otsu"]}


def quality(previous: Path, folder: Path, limit: int | None) -> dict[str, dict[str, Any]]:
    """True-colour IoU of both models and ExG + Otsu per evaluation set."""
    synthetic = folder / "eval"
    write_dataset(synthetic, limit or SYNTHETIC_TILES, SYNTHETIC_SEED, progress=False)
    evaluator = WithPrevious(previous)
    result = {}
    for name, data in {**REAL, "synthetic/eval": synthetic}.items():
        report = evaluate(MODEL, data, layouts=["rgb"], evaluator=evaluator, limit=limit, progress=False)
        methods = report.layouts["rgb"]
        result[name] = {
            "images": methods["unet"].non_black_images,
            **{method: summary.iou_non_black for method, summary in methods.items()},
        }
    return result


def markdown(r: dict[str, Any], revision: str) -> str:
    t = r["latency"]
    rows = [
        ("previous model (plain U-Net, trained from scratch), bare ONNX Runtime", t["previous_ms"], 1.0),
        ("this model (EfficientNet-Lite0 encoder, ImageNet-pretrained), bare ONNX Runtime", t["new_ms"],
         t["ratio_model"]),
        ("this model through the whole pipeline (layout, automatic scale, threshold)",
         t["new_pipeline_ms"], t["ratio_pipeline"]),
    ]  # fmt: skip
    return "\n".join([
        f"Command: `.venv/bin/python benchmarks/previous_model.py --write docs/performance.md` "
        f"(previous model from `{revision}`).",
        "",
        f"Per 360×480 tile, median of {2 * t['rounds']:.0f} timed calls in {t['rounds']:.0f} "
        "shuffled rounds in one process:",
        "",
        "| what | ms | ratio to the previous model |",
        "|---|---:|---:|",
        *(f"| {name} | {ms:.1f} | {ratio:.2f} |" for name, ms, ratio in rows),
        "",
        "Vegetation IoU in true colour (mean per image), both files through today's pipeline, "
        "each at its own threshold:",
        "",
        "| set | images | this model | previous model | ExG + Otsu |",
        "|---|---:|---:|---:|---:|",
        *(f"| {name} | {q['images']} | {q['unet']:.3f} | {q['previous']:.3f} | {q['exg_otsu']:.3f} |"
          for name, q in r["quality"].items()),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images of each set")
    parser.add_argument("--previous", default=PREVIOUS, help="git revision of the previous model")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--write", type=Path, default=None, help="replace the section between the markers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        previous = previous_model(args.previous, Path(tmp))
        result = {
            "previous": args.previous,
            "latency": measure(args.rounds, previous),
            "quality": quality(previous, Path(tmp), args.limit),
        }
    publish(markdown(result, args.previous), result, args.json, args.write, START, END)


if __name__ == "__main__":
    main()
