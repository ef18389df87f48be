"""Peak memory of each service's largest requests, against the chart's memory limits.

    .venv/bin/python benchmarks/memory.py --write docs/performance.md     (make bench-memory)

Starts inference and storage as `make up` does, then sends each route the largest input the
default settings allow (a 40 MP image, a 64 MB Open Inference Protocol request). Before each
request the process's peak RSS (VmHWM) is reset (``/proc/<pid>/clear_refs``), so each row is
that request's own peak, plus what earlier requests left allocated (as in a pod). The limit is
read from charts/cropseg/values.yaml; the budget is 70 % of it. tests/test_memory_contract.py
runs it (``--json``) and fails when a route leaves the budget.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from cropseg_stack.sections import replace_section
from cropseg_storage.settings import FieldUploadSettings
from tqdm import tqdm

from cropseg_core.masks import encode_png
from cropseg_core.processes import free_port, running_service
from cropseg_core.web.limits import MEMORY_COST, MIB
from cropseg_model.synth import generate_tile

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- memory:start -->", "<!-- memory:end -->"
BUDGET = 0.70
MAX_PIXELS = 40_000_000
CONCURRENT_BUDGET = 0.80
CHUNK_BYTES = FieldUploadSettings().max_chunk_bytes
READS = {"picture": "picture", "thumbnail": "picture", "evaluation": "evaluation"}  # route: its cost


def chart_limits_mib(
    components: tuple[str, ...] = ("inference", "storage", "driftMonitor"),
) -> dict[str, int]:
    """Memory limits of the chart's default values, per component (a top-level key of values.yaml,
    the first limits under it), in MiB."""
    values = (REPO / "charts/cropseg/values.yaml").read_text()
    limits = {}
    for component in components:
        block = values.split(f"\n{component}:", 1)[1]
        quantity = re.search(r"limits: \{[^}]*memory: (\d+)(Mi|Gi)", block)
        assert quantity is not None, component
        limits[component] = int(quantity.group(1)) * (1024 if quantity.group(2) == "Gi" else 1)
    return limits


def field_image(pixels: int = MAX_PIXELS) -> np.ndarray:
    """A field-like RGB image of about ``pixels`` (a generated tile repeated: it compresses)."""
    tile = generate_tile(12, 0)[0].rgb
    side = int(np.sqrt(pixels * 4 / 3))
    rows, columns = -(-side * 3 // 4 // tile.shape[0]), -(-side // tile.shape[1])
    image = np.tile(tile, (rows, columns, 1))[: side * 3 // 4, :side]
    return np.ascontiguousarray(image)


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    url: str

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def peak_mib(self) -> int:
        return self._status_mib("VmHWM")

    def rss_mib(self) -> int:
        return self._status_mib("VmRSS")

    def _status_mib(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
        raise RuntimeError(f"no {field}")


@contextmanager
def service(name: str, argv: list[str], ready: str, env: dict[str, str]) -> Iterator[Service]:
    """A service started as `make up` starts it, on a free port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", *argv, "--port", str(port)]
    with running_service(command, url + ready, env=env, cwd=REPO, timeout_s=120) as process:
        yield Service(name, process, url)


@dataclass
class Case:
    service: Service
    route: str
    input: str
    cost: str | None  # what it reserves from the memory budget (cropseg_core.web.limits.MEMORY_COST)
    units: int  # pixels, or body bytes for the OIP routes
    send: Callable[[], httpx.Response]


def forget_kept_pictures(data: Path) -> None:
    """Delete the thumbnails, pictures and overlays storage made and kept."""
    for path in [*data.glob("thumbnails/**/*.*"), *data.glob("masks/**/*.overlay-*.png")]:
        path.unlink()


