"""ONNX export of a trained checkpoint, with dynamic batch, height and width, and a parity
check: ONNX Runtime must reproduce the PyTorch probabilities within ``PARITY_ATOL``."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from cropseg_core.bands import LAYOUTS, MODEL_BANDS
from cropseg_core.files import write_atomic
from cropseg_core.masks import score
from cropseg_core.pipeline import DEFAULT_MODEL_GSD_MM
from cropseg_core.segmenter import DEFAULT_THRESHOLD, INPUT_NAME, OUTPUT_NAME, OnnxSegmenter
from cropseg_model.metrics import summarise
from cropseg_model.synth import generate_tile
from cropseg_model.train import load_checkpoint, load_pairs, predict_probabilities, selection_views
from cropseg_model.unet import BANDS, ExportedSegmenter, Network

log = logging.getLogger(__name__)
# On probabilities in [0, 1]. The per-image statistics are float32 sums over every pixel
# (170k for a tile); PyTorch and ONNX Runtime add them in different orders, which moves
# probabilities by up to ~1e-3 on real tiles (measured 8e-4) and by ~1e-5 elsewhere.
PARITY_ATOL = 2e-3
PARITY_MAX_MASK_DISAGREEMENT = 1e-4  # fraction of pixels whose 0.5-thresholded mask differs
OPSET = 18
CALIBRATION_THRESHOLDS = np.round(np.arange(0.30, 0.71, 0.05), 2)


def export_onnx(net: torch.nn.Module, out: Path, metadata: dict[str, str]) -> None:
    """Export ``net`` (a Network) to ``out`` atomically, with ``metadata`` in the file."""
    wrapper = ExportedSegmenter(net).eval()  # type: ignore[arg-type]
    for noisy in ("onnxscript", "onnx_ir"):  # they log every graph rewrite at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    example = torch.zeros((1, 360, 480, BANDS), dtype=torch.uint8)
    dims = {
        0: torch.export.Dim("batch", max=1024),
        1: torch.export.Dim("height", max=8192),
        2: torch.export.Dim("width", max=8192),
    }
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The exporter's own deprecation chatter is not ours to fix; keep it out of
        # warnings-as-errors runs so that an export never fails on it.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"image": dims},
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
        model = onnx.load(str(path))
    for key, value in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = (
        "cropseg segmentation network: uint8 bands red, green, blue, NIR (N,H,W,4; 0 where absent) "
        "-> vegetation probability (N,1,H,W)"
    )
    onnx.checker.check_model(model)
    write_atomic(out, model.SerializeToString())


def parity_inputs(seed: int = 123) -> list[np.ndarray]:
    """Random noise of awkward sizes plus generated tiles in every layout, as uint8 NHWC batches."""
    rng = np.random.default_rng(seed)
    sizes = ((360, 480), (33, 47), (1, 1))
    batches = [rng.integers(0, 256, (1, h, w, BANDS), dtype=np.uint8) for h, w in sizes]
    batches.append(rng.integers(0, 256, (3, 64, 96, BANDS), dtype=np.uint8))
    tiles = [generate_tile(seed, i)[0].image for i in range(2)]
    for layout in LAYOUTS.values():
        batches.append(np.stack(tiles) * np.array(layout.present(), np.uint8))
    return batches


def check_parity(net: torch.nn.Module, onnx_path: Path) -> float:
    """Largest absolute difference between PyTorch and ONNX Runtime; raises above tolerance."""
    wrapper = ExportedSegmenter(net).eval()  # type: ignore[arg-type]
    segmenter = OnnxSegmenter(onnx_path)
    segmenter.load()
    worst = 0.0
    disagreeing = total = 0
    for batch in parity_inputs():
        with torch.no_grad():
            expected = wrapper(torch.from_numpy(batch)).numpy()[:, 0]
        actual = segmenter.predict(batch)
        worst = max(worst, float(np.abs(expected - actual).max()))
        disagreeing += int(((expected > 0.5) != (actual > 0.5)).sum())
        total += expected.size
    if worst > PARITY_ATOL:
        raise AssertionError(f"ONNX Runtime differs from PyTorch by {worst:.2e} > {PARITY_ATOL:.0e}")
    if disagreeing > PARITY_MAX_MASK_DISAGREEMENT * total:
        raise AssertionError(f"ONNX Runtime and PyTorch masks differ on {disagreeing} of {total} pixels")
    return worst


def calibrate_threshold(
    net: Network, sets: list[list[tuple[np.ndarray, np.ndarray]]]
) -> tuple[float, dict[str, float]]:
    """The probability threshold with the best IoU (non-black; mean over the ``sets``, each
    the mean over its images) on selection folders."""
    probabilities = [
        predict_probabilities(net, [image for image, _ in pairs], torch.device("cpu")) for pairs in sets
    ]
    by_threshold = {}
    for threshold in CALIBRATION_THRESHOLDS:
        per_set = [
            float(
                summarise(
                    score(np.where(p > threshold, 255, 0).astype(np.uint8), mask, image)
                    for p, (image, mask) in zip(set_probabilities, pairs, strict=True)
                )["iou_non_black"]
            )
            for set_probabilities, pairs in zip(probabilities, sets, strict=True)
        ]
        by_threshold[f"{threshold:.2f}"] = float(np.mean(per_set))
    best = max(by_threshold, key=lambda t: (by_threshold[t], -abs(float(t) - 0.5)))
    return float(best), by_threshold


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    name: str,
    version: str,
    calibration: list[Path] | None = None,
    working_gsd_mm: float = DEFAULT_MODEL_GSD_MM,
) -> dict[str, object]:
    """Export, optionally choosing the threshold on selection folders, and check parity."""
    net, payload = load_checkpoint(checkpoint)
    net.eval()
    threshold, by_threshold = DEFAULT_THRESHOLD, dict[str, float]()
    if calibration:
        views = [
            view
            for folder in calibration
            for view in selection_views(folder.name, load_pairs(folder)).values()
        ]
        threshold, by_threshold = calibrate_threshold(net, views)
    metadata = {
        "name": name,
        "version": version,
        "architecture": net.architecture,
        "input": "image: uint8 (N,H,W,4) bands red, green, blue, nir (0 where absent), any H and W",
        "bands": ",".join(MODEL_BANDS),
        "working_gsd_mm": f"{working_gsd_mm:g}",
        "output": "vegetation_probability: float32 (N,1,H,W)",
        "trained_steps": str(payload["step"]),
        "threshold": f"{threshold:.2f}",
    }
    export_onnx(net, out, metadata)
    worst = check_parity(net, out)
    log.info("exported %s (%d bytes), parity max |diff| %.2e", out, out.stat().st_size, worst)
    return {
        "onnx": str(out),
        "bytes": out.stat().st_size,
        "parity_max_abs_diff": worst,
        "threshold_calibration": by_threshold,
        **metadata,
    }
