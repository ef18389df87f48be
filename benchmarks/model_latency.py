"""Per-tile latency of the committed model as a ratio to the previous one, side by side.

The previous model is read from git history (``--previous REV``, default the last commit
before the real-imagery model); both run in this process with ONNX Runtime on the same
360x480 tile, interleaved round by round in a shuffled order so that machine noise hits
both alike (each call once untimed, then twice timed: with 2 cores, the intra-op threads of
the session that ran just before still spin and would slow whichever call comes next). Reported:
the median of the bare model call and of the whole segmentation pipeline (band mapping,
automatic working resolution, model, threshold) for the new one, and the ratios.

    .venv/bin/python benchmarks/model_latency.py [--rounds 30] [--write docs/performance.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from inference import Call, interleaved
from sections import publish

from cropseg_core.bands import get_layout, to_model_bands
from cropseg_core.pipeline import Pipeline, PipelineConfig
from cropseg_core.segmenter import OnnxSegmenter
from cropseg_model.synth import generate_tile

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "model" / "artifacts" / "cropseg-unet.onnx"
PREVIOUS = "29add47"  # cropseg-unet 1.0.0 trained on synthetic tiles only (3-channel RGB input)
START, END = "<!-- model-latency:start -->", "<!-- model-latency:end -->"


def previous_model(revision: str, folder: Path) -> Path:
    path = folder / "previous.onnx"
    try:
        data = subprocess.run(
            ["git", "show", f"{revision}:model/artifacts/cropseg-unet.onnx"],
            cwd=REPO, capture_output=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"model_latency: cannot read the model at {revision} from git ({e}): it needs a full clone")
    path.write_bytes(data)
    return path


def measure(rounds: int, revision: str) -> dict[str, float]:
    tile = generate_tile(3, 0, 360, 480)[0].rgb
    rgb = get_layout("rgb")
    bands = to_model_bands(tile, rgb)
    with tempfile.TemporaryDirectory() as tmp:
        old = OnnxSegmenter(previous_model(revision, Path(tmp)))
        old.load()
        assert old._session is not None  # the old file takes RGB: call its session directly
        old_session = old._session
        new = OnnxSegmenter(MODEL)
        info = new.load()
        pipeline = Pipeline(PipelineConfig(model_gsd_mm=info.working_gsd_mm))
        calls: dict[str, Call] = {
            "previous": lambda: old_session.run(None, {"image": tile[None]}),
            "new": lambda: new.predict(bands[None]),
            "new_pipeline": lambda: pipeline.run(new.predict, tile, info.threshold, rgb),
        }
        result = {f"{name}_ms": ms for name, ms in interleaved(calls, rounds).items()}
    result["ratio_model"] = result["new_ms"] / result["previous_ms"]
    result["ratio_pipeline"] = result["new_pipeline_ms"] / result["previous_ms"]
    result["rounds"] = rounds
    return result


def markdown(r: dict[str, float], revision: str) -> str:
    rows = [
        ("previous model (synthetic only, 3 levels, RGB input), bare ONNX Runtime", r["previous_ms"], 1.0),
        ("this model (4 levels, 4 bands + indices), bare ONNX Runtime", r["new_ms"], r["ratio_model"]),
        ("this model through the whole pipeline (layout, automatic scale, threshold)",
         r["new_pipeline_ms"], r["ratio_pipeline"]),
    ]  # fmt: skip
    return "\n".join([
        f"Per 360×480 tile, median of {2 * r['rounds']:.0f} timed calls in {r['rounds']:.0f} shuffled rounds "
        "in one process "
        f"(`benchmarks/model_latency.py`; previous model from `{revision}`):",
        "",
        "| what | ms | ratio to the previous model |",
        "|---|---:|---:|",
        *(f"| {name} | {ms:.1f} | {ratio:.2f} |" for name, ms, ratio in rows),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--previous", default=PREVIOUS, help="git revision of the previous model")
    parser.add_argument("--write", type=Path, default=None, help="replace the table between the markers")
    args = parser.parse_args()
    result = measure(args.rounds, args.previous)
    publish(markdown(result, args.previous), result, None, args.write, START, END)


if __name__ == "__main__":
    main()
