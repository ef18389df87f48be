"""Inference benchmark: bare ONNX Runtime vs the HTTP service vs PyTorch eager, on this machine.

    .venv/bin/python benchmarks/inference.py --write docs/performance.md

Everything runs side by side in one invocation so the ratios are fair on a noisy machine:
1. bare ``session.run`` on one 360x480 tile (the committed model, default session options);
2. the same tile through the HTTP service (a real uvicorn process on loopback), one request
   at a time over a keep-alive ``http.client`` connection, then with httpx at concurrency
   1, 4 and 16 with micro-batching on and off;
3. the same network in PyTorch eager mode (same architecture; speed does not depend on
   the weights, so no checkpoint is needed);
4. the model's FLOPs per tile against this CPU's measured peak (a large float32 GEMM),
   and one 4000x3000 photo through the service with the server's peak memory.
Needs the training extra (torch) for 3 and 4: ``make test`` installs it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
from cropseg_stack.sections import publish
from tqdm import tqdm

from cropseg_core.bands import get_layout, to_model_bands
from cropseg_core.masks import encode_png
from cropseg_core.processes import free_port, running_service
from cropseg_core.segmenter import OnnxSegmenter
from cropseg_model.synth import generate_tile

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "model" / "artifacts" / "cropseg-unet.onnx"
START, END = "<!-- inference-benchmark:start -->", "<!-- inference-benchmark:end -->"
Call = Callable[[], object]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def timed(function: Call, runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def interleaved(calls: dict[str, Call], rounds: int) -> dict[str, float]:
    """Median milliseconds of each call, rounds shuffled so no call always follows another."""
    timings: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    order = list(calls)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            calls[name]()  # untimed: the previous call's threads may still spin
            for _ in range(2):
                started = time.perf_counter()
                calls[name]()
                timings[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) for name, values in timings.items()}


@contextmanager
def service(**settings: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running_service(
        [sys.executable, "-m", "cropseg_inference", "--port", str(port), "--model", str(MODEL)],
        f"{url}/readyz",
        env={**{f"INFERENCE_{k.upper()}": v for k, v in settings.items()}, "INFERENCE_LOG_LEVEL": "WARNING"},
        cwd=REPO,
    ) as process:
        yield url, process.pid


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match[1]) / 1024 if match else float("nan")


def post_tile(client: httpx.Client, url: str, body: bytes) -> float:
    started = time.perf_counter()
    response = client.post(f"{url}/api/v1/segment", content=body, headers={"content-type": "image/png"})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"service answered {response.status_code}: {response.text[:200]}")
    return elapsed


def concurrent_load(url: str, body: bytes, concurrency: int, requests: int) -> dict[str, float]:
    latencies: list[float] = []
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        for _ in range(concurrency):  # open connections, warm up
            post_tile(client, url, body)
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = list(pool.map(lambda _: post_tile(client, url, body), range(requests)))
        wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": requests,
        "throughput_rps": requests / wall,
        **percentiles(latencies),
    }


def count_flops(net: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one forward pass (convolutions' multiply-adds x 2)."""
    import torch

    macs = 0

    def count(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            weight = module.weight
            per_output = weight.shape[1] * weight.shape[2] * weight.shape[3]
            if isinstance(module, torch.nn.ConvTranspose2d):  # each input pixel feeds k*k outputs
                macs += inputs[0].numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
            else:
                macs += output.numel() * per_output

    handles = [m.register_forward_hook(count) for m in net.modules()]
    with torch.inference_mode():
        net(x)
    for handle in handles:
        handle.remove()
    return 2.0 * macs


def torch_eager(tile: np.ndarray, runs: int) -> tuple[dict[str, float], float]:
    """Latency of the eager model and its FLOPs for one tile."""
    import torch

    from cropseg_model.unet import EfficientUNet, ExportedSegmenter

    torch.set_num_threads(os.cpu_count() or 1)
    net = ExportedSegmenter(EfficientUNet()).eval()
    x = torch.from_numpy(to_model_bands(tile, get_layout("rgb"))[None].copy())
    flops = count_flops(net, x)
    with torch.inference_mode():
        latency = percentiles(timed(lambda: net(x), runs))
    return latency, flops


def cpu_peak_gflops() -> float:
    """Best float32 GEMM rate over numpy and torch (all cores): the practical peak."""
    import torch

    rates = []
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    ta = torch.from_numpy(a)
    for multiply in (lambda: a @ a, lambda: ta @ ta):
        best = min(timed(multiply, 5, warmup=2))
        rates.append(2 * n**3 / best / 1e9)
    return max(rates)


def physical_limit() -> dict[str, float]:
    """The model's FLOPs per tile, this CPU's measured float32 peak, and bare ONNX Runtime's rate
    (what ``loadtest/run.py stress`` compares the stack's capacity with: ``--physical-limit``)."""
    tile = generate_tile(3, 0, 360, 480)[0].rgb
    segmenter = OnnxSegmenter(MODEL)
    segmenter.load()
    bands = to_model_bands(tile, get_layout("rgb"))
    bare_s = statistics.median(timed(lambda: segmenter.predict(bands[None]), 30))
    segmenter.unload()
    flops = torch_eager(tile, 1)[1]
    peak = cpu_peak_gflops() * 1e9
    return {
        "flops_per_tile": flops,
        "cpu_peak_flops_per_s": peak,
        "limit_tiles_per_s": peak / flops,
        "bare_onnxruntime_tiles_per_s": 1 / bare_s,
    }


def run(runs: int, requests: int) -> dict[str, object]:
    tile = generate_tile(3, 0, 360, 480)[0].rgb
    body = encode_png(tile)
    results: dict[str, object] = {"cpu_count": os.cpu_count(), "tile": "360x480", "runs": runs}
    steps = tqdm(total=7, desc="benchmark", unit="step")

    segmenter = OnnxSegmenter(MODEL)
    segmenter.load()
    batch = to_model_bands(tile, get_layout("rgb"))[None]
    results["bare_onnxruntime"] = percentiles(timed(lambda: segmenter.predict(batch), runs))
    segmenter.unload()
    steps.update()

    with service() as (url, _):
        # A lean client on one keep-alive connection, so the number is the service's and not
        # the client library's (httpx adds ~4 ms per request on this machine).
        connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=60)

        def request() -> None:
            connection.request("POST", "/api/v1/segment", body, {"content-type": "image/png"})
            response = connection.getresponse()
            if response.status != 200 or not response.read():
                raise RuntimeError(f"service answered {response.status}")

        results["http_sequential"] = percentiles(timed(request, runs))
        connection.close()
    steps.update()

    configurations = {"batched (max 4, wait 0 ms)": ("4", "0"), "batched (max 4, wait 5 ms)": ("4", "5"),
                      "unbatched (max 1)": ("1", "0")}  # fmt: skip
    sweep = []
    for name, (size, wait) in configurations.items():
        # 16 clients queue ~16 tiles of work, more than the default admission bound
        # (INFERENCE_MAX_QUEUE_WAIT_S): the sweep measures batching, so everything is admitted.
        with service(max_batch_size=size, max_batch_wait_ms=wait, max_queue_wait_s="60") as (url, pid):
            for concurrency in (1, 4, 16):
                row = concurrent_load(url, body, concurrency, max(requests, 2 * concurrency))
                sweep.append({"configuration": name, **row})
            sweep[-1]["peak_rss_mib"] = peak_rss_mib(pid)
        steps.update()
    results["http_concurrent"] = sweep

    eager, flops = torch_eager(tile, runs)
    results["pytorch_eager"] = eager
    results["flops_per_tile"] = flops
    steps.update()
    results["cpu_peak_gflops"] = cpu_peak_gflops()
    steps.update()

    big = np.ascontiguousarray(np.tile(generate_tile(3, 1, 1000, 1000)[0].rgb, (3, 4, 1)))
    big_body = encode_png(big)
    with service() as (url, pid), httpx.Client(timeout=300) as client:
        rss_before = peak_rss_mib(pid)
        seconds = post_tile(client, url, big_body)
        results["drone_photo"] = {
            "size": "4000x3000",
            "seconds": seconds,
            "peak_rss_mib_before": rss_before,
            "peak_rss_mib": peak_rss_mib(pid),
        }
    steps.update()
    steps.close()
    return results


