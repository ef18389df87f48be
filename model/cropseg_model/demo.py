"""The embedded-default demo: generate a field tile, segment it with the committed ONNX
model, write image, mask and overlay, and print what happened."""

from __future__ import annotations

import time
from pathlib import Path

from cropseg_core.bands import get_layout
from cropseg_core.files import write_atomic
from cropseg_core.masks import encode_png, overlay, score, vegetation_fraction
from cropseg_model.evaluate import Evaluator
from cropseg_model.synth import generate_tile


def run_demo(model: Path, out: Path, seed: int, index: int) -> dict[str, float]:
    """The true-colour picture of a generated tile through the segmentation pipeline (what
    ``POST /api/v1/segment`` runs), written as files a user can open."""
    tile, _, _ = generate_tile(seed, index)
    evaluator = Evaluator(model)
    info = evaluator.info
    rgb = get_layout("rgb")
    evaluator.segment(tile.rgb, rgb)  # warm-up: the first run allocates buffers
    started = time.perf_counter()
    mask = evaluator.segment(tile.rgb, rgb)
    latency_ms = 1000 * (time.perf_counter() - started)
    result = score(mask, tile.mask, tile.rgb)
    for name, pixels in (
        ("tile.png", tile.rgb),
        ("mask.png", mask),
        ("truth.png", tile.mask),
        ("overlay.png", overlay(tile.rgb, mask)),
    ):
        write_atomic(out / name, encode_png(pixels))
    fraction = vegetation_fraction(mask)
    print(f"model      {info.name} {info.version} (sha256 {info.sha256[:12]})")
    print(
        f"tile       {tile.image.shape[1]}x{tile.image.shape[0]} true colour, "
        f"{tile.meta['soil']} soil, seed {seed} index {index}"
    )
    print(
        f"vegetation {100 * fraction:.1f}% predicted, {100 * vegetation_fraction(tile.mask):.1f}% true "
        f"(IoU {result.iou:.3f}, pixel accuracy {result.pixel_accuracy:.3f})"
    )
    print(f"latency    {latency_ms:.1f} ms (the segmentation pipeline with ONNX Runtime, one tile)")
    print(f"wrote      {out}/tile.png, mask.png, truth.png, overlay.png")
    return {"vegetation_fraction": fraction, "iou": result.iou, "latency_ms": latency_ms}
