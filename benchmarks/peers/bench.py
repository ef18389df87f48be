"""Serving peers side by side: cropseg's inference service against the frameworks a platform team
would otherwise deploy, on this machine, in one run.

    .venv/bin/python benchmarks/peers/peers.py setup                          # the peers' venvs (once)
    .venv/bin/python benchmarks/peers/bench.py --write docs/performance.md    # make bench-peers
    .venv/bin/python benchmarks/peers/bench.py --smoke                        # CI: every server, briefly

Every server does the same work per request (``workload.py``: decode, the core pipeline with its
tiling, the same ONNX Runtime session, PNG encode); only the serving framework differs. One server
runs at a time, each started fresh, in a different order each round; per server and round:

- **one client**, the seed's 360x480 image (one tile): p50/p95 over back-to-back requests;
- **8 and 32 clients** back to back for a while: answers per second, p50/p95, refusals;
- **large images**, one client, in the first round: a 4000x3000 photo (JPEG) and an 8192x4096
  tile mosaic (PNG, 242 tiles at full resolution);
- **overload**: requests arriving at random (Poisson) at twice the workload's in-process rate: p95
  of the answered ones, and the share refused (503) or timed out (after 30 s).

Baselines, measured in this process between servers: bare ONNX Runtime ``session.run`` on the
tile's bands, and the whole workload in-process (no HTTP). Ratios are to bare ``session.run``
(latency) and to its rate (throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import sys
import time
import timeit
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from cropseg_stack.sections import replace_section
from peers import PEERS, REPO, Peer, ensure_venv, venv_python  # this script's folder
from PIL import Image
from tqdm import tqdm
from workload import MODEL, Workload

from cropseg_core.bands import get_layout, to_model_bands
from cropseg_core.processes import free_port, running_service

HERE = Path(__file__).resolve().parent
START, END = "<!-- peers:start -->", "<!-- peers:end -->"
PLOT = REPO / "docs" / "img" / "peers.png"
SAMPLE = REPO / "model" / "artifacts" / "samples" / "images"
PHOTO = REPO / "model" / "data" / "real" / "peanut" / "val" / "images"
TIMEOUT_S = 30.0
IDENTITY = {"Accept-Encoding": "identity"}  # every server answers uncompressed (MLServer would gzip)

CROPSEG = Peer(
    name="cropseg",
    title="cropseg inference",
    requirements=(),
    script="",
    ready_path="/readyz",
    path="/api/v1/segment?layout=rgb",
)
FASTAPI = Peer(
    name="fastapi",
    title="bare FastAPI + uvicorn",
    requirements=(),
    script="serve_fastapi.py",
    ready_path="/ready",
    path="/segment",
)


@dataclass(frozen=True)
class Plan:
    rounds: int
    single: int  # requests of the one-client run
    closed_s: float  # seconds of each 8- and 32-client run
    large: bool
    overload_s: float


FULL = Plan(rounds=3, single=20, closed_s=8, large=True, overload_s=8)
SMOKE = Plan(rounds=1, single=3, closed_s=1.5, large=False, overload_s=1.5)


@dataclass
class Inputs:
    tile: bytes  # the seed's 360x480 image, PNG
    photo: bytes  # 4000x3000, JPEG
    mosaic: bytes  # 8192x4096, PNG
    expected: bytes  # the tile's mask from the workload in this process


@dataclass
class Run:
    """What one scenario measured on one server in one round."""

    latencies_s: list[float] = field(default_factory=list)
    refused: int = 0  # 503
    timed_out: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.latencies_s)

    @property
    def sent(self) -> int:
        return self.answered + self.refused + self.timed_out + sum(self.errors.values())


def inputs() -> Inputs:
    tile = next(path for path in sorted(SAMPLE.glob("*.png")) if Image.open(path).mode == "RGB").read_bytes()
    with Image.open(next(iter(sorted(PHOTO.iterdir())))) as real:
        photo = io.BytesIO()
        real.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(photo, "JPEG", quality=90)
    pixels = np.asarray(Image.open(io.BytesIO(tile)).convert("RGB"))
    mosaic = np.tile(pixels, (-(-4096 // pixels.shape[0]), -(-8192 // pixels.shape[1]), 1))[:4096, :8192]
    buffer = io.BytesIO()
    Image.fromarray(mosaic).save(buffer, "PNG", compress_level=1)
    workload = Workload()
    expected = workload(tile)
    workload.model.segmenter.unload()
    return Inputs(tile, photo.getvalue(), buffer.getvalue(), expected)


def command(peer: Peer, port: int) -> list[str]:
    if peer is CROPSEG:
        return [sys.executable, "-m", "cropseg_inference", "--port", str(port), "--model", str(MODEL)]
    python = sys.executable if peer is FASTAPI else str(venv_python(peer))
    return [python, str(HERE / peer.script), "--port", str(port)]


async def send(client: httpx.AsyncClient, peer: Peer, url: str, image: bytes, run: Run) -> float:
    """One request, recorded in ``run``; returns the seconds a refusal asks to wait (Retry-After)."""
    headers, body = peer.request(image)
    started = time.perf_counter()
    try:
        response = await client.post(url, headers=headers, content=body)
    except httpx.TimeoutException:
        run.timed_out += 1
        return 0.0
    except httpx.HTTPError as error:
        run.errors[type(error).__name__] += 1
        return 0.0
    if response.status_code == 503:
        run.refused += 1
        return float(response.headers.get("Retry-After", "1"))
    if response.status_code != 200:
        run.errors[f"HTTP {response.status_code}"] += 1
    else:
        peer.response(response.content)
        run.latencies_s.append(time.perf_counter() - started)
    return 0.0


async def one_client(peer: Peer, url: str, image: bytes, count: int) -> Run:
    run = Run()
    async with httpx.AsyncClient(timeout=TIMEOUT_S * 4, headers=IDENTITY) as client:
        started = time.perf_counter()
        for _ in range(count):
            await send(client, peer, url, image, run)
        run.seconds = time.perf_counter() - started
    return run


async def closed_loop(peer: Peer, url: str, image: bytes, clients: int, seconds: float) -> Run:
    """``clients`` each sending the next request as soon as the last is answered (or after the
    Retry-After of a refusal, as a well-behaved client does), for ``seconds``."""
    run = Run()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits, headers=IDENTITY) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def loop() -> None:
            while time.perf_counter() < deadline:
                retry_after = await send(client, peer, url, image, run)
                await asyncio.sleep(min(retry_after, max(0.0, deadline - time.perf_counter())))

        await asyncio.gather(*(loop() for _ in range(clients)))
        run.seconds = time.perf_counter() - started
    return run


async def open_loop(peer: Peer, url: str, image: bytes, rate: float, seconds: float, seed: int) -> Run:
    """Requests arriving at random at ``rate`` per second for ``seconds``, each on its own."""
    run = Run()
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits, headers=IDENTITY) as client:
        started = time.perf_counter()
        tasks, arrival = [], 0.0
        while (arrival := arrival + rng.expovariate(rate)) < seconds:
            await asyncio.sleep(max(0.0, started + arrival - time.perf_counter()))
            tasks.append(asyncio.ensure_future(send(client, peer, url, image, run)))
        await asyncio.gather(*tasks)
        run.seconds = time.perf_counter() - started
    return run


def baselines(tile: bytes, runs: int) -> dict[str, float]:
    """Seconds per request in this process: bare ``session.run`` on the tile, and the whole workload."""
    workload = Workload()
    bands = to_model_bands(np.asarray(Image.open(io.BytesIO(tile)).convert("RGB")), get_layout("rgb"))
    results = {}
    for name, function in (("session_run", lambda: workload.model.segmenter.predict(bands)),
                           ("workload", lambda: workload(tile))):  # fmt: skip
        for _ in range(3):  # warm-up
            function()
        results[name] = statistics.median(timeit.repeat(function, number=1, repeat=runs))
    workload.model.segmenter.unload()
    return results


def measure(peer: Peer, data: Inputs, plan: Plan, rate: float, seed: int) -> dict[str, Run]:
    """Start ``peer`` fresh, check its answer is the workload's mask byte for byte, run the scenarios."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}{peer.path}"
    env = {"INFERENCE_LOG_LEVEL": "WARNING", "PYTHONWARNINGS": "ignore"}
    log = REPO / "var" / "peers" / "logs" / f"{peer.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with running_service(command(peer, port), f"{base}{peer.ready_path}", env=env, cwd=REPO, timeout_s=180,
                         log_path=log):  # fmt: skip
        headers, body = peer.request(data.tile)
        answer = httpx.post(url, headers={**headers, **IDENTITY}, content=body, timeout=TIMEOUT_S)
        if answer.status_code != 200 or peer.response(answer.content) != data.expected:
            raise RuntimeError(
                f"{peer.name}: not the workload's mask: {answer.status_code} {answer.text[:200]}"
            )
        asyncio.run(one_client(peer, url, data.tile, 5))  # warm-up
        runs = {"single": asyncio.run(one_client(peer, url, data.tile, plan.single))}
        for clients in (8, 32):
            runs[f"c{clients}"] = asyncio.run(closed_loop(peer, url, data.tile, clients, plan.closed_s))
        if plan.large and seed == 0:  # once per server: long requests, little noise
            runs["photo"] = asyncio.run(one_client(peer, url, data.photo, 1))
            runs["mosaic"] = asyncio.run(one_client(peer, url, data.mosaic, 1))
        runs["overload"] = asyncio.run(open_loop(peer, url, data.tile, rate, plan.overload_s, seed))
    return runs