def markdown(r: dict) -> str:
    bare, http, eager = r["bare_onnxruntime"], r["http_sequential"], r["pytorch_eager"]
    achieved = r["flops_per_tile"] / (bare["p50_ms"] / 1000) / 1e9
    lines = [
        f"Command: `.venv/bin/python benchmarks/inference.py --write docs/performance.md` "
        f"({r['cpu_count']} CPUs, one {r['tile']} tile, {r['runs']} timed runs each).",
        "",
        "| path | p50 ms | p95 ms | ratio to bare ORT (p50) |",
        "|---|---:|---:|---:|",
    ]
    paths = (
        ("bare ONNX Runtime `session.run`", bare),
        ("HTTP service, one request at a time (PNG in, PNG mask out)", http),
        ("PyTorch eager (same network)", eager),
    )
    for name, row in paths:
        lines.append(
            f"| {name} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p50_ms'] / bare['p50_ms']:.2f}x |"
        )
    lines += [
        "",
        f"Bars: HTTP p50 / bare p50 = **{http['p50_ms'] / bare['p50_ms']:.2f}** (bar <= 1.25); "
        f"PyTorch eager / ONNX Runtime = **{eager['p50_ms'] / bare['p50_ms']:.2f}x** slower (bar > 1).",
        "",
        f"Physical limit: the U-Net costs **{r['flops_per_tile'] / 1e9:.2f} GFLOP** per tile; this CPU's "
        f"measured float32 GEMM peak is **{r['cpu_peak_gflops']:.0f} GFLOP/s**, "
        "so a tile cannot take less than "
        f"**{r['flops_per_tile'] / r['cpu_peak_gflops'] / 1e6:.1f} ms**. ONNX Runtime reaches "
        f"{achieved:.0f} GFLOP/s = **{achieved / r['cpu_peak_gflops']:.0%} of peak** (convolutions on "
        "16-64 channels cannot use the cores as fully as one large GEMM).",
        "",
        "Micro-batching through HTTP (requests of one tile each; throughput in requests per second; "
        "admission bound raised to 60 s so that every request is queued):",
        "",
        "| configuration | concurrency | throughput req/s | p50 ms | p95 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in r["http_concurrent"]:
        lines.append(f"| {row['configuration']} | {row['concurrency']} | {row['throughput_rps']:.1f} | "
                     f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} |")  # fmt: skip
    peaks = {
        row["configuration"]: row["peak_rss_mib"] for row in r["http_concurrent"] if "peak_rss_mib" in row
    }
    photo = r["drone_photo"]
    lines += [
        "",
        "Peak server memory after each sweep: "
        + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in peaks.items())
        + ".",
        "",
        f"One {photo['size']} photo (PNG) through the service with default settings: "
        f"{photo['seconds']:.1f} s; server peak memory "
        f"{photo['peak_rss_mib_before']:.0f} MiB after start-up, "
        f"{photo['peak_rss_mib']:.0f} MiB after the photo.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50, help="timed runs per single-request measurement")
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--write", type=Path, help="replace the benchmark section of this markdown file")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument(
        "--physical-limit", action="store_true", help="only print the model's and this CPU's limit as JSON"
    )
    args = parser.parse_args()
    if args.physical_limit:
        print(json.dumps(physical_limit()))
        return
    results = run(args.runs, args.requests)
    publish(markdown(results), results, args.json, args.write, START, END)


if __name__ == "__main__":
    main()
