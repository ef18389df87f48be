"""Ablations: what each part of the recipe is worth, on real images, through the pipeline.

Each variant changes one thing of the same recipe (same data, same steps, same seed) — the
ImageNet weights, the index input channels, the decoder's last block at full resolution, a
larger encoder — is trained, exported with its threshold calibrated on the selection
folders, and scored through the segmentation pipeline on the real validation splits
(vegetation IoU and boundary F1) and on synthetic tiles in true colour and CIR. The model
card shows the table (``make model-ablation`` writes the report the card reads).

The report is written after each variant; a rerun keeps every variant whose configuration
is unchanged and trains only the rest, so an interrupted ablation resumes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cropseg_core.files import write_json
from cropseg_model.evaluate import Evaluator, evaluate, set_name, synthetic_name
from cropseg_model.evaluation_report import SetEvaluation

if TYPE_CHECKING:  # training needs torch; the table (the model card) does not
    from cropseg_model.train import Source, TrainConfig

log = logging.getLogger(__name__)

VARIANTS: dict[str, dict[str, object]] = {
    "recipe (ImageNet-pretrained Lite0)": {},
    "random initialisation": {"pretrained": False},
    "no index input channels": {"index_channels": False},
    "decoder ends at half resolution": {"full_resolution": False},
    "EfficientNet-Lite1 encoder": {"architecture": "efficientnet-lite1"},
    "plain U-Net of cropseg 1.x": {"architecture": "unet", "pretrained": False},
}
"""Name -> the TrainConfig fields it changes."""
DEFAULT_VARIANTS = tuple(list(VARIANTS)[:4])
SYNTHETIC_LAYOUTS = ["rgb", "cir"]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def ablate(
    sources: list[Source],
    val_dirs: list[Path],
    real_val: list[Path],
    synthetic: Path | None,
    base: TrainConfig,
    variants: list[str],
    folder: Path,
    out: Path,
    *,
    synthetic_limit: int = 50,
    progress: bool = True,
) -> dict[str, object]:
    """Train, export and score every variant (checkpoints and ONNX files in ``folder``);
    writes the report to ``out`` after each one and returns it."""
    from cropseg_model.export import export_checkpoint
    from cropseg_model.train import train

    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}: choose from {list(VARIANTS)}")
    folder.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(out.read_text())["variants"] if out.exists() else []
    results: list[dict[str, object]] = []
    report: dict[str, object] = {"steps": base.steps, "batch_size": base.batch_size, "variants": results}
    for name in variants:
        config = replace(base, **VARIANTS[name])  # type: ignore[arg-type]
        as_stored = json.loads(json.dumps(asdict(config)))  # tuples become lists, as in the report
        kept = [v for v in earlier if v["name"] == name and v["config"] == as_stored]
        if kept:
            log.info("ablation %r: unchanged since the last run, kept", name)
            results.append(kept[0])
            write_json(out, report)
            continue
        checkpoint = folder / f"{slug(name)}.pt"
        log.info("ablation %r: training %d steps", name, config.steps)
        started = time.perf_counter()
        training = train(sources, val_dirs, checkpoint, config, progress=progress)
        onnx = folder / f"{slug(name)}.onnx"
        export = export_checkpoint(checkpoint, onnx, "ablation", "0", calibration=val_dirs)
        evaluator = Evaluator(onnx)
        scores: dict[str, dict[str, float]] = {}
        for data in real_val:
            unet = _unet(evaluate(onnx, data, layouts=["rgb"], evaluator=evaluator, progress=False), "rgb")
            scores[set_name(data)] = unet
        if synthetic is not None:
            tiles = evaluate(onnx, synthetic, layouts=SYNTHETIC_LAYOUTS, evaluator=evaluator,
                             progress=False, limit=synthetic_limit)  # fmt: skip
            for layout in SYNTHETIC_LAYOUTS:
                scores[f"{synthetic_name(synthetic)} ({layout})"] = _unet(tiles, layout)
        results.append({
            "name": name,
            "changes": VARIANTS[name],
            "config": asdict(config),
            "architecture": export["architecture"],
            "parameters": training["parameters"],
            "onnx_bytes": export["bytes"],
            "threshold": float(export["threshold"]),  # type: ignore[arg-type]
            "selection_iou": training["best"]["iou_non_black"],  # type: ignore[index]
            "train_seconds": training["train_seconds"],
            "seconds": round(time.perf_counter() - started, 1),
            "scores": scores,
        })  # fmt: skip
        write_json(out, report)
        log.info("ablation %r: %s", name, {k: round(v["iou_non_black"], 3) for k, v in scores.items()})
    return report


def _unet(report: SetEvaluation, layout: str) -> dict[str, float]:
    unet = report.layouts[layout]["unet"]
    return {"iou_non_black": unet.iou_non_black, "boundary_f1": unet.boundary_f1}


def ablation_table(report: dict[str, object]) -> str:
    """Markdown: one row per variant, IoU (boundary F1) per scored set."""
    variants = report["variants"]
    assert isinstance(variants, list)
    sets = list(variants[0]["scores"])
    rows = [
        "| variant | parameters | " + " | ".join(sets) + " | mean change on the real sets |",
        "|---|---:|" + "---:|" * (len(sets) + 1),
    ]
    real = [s for s in sets if not s.startswith("synthetic/")]
    first = variants[0]["scores"]
    for variant in variants:
        scores = variant["scores"]
        cells = " | ".join(f"{scores[s]['iou_non_black']:.3f} ({scores[s]['boundary_f1']:.3f})" for s in sets)
        change = sum(scores[s]["iou_non_black"] - first[s]["iou_non_black"] for s in real) / max(len(real), 1)
        size = f"{variant['parameters'] / 1e6:.2f} M"
        rows.append(f"| {variant['name']} | {size} | {cells} | {100 * change:+.1f} points |")
    return "\n".join(rows)