@dataclass
class Row:
    """One server's results, every round's runs of a scenario pooled."""

    name: str
    title: str
    single_p50_ms: float
    single_p95_ms: float
    single_ratio: float  # p50 / bare session.run
    c8_per_s: float
    c8_ratio: float  # answers per second / bare session.run's rate
    c8_p95_ms: float
    c8_refused: float
    c32_per_s: float
    c32_ratio: float
    c32_p95_ms: float
    c32_refused: float
    photo_s: float
    mosaic_s: float
    overload_p50_ms: float
    overload_p95_ms: float
    overload_answered: float
    overload_refused: float
    overload_timed_out: float
    errors: dict[str, int]


def pooled(runs: list[dict[str, Run]], name: str) -> Run:
    total = Run()
    for one in (round_runs[name] for round_runs in runs if name in round_runs):
        total.latencies_s += one.latencies_s
        total.refused += one.refused
        total.timed_out += one.timed_out
        total.errors += one.errors
        total.seconds += one.seconds
    return total


def summarise(peer: Peer, runs: list[dict[str, Run]], bare: dict[str, float]) -> Row:
    def ms(run: Run, q: float) -> float:
        return 1000 * float(np.percentile(run.latencies_s, q)) if run.latencies_s else float("nan")

    def rate(run: Run) -> float:
        return run.answered / run.seconds if run.seconds else float("nan")

    def median_s(run: Run) -> float:
        return statistics.median(run.latencies_s) if run.latencies_s else float("nan")

    single, c8, c32 = (pooled(runs, name) for name in ("single", "c8", "c32"))
    overload = pooled(runs, "overload")
    sent = max(1, overload.sent)
    return Row(
        name=peer.name,
        title=peer.title,
        single_p50_ms=ms(single, 50),
        single_p95_ms=ms(single, 95),
        single_ratio=ms(single, 50) / 1000 / bare["session_run"],
        c8_per_s=rate(c8),
        c8_ratio=rate(c8) * bare["session_run"],
        c8_p95_ms=ms(c8, 95),
        c8_refused=c8.refused / max(1, c8.sent),
        c32_per_s=rate(c32),
        c32_ratio=rate(c32) * bare["session_run"],
        c32_p95_ms=ms(c32, 95),
        c32_refused=c32.refused / max(1, c32.sent),
        photo_s=median_s(pooled(runs, "photo")),
        mosaic_s=median_s(pooled(runs, "mosaic")),
        overload_p50_ms=ms(overload, 50),
        overload_p95_ms=ms(overload, 95),
        overload_answered=overload.answered / sent,
        overload_refused=overload.refused / sent,
        overload_timed_out=overload.timed_out / sent,
        errors=dict(sum((pooled(runs, name).errors for name in runs[0]), Counter())),
    )


