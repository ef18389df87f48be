"""Levers: what each candidate change to the inference path costs or saves, side by side.

    .venv/bin/python benchmarks/levers.py --write docs/performance.md

Every lever is measured against today's setting in one process, in shuffled interleaved
rounds (each call once untimed, then twice timed: on 2 cores the threads of the session
that ran just before may still spin), on the committed model and one 360x480 field tile:

1. **Session settings**: intra-op threads, thread spinning, graph optimisation level; and
   thread spinning in the HTTP service (one client against bare ``session.run``, 8 clients).
2. **int8 static quantisation** (ONNX Runtime's QDQ and QOperator formats, per-channel
   weights, calibrated on tiles of the real training splits): latency against float32, the
   share of mask pixels that differ from float32's, and vegetation IoU on the real
   validation sets through the same pipeline the API runs.
3. **The network's own cost**: variants of the architecture at random weights (latency does
   not depend on the weights): the larger EfficientNet-Lite1 and -Lite2 encoders, the
   decoder ending at half resolution, and the plain U-Net of cropseg 1.x; FLOPs and latency.
   What they are worth in IoU is the model card's ablation (``make model-ablation``). Also
   the in-graph pre-processing alone (the features the network computes from the bands).
4. **Encoding**: the mask answer as PNG at compression levels 0-9 (Pillow) and with
   OpenCV, for a 360x480 tile and a 4000x3000 photo: time and bytes.
5. **The service path in-process**, stage by stage (decode, band mapping and tiling with
   their copies, the session, stitch and threshold, encode) for the tile and the photo.

Needs the training extra (torch, onnx): ``make test`` installs it.
"""

from __future__ import annotations

import argparse
import http.client
import random
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
from cropseg_inference.encoding import PNG_LEVEL
from cropseg_stack.sections import publish
from inference import Call, concurrent_load, count_flops, interleaved, service
from tqdm import tqdm

from cropseg_core.bands import get_layout, to_model_bands
from cropseg_core.imaging import decode_channels
from cropseg_core.masks import encode_png, score
from cropseg_core.pipeline import Pipeline, PipelineConfig
from cropseg_core.segmenter import INPUT_NAME, OnnxSegmenter
from cropseg_model.datasets import discover, load_masked
from cropseg_model.evaluate import Evaluator
from cropseg_model.synth import generate_tile

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "model" / "artifacts" / "cropseg-unet.onnx"
REAL = REPO / "model" / "data" / "real"
START, END = "<!-- levers:start -->", "<!-- levers:end -->"
TODAY = "today: EfficientNet-Lite0 encoder, separable U-Net decoder"


def runner(path: Path, bands: np.ndarray, **options: Any) -> Call:
    """Bare ``session.run`` of the model at ``path`` on ``bands`` (OnnxSegmenter's options)."""
    segmenter = OnnxSegmenter(path, **options)
    segmenter.load()
    batch = bands[None]
    return lambda: segmenter.predict(batch)


def session_levers(bands: np.ndarray, rounds: int) -> list[dict[str, Any]]:
    settings: dict[str, dict[str, Any]] = {
        "today: 1 thread per core (2), spinning, all graph optimisations": {},
        "1 intra-op thread": {"intra_op_threads": 1},
        "no thread spinning": {"thread_spinning": False},
        "graph optimisation: extended": {"graph_optimization": "extended"},
        "graph optimisation: basic": {"graph_optimization": "basic"},
    }
    calls = {name: runner(MODEL, bands, **options) for name, options in settings.items()}
    ms = interleaved(calls, rounds)
    base = ms[next(iter(ms))]
    return [{"setting": name, "ms": value, "ratio": value / base} for name, value in ms.items()]


