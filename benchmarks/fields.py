"""The field view's targets (issue 32), measured in one run on one generated orthomosaic.

    .venv/bin/python benchmarks/fields.py --write docs/batch.md      (make bench-fields; ~1 h at 2 GB)
    .venv/bin/python benchmarks/fields.py --side 4000                (a quick look, ~3 min)

1. A field GeoTIFF of ``--side`` px a side is written (cropseg_batch.fields: RGBA, 2 cm pixels,
   no compression: 22,400 px is a 2.0 GB file).
2. Storage and a field worker run as ``make up`` runs them (fresh processes, default settings).
3. Headless Chromium uploads the file through the Fields page. Half way, the tab is reloaded
   (the connection cut) and the same file chosen again: the upload must go on from where the
   server was, not start over. What the server received in all comes from its own metric.
4. The page's "Segment it once uploaded" starts the segmentation; the worker's time (claim to
   done, results stored) and MP/s come from the job.
5. ``cropseg segment-raster`` on the same file: the worker's time over the command's, the same
   code with the checkpoints, progress writes and result uploads the worker adds.
6. The field's page opened anew: time to the map's first paint (its image decoded, its cells drawn).

Peak RSS of storage and of the worker is the kernel's (VmHWM), against their chart memory limits
(70 % is the budget, as for every route: docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from cropseg_batch.fields import write_field
from cropseg_stack.sections import publish
from memory import chart_limits_mib
from playwright.sync_api import sync_playwright

from cropseg_core.processes import free_port, running_service, stop

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "model" / "artifacts" / "cropseg-unet.onnx"
CHROMIUM = "/usr/bin/chromium"
START, END = "<!-- fields:start -->", "<!-- fields:end -->"
CUT_AT = 50.0
"""Percent of the upload at which the tab is reloaded."""


def peak_rss_mib(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match[1]) / 1024 if match else float("nan")


def received_bytes(client: httpx.Client) -> float:
    """Bytes of field uploads storage has received so far (its own counter)."""
    text = client.get("/metrics").text
    match = re.search(r"^cropseg_storage_field_upload_received_bytes_total (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def upload_with_a_cut(page: Any, url: str, source: Path, client: httpx.Client) -> dict[str, Any]:
    """Upload ``source`` through the Fields page, reloading the tab at CUT_AT percent."""
    page.goto(f"{url}/#/fields")
    page.fill("#field-name", "benchmark field")
    started = time.perf_counter()
    page.set_input_files("#field-file", str(source))
    page.wait_for_function(f"() => document.querySelector('#field-upload-bar').value >= {CUT_AT}", timeout=0)
    page.reload()  # the upload's connection goes with the page
    at_cut = received_bytes(client)
    page.set_input_files("#field-file", str(source))
    page.wait_for_function("() => /Uploaded/.test(document.querySelector('#field-upload-text').textContent)",
                           timeout=0)  # fmt: skip
    seconds = time.perf_counter() - started
    page.wait_for_url(re.compile(r".*#/fields/[0-9a-f]{32}$"))
    size = source.stat().st_size
    total = received_bytes(client)
    return {"seconds": seconds, "mb_per_s": size / 1e6 / seconds, "received_at_cut_share": at_cut / size,
            "received_again_mib": (total - size) / 2**20, "field_id": page.url.rsplit("/", 1)[1]}  # fmt: skip


def segmented(client: httpx.Client, field_id: str) -> dict[str, Any]:
    """The field's job once over."""
    while True:
        job = client.get(f"/api/v1/fields/{field_id}").json()["job"]
        if job and job["status"] not in ("queued", "segmenting"):
            if job["status"] != "done":
                raise SystemExit(f"the segmentation ended {job['status']}: {job.get('error')}")
            return dict(job)
        time.sleep(2)