def cell(value: float, digits: int = 0, suffix: str = "") -> str:
    return "-" if value != value else f"{value:.{digits}f}{suffix}"


def markdown(rows: list[Row], bare: dict[str, float], rate: float, plan: Plan) -> str:
    lines = [
        "Command: `.venv/bin/python benchmarks/peers/bench.py --write docs/performance.md` "
        f"(`make bench-peers`); {plan.rounds} rounds, one server up at a time, a different order each "
        f"round. Bare ONNX Runtime `session.run` on the 360x480 tile: **{1000 * bare['session_run']:.1f} "
        f"ms**; the whole workload in-process (decode, pipeline, encode): {1000 * bare['workload']:.1f} ms. "
        f"Overload: Poisson arrivals at {rate:.1f} requests/s (twice the in-process rate) for "
        f"{plan.overload_s:g} s per round, client timeout {TIMEOUT_S:g} s. Clients honour Retry-After.",
        "",
        "| server | 1 client p50 ms | p95 ms | p50 / bare ORT | 8 clients req/s | / bare ORT | 32 clients "
        "req/s | / bare ORT | 32 clients p95 ms / refused | 4000x3000 photo s | 8192x4096 mosaic s "
        "| overload p95 ms | overload answered / refused / timed out |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.title} | {cell(row.single_p50_ms, 1)} | {cell(row.single_p95_ms, 1)} "
            f"| {cell(row.single_ratio, 2, 'x')} | {cell(row.c8_per_s, 1)} | {cell(row.c8_ratio, 2)} "
            f"| {cell(row.c32_per_s, 1)} | {cell(row.c32_ratio, 2)} "
            f"| {cell(row.c32_p95_ms)} / {cell(100 * row.c32_refused)} % "
            f"| {cell(row.photo_s, 2)} | {cell(row.mosaic_s, 2)} | {cell(row.overload_p95_ms)} "
            f"| {cell(100 * row.overload_answered)} % / {cell(100 * row.overload_refused)} % / "
            f"{cell(100 * row.overload_timed_out)} % |"
        )
    for peer in PEERS:
        if peer.notes and peer.name in {row.name for row in rows}:
            lines.append(f"\n{peer.title}: {peer.notes}")
    if errors := {row.name: row.errors for row in rows if row.errors}:
        lines.append(f"\nOther errors: {errors}")
    if PLOT.exists():
        lines += ["", f"![peers side by side](img/{PLOT.name})"]
    return "\n".join(lines)


