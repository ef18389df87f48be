"""Time per megapixel and peak memory of `cropseg segment-raster` on generated orthomosaics,
and the throughput of `cropseg batch` beside it (the capacity plan's inputs).

    .venv/bin/python benchmarks/rasters.py --write docs/batch.md        (make bench-rasters)

Writes field orthomosaics of 2k, 8k and 32k pixels a side (cropseg_batch.fields: RGBA GeoTIFF,
2 cm/px, no data outside the field) to a temporary folder, then segments each in a fresh
process, as a user runs it, and reads that process's peak RSS from the kernel (wait4). The
working scale is fixed (``--scale``, default 0.25, so the 32k raster takes minutes rather than
half an hour on 2 cores): memory must not grow with the raster whatever the scale. Then, at
full resolution, one 4k raster alone and a batch of four through ``cropseg batch`` with two
workers: megapixels per second of a worker, and what a batch adds to it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cropseg_batch.fields import write_field
from cropseg_stack.sections import replace_section
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- rasters:start -->", "<!-- rasters:end -->"
PLAN_START, PLAN_END = "<!-- capacity:start -->", "<!-- capacity:end -->"
SEASON_HA, SEASON_GSD_M = 500, 0.02  # a season's fields, flown at 2 cm per pixel
DAILY_PHOTOS, PHOTO_MP = 2000, 20  # a day of drone photos at 20 MP
VCPU_HOUR_USD = 0.04  # an assumed on-demand price per vCPU-hour: substitute your own
TILE_MP = 512 * 512 / 1e6
SIDES = (2048, 8192, 32768)
CLI = [sys.executable, "-m", "cropseg_batch"]


def run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``command``, run from the repository."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"{' '.join(command[2:])} failed with exit code {code}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def measure(sides: tuple[int, ...], scale: float) -> list[dict[str, float]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="cropseg-rasters-") as folder:
        for side in tqdm(sides, desc="rasters", unit="raster"):
            raster = write_field(Path(folder) / f"field-{side}.tif", side)
            mask = Path(folder) / f"mask-{side}.tif"
            seconds, peak_mib = run([*CLI, "segment-raster", str(raster), str(mask), "--scale", str(scale)])
            megapixels = side * side / 1e6
            rows.append({"side": side, "megapixels": megapixels, "seconds": seconds,
                         "s_per_mp": seconds / megapixels, "peak_mib": peak_mib,
                         "file_mb": raster.stat().st_size / 1e6})  # fmt: skip
            raster.unlink()
    return rows


def throughput(side: int = 4096, rasters: int = 4, workers: int = 2) -> dict[str, float]:
    """Full-resolution megapixels per second: one raster alone, then ``rasters`` in a batch."""
    with tempfile.TemporaryDirectory(prefix="cropseg-batch-") as folder:
        inputs = Path(folder) / "season"
        inputs.mkdir()
        for index in tqdm(range(rasters), desc="batch inputs", unit="raster"):
            write_field(inputs / f"field-{index}.tif", side, seed=index)
        alone, _ = run([*CLI, "segment-raster", str(inputs / "field-0.tif"), str(Path(folder) / "alone.tif")])
        batch, _ = run([*CLI, "batch", str(inputs), "--output", str(Path(folder) / "out"),
                        "--workers", str(workers)])  # fmt: skip
    megapixels = side * side / 1e6
    return {"side": side, "rasters": rasters, "workers": workers, "alone_mp_s": megapixels / alone,
            "batch_mp_s": rasters * megapixels / batch}  # fmt: skip


def markdown(rows: list[dict[str, float]], scale: float, rate: dict[str, float]) -> str:
    smallest = rows[0]["peak_mib"]
    lines = [
        f"Command: `.venv/bin/python benchmarks/rasters.py --write docs/batch.md` (`make bench-rasters`): "
        f"each raster segmented in a fresh process at working scale {scale:g}, {os.cpu_count()} cores.",
        "",
        "| raster | megapixels | GeoTIFF MB | time s | s per MP | peak RSS MiB | vs 2k |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        side = int(row["side"])
        lines.append(
            f"| {side} x {side} | {row['megapixels']:.0f} | {row['file_mb']:.0f} | {row['seconds']:.0f} | "
            f"{row['s_per_mp']:.3f} | {row['peak_mib']:.0f} | {row['peak_mib'] / smallest - 1:+.1%} |"
        )
    lines += [
        "",
        f"At full resolution (scale 1), {int(rate['side'])} px rasters: one alone "
        f"**{rate['alone_mp_s']:.2f} MP/s**; {int(rate['rasters'])} through `cropseg batch` with "
        f"{int(rate['workers'])} workers (folder in and out) **{rate['batch_mp_s']:.2f} MP/s** in all.",
    ]
    return "\n".join(lines)


def capacity(rate: dict[str, float]) -> str:
    """The capacity plan from the measured batch rate of one 2-core machine (one pod's CPU)."""
    pod = rate["batch_mp_s"]
    workloads = {
        f"a season: {SEASON_HA} ha flown at {SEASON_GSD_M * 100:.0f} cm/px, one pass":
            SEASON_HA * 10_000 / SEASON_GSD_M**2 / 1e6,
        f"a day of {DAILY_PHOTOS:,} photos of {PHOTO_MP} MP": DAILY_PHOTOS * PHOTO_MP,
    }  # fmt: skip
    lines = [
        f"One pod of 2 cores segments **{pod:.2f} MP/s** at full resolution through `cropseg batch` "
        f"(measured above), {pod / TILE_MP:.1f} tiles of 512 px a second.",
        "",
        f"| workload | megapixels | pod-hours (2 cores) | with 8 pods | at ${VCPU_HOUR_USD:.2f}/vCPU-h |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, megapixels in workloads.items():
        hours = megapixels / pod / 3600
        lines.append(f"| {name} | {megapixels:,.0f} | {hours:.1f} | {hours / 8:.1f} h | "
                     f"${hours * 2 * VCPU_HOUR_USD:.2f} |")  # fmt: skip
    daily_mp_s = DAILY_PHOTOS * PHOTO_MP / 86_400
    lines += [
        "",
        f"Keeping up with {DAILY_PHOTOS:,} photos a day needs {daily_mp_s:.2f} MP/s sustained: "
        f"{max(1, -(-daily_mp_s // pod)):.0f} pod(s) running all day, or the Indexed Job's `parallelism` "
        "raised for a nightly run. Windows of an orthomosaic that hold no data (outside the field) "
        "are not segmented, so a field's cost follows its area, not its bounding box's.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=0.25, help="working scale of the segmentation")
    parser.add_argument("--sides", type=lambda text: tuple(int(s) for s in text.split(",")), default=SIDES,
                        help="raster sides in pixels, comma-separated")  # fmt: skip
    parser.add_argument("--write", type=Path, help="replace the rasters section of this markdown file")
    args = parser.parse_args()
    rate = throughput()
    table, plan = markdown(measure(args.sides, args.scale), args.scale, rate), capacity(rate)
    print(f"{table}\n\n{plan}")
    if args.write:
        replace_section(args.write, START, END, table)
        replace_section(args.write, PLAN_START, PLAN_END, plan)


if __name__ == "__main__":
    main()