def first_paint_ms(browser: Any, url: str, field_id: str) -> float:
    """Milliseconds from navigation to the map's image decoded and its cells drawn."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{url}/#/fields/{field_id}")
    page.wait_for_function(
        "() => { const image = document.querySelector('#field-map img.leaflet-image-layer');"
        " return image && image.complete && image.naturalWidth > 0"
        " && document.querySelector('#field-map .leaflet-overlay-pane path, #field-map canvas'); }",
        timeout=60_000,
    )
    ms = float(page.evaluate("() => performance.now()"))
    page.close()
    return ms


def command_seconds(source: Path, folder: Path) -> float:
    """segment_raster's own time for ``source`` through ``cropseg segment-raster``."""
    report = folder / "cli-report.json"
    subprocess.run(
        [sys.executable, "-m", "cropseg_batch", "segment-raster", str(source), str(folder / "cli-mask.tif"),
         "--model", str(MODEL), "--report", str(report)],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return float(json.loads(report.read_text())["seconds"])


def measure(side: int, chunk_mib: int, folder: Path) -> dict[str, Any]:
    source = write_field(folder / "field.tif", side, compress=None)
    data, port = folder / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    storage = [sys.executable, "-m", "cropseg_storage", "--port", str(port), "--data", str(data)]
    environment = {"STORAGE_LOG_LEVEL": "WARNING", "STORAGE_FIELDS__MAX_CHUNK_BYTES": str(chunk_mib * 2**20)}
    with ExitStack() as stack:
        service = stack.enter_context(running_service(storage, f"{url}/healthz", env=environment, cwd=REPO))
        worker = subprocess.Popen(
            [sys.executable, "-m", "cropseg_batch", "field-worker", "--store", str(data), "--work",
             str(folder / "work"), "--model", str(MODEL)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        stack.callback(stop, worker)
        client = stack.enter_context(httpx.Client(base_url=url, timeout=60))
        playwright = stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        stack.callback(browser.close)
        upload = upload_with_a_cut(browser.new_page(), url, source, client)
        job = segmented(client, upload["field_id"])
        paint = first_paint_ms(browser, url, upload["field_id"])
        storage_peak, worker_peak = peak_rss_mib(service.pid), peak_rss_mib(worker.pid)
    worker_s = (
        datetime.fromisoformat(job["finished"]) - datetime.fromisoformat(job["started"])
    ).total_seconds()
    cli_s = command_seconds(source, folder)
    limits = chart_limits_mib(("storage", "fields"))
    return {
        "side": side, "chunk_mib": chunk_mib, "file_gb": source.stat().st_size / 1e9,
        "megapixels": side * side / 1e6,
        "upload": upload, "worker_s": worker_s, "worker_mp_s": job["megapixels_per_s"], "cli_s": cli_s,
        "worker_to_cli": worker_s / cli_s, "first_paint_ms": paint,
        "storage_peak_mib": storage_peak, "storage_limit_mib": limits["storage"],
        "worker_peak_mib": worker_peak, "worker_limit_mib": limits["fields"],
    }  # fmt: skip


def table(result: dict[str, Any]) -> str:
    upload = result["upload"]
    storage, worker = result["storage_peak_mib"], result["worker_peak_mib"]
    chunks = f" --chunk-mib {result['chunk_mib']}" if result["chunk_mib"] != 32 else ""
    storage_limit, worker_limit = result["storage_limit_mib"], result["worker_limit_mib"]
    rows = [
        ("Upload through the browser", f"{upload['seconds']:.0f} s ({upload['mb_per_s']:.0f} MB/s), the tab "
         f"reloaded at {upload['received_at_cut_share']:.0%}: {upload['received_again_mib']:.1f} MiB sent "
         "again", "resumes, not from zero"),
        ("Storage peak RSS", f"{storage:.0f} MiB, {storage / storage_limit:.0%} of its {storage_limit} MiB "
         "limit", "≤ 70 %"),
        ("Worker peak RSS", f"{worker:.0f} MiB, {worker / worker_limit:.0%} of its {worker_limit} MiB limit",
         "≤ 70 %"),
        ("Background segmentation", f"{result['worker_s']:.0f} s ({result['worker_mp_s']:.2f} MP/s)", ""),
        ("`cropseg segment-raster`, same file", f"{result['cli_s']:.0f} s: worker / command = "
         f"{result['worker_to_cli']:.2f}", "≤ 1.10"),
        ("Map's first paint", f"{result['first_paint_ms']:.0f} ms", "≤ 2,000 ms"),
    ]  # fmt: skip
    lines = [
        f"Command: `.venv/bin/python benchmarks/fields.py --side {result['side']}{chunks} --write "
        "docs/batch.md`: a "
        f"{result['side']:,} px field ({result['megapixels']:.0f} MP, {result['file_gb']:.2f} GB "
        "uncompressed GeoTIFF), 2 cores, storage and worker as `make up` runs them.",
        "",
        "| what | measured | target |",
        "|---|---|---|",
        *(f"| {what} | {measured} | {target} |" for what, measured, target in rows),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=22_400, help="pixels a side (22,400: a 2.0 GB file)")
    parser.add_argument(
        "--chunk-mib", type=int, default=32, help="largest tus chunk storage takes (default 32)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--write", type=Path, help="replace the fields section of this markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cropseg-fields-") as folder:
        result = measure(args.side, args.chunk_mib, Path(folder))
    publish(table(result), result, args.json, args.write, START, END)


if __name__ == "__main__":
    main()