def measure(progress: bool = True, concurrency: int = 1) -> list[dict[str, object]]:
    """Each route's peak RSS (MiB) for its largest input, alone and ``concurrency`` at once."""
    image = field_image()
    height, width = image.shape[:2]
    png = encode_png(image, compress_level=1)
    label = encode_png((image[..., 1] > 120).astype(np.uint8) * 255, compress_level=1)
    oip_shape = [1, 3200, 3200, 3]  # ~30.7 M values: a 61 MB JSON body, under the 64 MB limit
    oip_json = (
        f'{{"inputs":[{{"name":"image","shape":{json.dumps(oip_shape)},"datatype":"UINT8","data":['
        + ",".join(["0"] * int(np.prod(oip_shape)))
        + ']}],"outputs":[{"name":"vegetation_fraction"}]}'
    ).encode()
    tensor = np.ascontiguousarray(image[:4600, :4600])  # 63.5 MB: the largest under the 64 MB limit
    binary_header = json.dumps({"inputs": [{"name": "image", "shape": [1, *tensor.shape], "datatype": "UINT8",
                                            "parameters": {"binary_data_size": tensor.size}}],
                                "outputs": [{"name": "mask", "parameters": {"binary_data": True}},
                                            {"name": "vegetation_fraction"}]}).encode()  # fmt: skip
    rows: list[dict[str, object]] = []
    env = {"INFERENCE_WARMUP_RUNS": "1", "INFERENCE_LOG_LEVEL": "WARNING", "STORAGE_LOG_LEVEL": "WARNING"}
    mp = f"{height * width / 1e6:.0f} MP"
    with (
        tempfile.TemporaryDirectory() as data,
        service("inference", ["cropseg_inference"], "/readyz", env) as inference,
        service(
            "storage", ["cropseg_storage", "--data", data, "--inference-url", inference.url], "/readyz", env
        ) as storage,
    ):
        client = httpx.Client(timeout=900)
        image_id: dict[str, str] = {}

        def upload() -> httpx.Response:
            files = {"file": ("field.png", png, "image/png"), "label": ("truth.png", label, "image/png")}
            response = client.post(f"{storage.url}/api/v1/images", files=files)
            if response.is_success:  # of sixteen at once, some get 503
                image_id["id"] = response.json()["id"]
            return response

        chunk = b"II*\0" + bytes(CHUNK_BYTES - 4)  # a TIFF's start, then the largest PATCH a client may send

        def upload_chunk() -> httpx.Response:
            """One tus upload of twice the chunk created, and its first chunk sent (not the whole
            file: the route's cost is the chunk's, streamed to disk)."""
            tus = {"Tus-Resumable": "1.0.0"}
            metadata = "filename " + base64.b64encode(b"field.tif").decode()
            created = client.post(f"{storage.url}/api/v1/fields/uploads", headers={
                **tus, "Upload-Length": str(2 * CHUNK_BYTES), "Upload-Metadata": metadata})  # fmt: skip
            created.raise_for_status()
            return client.patch(storage.url + created.headers["location"], content=chunk, headers={
                **tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})  # fmt: skip

        def base() -> str:
            return f"{storage.url}/api/v1/images/{image_id['id']}"

        def read(name: str) -> Callable[[], httpx.Response]:
            return lambda: client.get(f"{base()}/{name}")

        pixels, json_bytes, tensor_bytes = height * width, len(oip_json), tensor.size
        cases = [
            Case(inference, "POST /api/v1/segment (mask PNG, full resolution)", f"{mp} PNG", "segment",
                 pixels, lambda: client.post(f"{inference.url}/api/v1/segment?scale=1", content=png,
                                     headers={"content-type": "image/png"})),
            Case(inference, "POST /api/v1/segment?output=overlay", f"{mp} PNG", "segment-overlay", pixels,
                 lambda: client.post(f"{inference.url}/api/v1/segment?scale=1&output=overlay", content=png,
                                     headers={"content-type": "image/png"})),
            Case(inference, "POST /v2/.../infer (JSON data)", "[1,3200,3200,3], 61 MB JSON", "tensor-json",
                 json_bytes,
                 lambda: client.post(f"{inference.url}/v2/models/cropseg-unet/infer", content=oip_json)),
            Case(inference, "POST /v2/.../infer (binary tensors)", "[1,4600,4600,3], 64 MB, binary mask out",
                 "tensor", tensor_bytes,
                 lambda: client.post(f"{inference.url}/v2/models/cropseg-unet/infer",
                                     content=binary_header + tensor.tobytes(),
                                     headers={"inference-header-content-length": str(len(binary_header))})),
            Case(storage, "POST /api/v1/images (+ label)", f"{mp} PNG + mask", "upload", pixels, upload),
            Case(storage, "POST /api/v1/images/{id}/segmentation", f"{mp}", None, pixels,
                 lambda: client.post(f"{base()}/segmentation?scale=1")),
            Case(storage, "GET /api/v1/images/{id}/overlay (first: made and kept)", f"{mp}", "overlay",
                 pixels, lambda: client.get(f"{base()}/overlay")),
            *(Case(storage, f"GET /api/v1/images/{{id}}/{name}", mp, cost, pixels, read(name))
              for name, cost in READS.items()),
            # last: 16 chunks of 32 MiB at once leave the heap larger for whatever comes after
            Case(storage, "PATCH /api/v1/fields/uploads/{id} (tus chunk)", "32 MiB of a GeoTIFF", None,
                 CHUNK_BYTES, upload_chunk),
        ]  # fmt: skip
        limits = chart_limits_mib()
        for case in tqdm(cases, desc="largest requests", unit="route", disable=not progress):
            target, limit = case.service, limits[case.service.name]
            target.reset_peak()
            before = target.rss_mib()
            started = time.perf_counter()
            response = case.send()
            seconds = time.perf_counter() - started
            if response.status_code >= 400:
                raise RuntimeError(f"{case.route}: {response.status_code} {response.text[:300]}")
            peak = target.peak_mib()
            row: dict[str, object] = {
                "service": target.name, "route": case.route, "input": case.input, "before_mib": before,
                "peak_mib": peak, "limit_mib": limit, "budget_mib": round(BUDGET * limit),
                "share": peak / limit, "seconds": seconds, "cost": case.cost,
                "estimate_mib": round(MEMORY_COST[case.cost] * case.units / MIB) if case.cost else None,
            }  # fmt: skip
            if concurrency > 1:
                forget_kept_pictures(Path(data))  # each of them makes its picture again: the worst case
                target.reset_peak()
                with ThreadPoolExecutor(concurrency) as pool:
                    statuses = list(
                        pool.map(lambda _, send=case.send: send().status_code, range(concurrency))
                    )
                peak = target.peak_mib()
                unexpected = sorted({status for status in statuses if status not in (200, 201, 204, 503)})
                if unexpected:
                    raise RuntimeError(f"{case.route} x{concurrency}: answered {unexpected}")
                row |= {"concurrent_peak_mib": peak, "concurrent_share": peak / limit,
                        "concurrent_budget_mib": round(CONCURRENT_BUDGET * limit),
                        "answered": sum(status < 400 for status in statuses),
                        "refused": statuses.count(503)}  # fmt: skip
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, object]], concurrency: int) -> str:
    concurrent = concurrency > 1
    lines = [
        f"Command: `.venv/bin/python benchmarks/memory.py --concurrency {concurrency} --write "
        "docs/performance.md` (`make bench-memory`): each service started fresh as `make up` starts it, its "
        f"peak RSS (VmHWM) reset before each request. Budget: {BUDGET:.0%} of the chart's memory limit "
        "for one request"
        + (f", {CONCURRENT_BUDGET:.0%} for {concurrency} at once (the kept pictures deleted first, so that "
           "each of them must make its picture)." if concurrent else ".")
        + " Estimate: what the route reserves from the process's memory budget before it allocates.",
        "",
        "| service | route | largest input | estimate MiB | peak RSS MiB | chart limit MiB | share | s |"
        + (f" {concurrency} at once: peak MiB | share | answered / 503 |" if concurrent else ""),
        "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if concurrent else ""),
    ]  # fmt: skip
    for row in rows:
        line = (
            f"| {row['service']} | {row['route']} | {row['input']} | {row['estimate_mib'] or '-'} | "
            f"{row['peak_mib']} | {row['limit_mib']} | {row['share']:.0%} | {row['seconds']:.1f} |"
        )
        if concurrent:
            line += (
                f" {row['concurrent_peak_mib']} | {row['concurrent_share']:.0%} | "
                f"{row['answered']} / {row['refused']} |"
            )
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", type=Path, help="replace the memory section of this markdown file")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON (the contract test reads it)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests at once, after each one alone")
    args = parser.parse_args()
    rows = measure(progress=args.json is None, concurrency=args.concurrency)
    table = markdown(rows, args.concurrency)
    print(table)
    if args.write:
        replace_section(args.write, START, END, table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