def plot(rows: list[Row]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        row.title.rsplit(" ", 1)[0] if row.name not in ("cropseg", "fastapi") else row.name for row in rows
    ]
    panels: list[tuple[str, Callable[[Row], float]]] = [
        ("1 client: p50 / bare ORT (lower is better)", lambda row: row.single_ratio),
        ("32 clients: answers/s / bare ORT rate (higher is better)", lambda row: row.c32_ratio),
        ("overload at 2x: p95 of answered, s (lower is better)", lambda row: row.overload_p95_ms / 1000),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(13, 3.8))
    for axis, (title, value) in zip(axes, panels, strict=True):
        values = [value(row) for row in rows]
        axis.barh(names, values, color=["#c2185b" if row.name == "cropseg" else "#90a4ae" for row in rows])
        axis.invert_yaxis()
        axis.set_title(title, fontsize=9)
        for index, number in enumerate(values):
            axis.text(number, index, f" {number:.2f}", va="center", fontsize=8)
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="one short round: proves every server still runs"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="these servers only (cropseg, fastapi, peers)"
    )
    parser.add_argument("--write", type=Path, help="replace the peers section of this markdown file")
    parser.add_argument("--json", type=Path, default=REPO / "var" / "peers" / "results.json")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    candidates = [CROPSEG, FASTAPI, *PEERS]
    servers = [peer for peer in candidates if not args.only or peer.name in args.only]
    for peer in servers:
        if peer not in (CROPSEG, FASTAPI):
            ensure_venv(peer)  # built once from PyPI; later runs find it up to date
    data = inputs()
    bare_runs: list[dict[str, float]] = []
    runs: dict[str, list[dict[str, Run]]] = {peer.name: [] for peer in servers}
    bare_runs.append(baselines(data.tile, 10 if args.smoke else 50))
    rate = 2 / bare_runs[0]["workload"]
    order = list(servers)
    with tqdm(total=plan.rounds * len(servers), desc="servers", unit="server") as progress:
        for round_index in range(plan.rounds):
            random.Random(round_index).shuffle(order)
            for peer in order:
                progress.set_postfix_str(peer.name)
                runs[peer.name].append(measure(peer, data, plan, rate, seed=round_index))
                progress.update()
            bare_runs.append(baselines(data.tile, 10 if args.smoke else 50))
    bare = {key: statistics.median(run[key] for run in bare_runs) for key in bare_runs[0]}
    rows = [summarise(peer, runs[peer.name], bare) for peer in servers]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {"bare": bare, "rate": rate, "plan": asdict(plan), "rows": [asdict(row) for row in rows]}
    args.json.write_text(json.dumps(record, indent=2))
    if args.write:
        plot(rows)
    text = markdown(rows, bare, rate, plan)
    print(text)
    if args.write:
        replace_section(args.write, START, END, text)
    if failed := [row.name for row in rows if row.single_p50_ms != row.single_p50_ms]:
        print(f"no answer from: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