def service_levers(tile: np.ndarray, bands: np.ndarray, rounds: int) -> list[dict[str, Any]]:
    """The HTTP service with its ONNX Runtime threads spinning (today) or sleeping between runs:
    one client's latency against bare ``session.run``, and 8 clients' throughput."""
    body = encode_png(tile)
    variants = {"spinning (today)": "true", "no spinning": "false"}
    with ExitStack() as stack:
        # 8 clients queue more work than the default admission bound (INFERENCE_MAX_QUEUE_WAIT_S)
        # on a busy machine: the lever is throughput, so everything is admitted.
        urls = {
            name: stack.enter_context(service(thread_spinning=value, max_queue_wait_s="60"))[0]
            for name, value in variants.items()
        }
        connections = {
            name: http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=60)
            for name, url in urls.items()
        }

        def request(connection: http.client.HTTPConnection) -> Call:
            def call() -> None:
                connection.request("POST", "/api/v1/segment", body, {"content-type": "image/png"})
                response = connection.getresponse()
                if response.status != 200 or not response.read():
                    raise RuntimeError(f"service answered {response.status}")

            return call

        calls = {"bare session.run": runner(MODEL, bands)}
        calls |= {name: request(connection) for name, connection in connections.items()}
        ms = interleaved(calls, rounds)
        throughput: dict[str, list[float]] = {name: [] for name in urls}
        for _ in range(max(2, rounds // 5)):
            for name, url in urls.items():
                throughput[name].append(concurrent_load(url, body, 8, 24)["throughput_rps"])
    return [
        {"setting": name, "one_client_ms": ms[name], "ratio_to_bare": ms[name] / ms["bare session.run"],
         "clients8_rps": statistics.median(throughput[name]), "bare_ms": ms["bare session.run"]}
        for name in urls
    ]  # fmt: skip


def calibration_tiles(count: int) -> list[np.ndarray]:
    """Model-band tiles from the real training splits (never a validation image)."""
    samples = [s for source in ("ews", "peanut") for s in discover(REAL / source / "train")]
    tiles = []
    for sample in random.Random(1).sample(samples, min(count, len(samples))):
        bands, _ = load_masked(sample)
        tiles.append(np.ascontiguousarray(bands[:320, :320]))
    return tiles


class _Reader:
    def __init__(self, tiles: list[np.ndarray]) -> None:
        self.feeds = iter([{INPUT_NAME: tile[None]} for tile in tiles])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def quantised(folder: Path, fmt: str, tiles: list[np.ndarray]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = folder / "prepared.onnx"
    if not prepared.exists():
        quant_pre_process(str(MODEL), str(prepared), skip_symbolic_shape=True)
    out = folder / f"int8-{fmt}.onnx"
    reader: CalibrationDataReader = _Reader(tiles)
    quantize_static(
        str(prepared), str(out), reader,
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "ConvTranspose"],
    )  # fmt: skip
    return out


def real_iou(model: Path, limit: int | None) -> dict[str, float]:
    """Mean vegetation IoU per real validation set (its first ``limit`` images), through the
    API's pipeline."""
    evaluator = Evaluator(model)
    rgb = get_layout("rgb")
    result = {}
    for source in ("ews", "peanut"):
        scores = []
        for sample in discover(REAL / source / "val")[:limit]:
            bands, truth = load_masked(sample)
            scores.append(score(evaluator.segment(bands[..., :3], rgb), truth).iou)
        result[source] = float(np.mean(scores))
    return result


def quantisation_levers(
    bands: np.ndarray, rounds: int, folder: Path, limit: int | None
) -> list[dict[str, Any]]:
    tiles = calibration_tiles(24)
    models = {"float32 (today)": MODEL}
    for fmt in ("qdq", "qoperator"):
        models[f"int8 static, {'QDQ' if fmt == 'qdq' else 'QOperator'}"] = quantised(folder, fmt, tiles)
    calls = {name: runner(path, bands) for name, path in models.items()}
    ms = interleaved(calls, rounds)
    reference = np.asarray(calls["float32 (today)"]()) > 0.5
    rows = []
    for name, path in models.items():
        mask = np.asarray(calls[name]()) > 0.5
        rows.append({
            "model": name, "ms": ms[name], "ratio": ms[name] / ms["float32 (today)"],
            "mask_differs": float(np.mean(mask != reference)), "mb": path.stat().st_size / 2**20,
            **{f"iou_{k}": v for k, v in real_iou(path, limit).items()},
        })  # fmt: skip
    return rows


def architecture_levers(bands: np.ndarray, rounds: int, folder: Path) -> list[dict[str, Any]]:
    import torch
    from torch import nn

    from cropseg_model.export import export_onnx
    from cropseg_model.unet import EfficientUNet, ExportedSegmenter, UNet, input_features

    class Features(nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return input_features(image.permute(0, 3, 1, 2).to(torch.float32) / 255.0)

    torch.manual_seed(0)
    variants: dict[str, nn.Module] = {
        TODAY: EfficientUNet(),
        "EfficientNet-Lite1 encoder": EfficientUNet("efficientnet-lite1"),
        "EfficientNet-Lite2 encoder": EfficientUNet("efficientnet-lite2"),
        "decoder ends at half resolution": EfficientUNet(full_resolution=False),
        "plain U-Net of cropseg 1.x (16-32-64-128, 256)": UNet(),
    }
    x = torch.from_numpy(bands[None].copy())
    calls, flops = {}, {}
    for index, (name, net) in enumerate(variants.items()):
        net.eval()
        flops[name] = count_flops(ExportedSegmenter(net).eval(), x)  # type: ignore[arg-type]
        path = folder / f"variant{index}.onnx"
        export_onnx(net, path, {})
        calls[name] = runner(path, bands)
    features = folder / "features.onnx"
    with torch.inference_mode():
        torch.onnx.export(
            Features(), (x,), str(features), input_names=[INPUT_NAME], output_names=["features"],
            dynamic_axes={INPUT_NAME: {1: "height", 2: "width"}}, dynamo=False, opset_version=18,
        )  # fmt: skip
    sess = ort.InferenceSession(str(features), providers=["CPUExecutionProvider"])
    calls["in-graph pre-processing alone"] = lambda: sess.run(None, {INPUT_NAME: bands[None]})
    ms = interleaved(calls, rounds)
    base = ms[TODAY]
    return [
        {"variant": name, "ms": value, "ratio": value / base,
         "gflop": flops[name] / 1e9 if name in flops else None,
         "parameters": sum(p.numel() for p in variants[name].parameters()) if name in variants else 0}
        for name, value in ms.items()
    ]  # fmt: skip


def gflop(row: dict[str, Any]) -> str:
    """A variant's GFLOP per tile, or a dash for a row that is no whole network."""
    return "–" if row["gflop"] is None else f"{row['gflop']:.2f}"


def encoding_levers(mask: np.ndarray, rounds: int) -> list[dict[str, Any]]:
    photo = np.ascontiguousarray(np.tile(mask, (9, 9))[:3000, :4000])

    def pillow(pixels: np.ndarray, level: int) -> Call:
        return lambda: encode_png(pixels, compress_level=level)

    def opencv(pixels: np.ndarray) -> Call:
        return lambda: cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()

    rows = []
    for size, pixels, count in (("360x480", mask, rounds), ("4000x3000", photo, max(3, rounds // 6))):
        calls: dict[str, Call] = {f"Pillow level {level}": pillow(pixels, level) for level in (0, 1, 3, 6, 9)}
        calls["OpenCV level 1"] = opencv(pixels)
        ms = interleaved(calls, count)
        for name, value in ms.items():
            data = calls[name]()
            assert isinstance(data, bytes)
            rows.append({"size": size, "encoder": name, "ms": value, "kb": len(data) / 1024})
    return rows


def stage_levers(tile: np.ndarray, rounds: int) -> list[dict[str, Any]]:
    """The inference route's work in-process, stage by stage (no HTTP, no thread hops)."""
    segmenter = OnnxSegmenter(MODEL)
    segmenter.load()
    predict = segmenter.predict
    rgb = get_layout("rgb")
    pipeline = Pipeline(PipelineConfig())

    photo = np.ascontiguousarray(np.tile(tile, (9, 9, 1))[:3000, :4000])
    rows = []
    for size, image, count in (("360x480", tile, rounds), ("4000x3000", photo, 2)):
        body = encode_png(image)
        times: dict[str, list[float]] = {}
        for _ in range(count + 1):
            marks = [time.perf_counter()]
            decoded = decode_channels(body).pixels
            marks.append(time.perf_counter())
            prepared = pipeline.prepare(decoded, rgb)
            tiles = [prepared.tile(i) for i in range(len(prepared.plan))]
            marks.append(time.perf_counter())
            mosaic = prepared.mosaic()
            for index, bands in enumerate(tiles):
                mosaic.put(index, predict(bands))
            marks.append(time.perf_counter())
            _, mask = pipeline.finish(prepared, mosaic, 0.5)
            marks.append(time.perf_counter())
            encode_png(mask, PNG_LEVEL)
            marks.append(time.perf_counter())
            for name, begin, end in zip(("decode", "bands and tiles", "session", "stitch and threshold",
                                         "encode"), marks[:-1], marks[1:], strict=True):  # fmt: skip
                times.setdefault(name, []).append(end - begin)
        for name, values in times.items():
            rows.append({"size": size, "stage": name, "ms": 1000 * statistics.median(values[1:])})
    return rows


def run(rounds: int, limit: int | None = None) -> dict[str, Any]:
    tile = generate_tile(3, 0, 360, 480)[0].rgb
    bands = to_model_bands(tile, get_layout("rgb"))
    steps = tqdm(total=6, desc="levers", unit="lever")
    results: dict[str, Any] = {"rounds": rounds, "tile": "360x480", "limit": limit}
    results["session"] = session_levers(bands, rounds)
    steps.update()
    results["service"] = service_levers(tile, bands, rounds)
    steps.update()
    with tempfile.TemporaryDirectory() as tmp:
        results["quantisation"] = quantisation_levers(bands, rounds, Path(tmp), limit)
        steps.update()
        results["architecture"] = architecture_levers(bands, rounds, Path(tmp))
        steps.update()
    probability = np.asarray(runner(MODEL, bands)())[0]
    results["encoding"] = encoding_levers(np.where(probability > 0.5, np.uint8(255), np.uint8(0)), rounds)
    steps.update()
    results["stages"] = stage_levers(tile, rounds)
    steps.update()
    steps.close()
    return results


def markdown(r: dict[str, Any]) -> str:
    subset = "" if r.get("limit") is None else f" (their first {r['limit']} images)"
    lines = [
        f"Command: `.venv/bin/python benchmarks/levers.py --write docs/performance.md` (median of "
        f"{2 * r['rounds']} timed calls per row in {r['rounds']} shuffled interleaved rounds, one "
        f"{r['tile']} tile, one process).",
        "",
        "**Session settings** (bare `session.run`):",
        "",
        "| setting | ms | ratio to today |",
        "|---|---:|---:|",
        *(f"| {row['setting']} | {row['ms']:.1f} | {row['ratio']:.2f} |" for row in r["session"]),
        "",
        "**Thread spinning in the service** (HTTP, PNG in, PNG mask out; one client on a keep-alive "
        "connection, interleaved with bare `session.run`; 8 clients in alternating blocks of 24 requests):",
        "",
        "| service | one client p50 ms | ratio to bare ORT | 8 clients req/s |",
        "|---|---:|---:|---:|",
        *(
            f"| {row['setting']} | {row['one_client_ms']:.1f} | {row['ratio_to_bare']:.2f} | "
            f"{row['clients8_rps']:.2f} |"
            for row in r["service"]
        ),
        f"| bare `session.run` | {r['service'][0]['bare_ms']:.1f} | 1.00 | |",
        "",
        "**int8 static quantisation** (Conv and ConvTranspose, per-channel int8 weights, uint8 "
        "activations, calibrated on 24 tiles of the real training splits; IoU on the real validation "
        f"sets{subset} through the API's pipeline):",
        "",
        "| model | ms | ratio to float32 | MB | mask pixels differing from float32 | ews/val IoU "
        "| peanut/val IoU |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {row['model']} | {row['ms']:.1f} | {row['ratio']:.2f} | {row['mb']:.1f} | "
            f"{row['mask_differs']:.2%} | {row['iou_ews']:.3f} | {row['iou_peanut']:.3f} |"
            for row in r["quantisation"]
        ),
        "",
        "**The network's own cost** (same interface, random weights; their IoU: the model card's ablation):",
        "",
        "| variant | GFLOP per tile | parameters | ms | ratio to today |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {row['variant']} | {gflop(row)} | {row['parameters']:,} | {row['ms']:.1f} | "
            f"{row['ratio']:.2f} |"
            for row in r["architecture"]
        ),
        "",
        "**Encoding the mask answer** (PNG, single channel):",
        "",
        "| mask | encoder | ms | KB |",
        "|---|---|---:|---:|",
        *(
            f"| {row['size']} | {row['encoder']} | {row['ms']:.2f} | {row['kb']:.0f} |"
            for row in r["encoding"]
        ),
        "",
        "**The inference route's work, stage by stage** (in-process, no HTTP, no thread hand-over; PNG in, "
        f"PNG mask out at the service's level {PNG_LEVEL}):",
        "",
        "| image | stage | ms |",
        "|---|---|---:|",
        *(f"| {row['size']} | {row['stage']} | {row['ms']:.1f} |" for row in r["stages"]),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds per comparison")
    parser.add_argument("--limit", type=int, help="int8 IoU on this many images per set (smoke)")
    parser.add_argument("--write", type=Path, help="replace the levers section of this markdown file")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    results = run(args.rounds, args.limit)
    publish(markdown(results), results, args.json, args.write, START, END)


if __name__ == "__main__":
    main()
