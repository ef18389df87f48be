"""``cropseg``: whole fields from the command line.

    cropseg segment-raster field.tif field.mask.tif          # an orthomosaic, window by window
    cropseg cover field.mask.tif --cell-m 20 --zones 5       # its cover grid again, another way
    cropseg batch s3://bucket/season --output s3://bucket/season-masks --workers 4
    cropseg batch s3://bucket/season --output ... --shard 3/8  # one worker (an Indexed Job pod)
    cropseg field-worker --store var/storage                  # segment the fields storage queues
    cropseg field-worker --store s3://bucket/cropseg --field ID  # one field (a Kubernetes Job's pod)

Errors a user can fix end with ``cropseg: error: ...`` and exit code 2; a batch that stopped
on a storage error exits 1 and resumes when run again. ``field-worker --field`` exits 0 when the
field's job is done or cancelled (or there was nothing to do), 1 when it failed, 143 when SIGTERM
stopped it (the job is queued again, to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from cropseg_batch.batch import BatchError, Options, open_location, run_local, run_shard
from cropseg_batch.cover import MAX_ZONES, MIN_ZONES, CoverError, CoverOptions, CoverSummary, recompute
from cropseg_batch.field_worker import FieldWorker
from cropseg_batch.raster import CHECKPOINT_EVERY_S, WINDOW, RasterError, segment_raster
from cropseg_batch.zones import METHODS
from cropseg_core.bands import LAYOUTS, LayoutError
from cropseg_core.fields import FieldNotFoundError, check_field_id
from cropseg_core.log import configure_logging
from cropseg_core.memory import release_large_allocations
from cropseg_core.model import LoadedModel
from cropseg_core.pipeline import ScaleError

DEFAULT_MODEL = Path(os.environ.get("CROPSEG_MODEL", "model/artifacts/cropseg-unet.onnx"))
STOPPED = 128 + signal.SIGTERM


def _bands(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"--bands takes band numbers from 1, e.g. 3,2,1 (got {text!r})"
        ) from e


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise argparse.ArgumentTypeError(
            f"--shard is INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/4 (got {text!r})"
        )
    return int(index), int(count)


def _segmenting(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", default="rgb", choices=sorted(LAYOUTS), help="sensor layout of the bands")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--gsd-mm", type=float, help="ground sampling distance in mm per pixel (default: from "
                       "the raster's georeference, else measured)")  # fmt: skip
    scale.add_argument("--scale", type=float, help="working scale, 1/16 to 1, instead of --gsd-mm")
    _grid(parser)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the ONNX model (CROPSEG_MODEL)")


def _grid(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cell-m", type=float, default=10.0, help="grid cell side for the cover, metres (default 10)"
    )
    parser.add_argument(
        "--zones",
        type=int,
        default=3,
        help=f"zones of cover to classify cells into, {MIN_ZONES} to {MAX_ZONES} (default 3)",
    )
    parser.add_argument("--zone-method", default="jenks", choices=METHODS,
                        help="natural breaks (jenks, the default) or equal area (quantile)")  # fmt: skip


def _endpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3 endpoint (SeaweedFS, MinIO...); default AWS_ENDPOINT_URL or AWS",
    )  # fmt: skip


def _window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=int, default=WINDOW,
                        help="largest window read, margins included, in px (a multiple of 512)")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="cropseg", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = root.add_subparsers(dest="command", required=True)

    raster = commands.add_parser("segment-raster", help="segment a GeoTIFF orthomosaic in bounded memory",
                                 description="Writes OUT (a Cloud-Optimised GeoTIFF mask: 0 soil, 1 "
                                 "vegetation, 255 no data), OUT's .cover.csv, .cover.geojson, .cover.gpkg "
                                 "(cover, zone per cell), .cell-counts.tif and .preview.png.")  # fmt: skip
    raster.add_argument("source", type=Path, help="the raster (GeoTIFF or TIFF, 8-bit bands)")
    raster.add_argument("output", type=Path, help="the mask to write (.tif)")
    _segmenting(raster)
    raster.add_argument("--bands", type=_bands, help="raster bands (from 1) holding the layout's "
                        "channels, e.g. 3,2,1,5 for rgbn from a B,G,R,RedEdge,NIR camera; default: all "
                        "but alpha")  # fmt: skip
    _window(raster)
    raster.add_argument("--report", type=Path, help="also write what was done as JSON")
    raster.add_argument("--resume-dir", type=Path, help="keep a checkpoint here (every 20 s and on Ctrl-C): "
                        "the same command run again resumes where it stopped")  # fmt: skip

    cover = commands.add_parser(
        "cover", help="the cover grid of a segmented raster again, at another cell size or zoning",
        description="Rewrites MASK's .cover.csv/.cover.geojson/.cover.gpkg from the .cell-counts.tif "
        "segment-raster kept, without segmenting again: --cell-m must be a whole multiple of its cells "
        "(1 m when the run's cells were 1 m or more).",
    )  # fmt: skip
    cover.add_argument("mask", type=Path, help="the mask segment-raster wrote (.tif)")
    _grid(cover)
    cover.add_argument("--report", type=Path, help="also write the grid's summary as JSON")

    batch = commands.add_parser("batch", help="segment every image and raster under an S3 prefix or folder")
    batch.add_argument("source", help="s3://bucket/prefix or a folder")
    batch.add_argument("--output", required=True, help="s3://bucket/prefix or a folder for the results")
    _endpoint(batch)
    where = batch.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    where.add_argument("--shard", type=_shard, help="run only worker INDEX of COUNT (an Indexed Job's pod)")
    batch.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime threads per worker (0: one per core)"
    )
    _segmenting(batch)

    worker = commands.add_parser(
        "field-worker", help="segment the fields storage queues (the web UI's Fields page)",
        description="Claims the fields whose job.json is queued in the store, segments them as "
        "segment-raster does, with progress in job.json, checkpoints under --work (a rerun resumes) and "
        "the results under fields/<id>/result/. SIGTERM stops at the next window and queues the job again.",
    )  # fmt: skip
    store = os.environ.get("CROPSEG_FIELD_STORE")
    worker.add_argument(
        "--store", default=store, required=store is None,
        help="storage's store: a folder or s3://bucket/prefix (CROPSEG_FIELD_STORE)",
    )  # fmt: skip
    _endpoint(worker)
    worker.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the ONNX model (CROPSEG_MODEL)")
    worker.add_argument("--work", type=Path, default=None,
                        help="checkpoints and downloaded GeoTIFFs (CROPSEG_FIELD_WORK; default under the "
                        "system's temp folder)")  # fmt: skip
    worker.add_argument("--field", default=os.environ.get("FIELD_ID") or None,
                        help="run this field's job and exit (FIELD_ID; a Kubernetes Job's pod); default: "
                        "poll for queued fields until stopped")  # fmt: skip
    worker.add_argument("--poll-s", type=float, default=2.0, help="seconds between looks for queued fields")
    worker.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: one per core)")
    _window(worker)
    worker.add_argument("--checkpoint-s", type=float, default=CHECKPOINT_EVERY_S,
                        help="seconds between checkpoints of a field's run")  # fmt: skip
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    release_large_allocations()
    quiet = "INFO" if args.command == "field-worker" else "WARNING"  # a worker logs each field
    configure_logging(os.environ.get("CROPSEG_LOG_LEVEL", quiet), "text")
    try:
        if args.command == "segment-raster":
            return _segment_raster(args)
        if args.command == "cover":
            return _cover(args)
        if args.command == "field-worker":
            return _field_worker(args)
        return _batch(args)
    except (
        RasterError, CoverError, LayoutError, ScaleError, BatchError, FileNotFoundError, FieldNotFoundError
    ) as e:  # fmt: skip
        print(f"cropseg: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, BatchError) else 2


def _load(args: argparse.Namespace, threads: int = 0) -> LoadedModel:
    if not args.model.is_file():
        raise FileNotFoundError(f"no model at {args.model}: pass --model or set CROPSEG_MODEL")
    return LoadedModel.load(args.model, intra_op_threads=threads)


def _cover_options(args: argparse.Namespace) -> CoverOptions:
    return CoverOptions(cell_m=args.cell_m, zones=args.zones, zone_method=args.zone_method)


def _segment_raster(args: argparse.Namespace) -> int:
    cover = _cover_options(args)  # a bad value fails before the model loads
    if not args.source.is_file():
        raise FileNotFoundError(f"no raster at {args.source}")
    report = segment_raster(
        args.source, args.output, _load(args), layout=args.layout, bands=args.bands, gsd_mm=args.gsd_mm,
        scale=args.scale, cover=cover, window=args.window, progress=True, checkpoint=args.resume_dir,
    )  # fmt: skip
    print(f"{report.width} x {report.height} px, working scale {report.working_scale:g}: vegetation "
          f"{report.vegetation_fraction:.1%} of the field ({report.data_fraction:.0%} of the raster has "
          f"data), {report.seconds:.1f} s ({report.megapixels_per_s:.2f} MP/s)")  # fmt: skip
    if report.cover:
        _print_zones(report.cover)
    _print_outputs(report.outputs)
    if args.report:
        args.report.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return 0


def _cover(args: argparse.Namespace) -> int:
    summary, outputs = recompute(args.mask, _cover_options(args))
    _print_zones(summary)
    _print_outputs(outputs)
    if args.report:
        args.report.write_text(json.dumps(asdict(summary), indent=1) + "\n")
    return 0


def _print_zones(summary: CoverSummary) -> None:
    print(f"{summary.cells} cells of {summary.cell_m:g} m in {len(summary.zones)} zones "
          f"({summary.zone_method}), vegetation cover:")  # fmt: skip
    for zone in summary.zones:
        print(f"  zone {zone.zone}  {zone.min_cover:6.1%} to {zone.max_cover:6.1%}, mean "
              f"{zone.mean_cover:6.1%}: {zone.cells} cells, {zone.area_m2:,.0f} m²")  # fmt: skip


def _print_outputs(outputs: dict[str, str]) -> None:
    for name, path in outputs.items():
        print(f"  {name:<14} {path}")


def _batch(args: argparse.Namespace) -> int:
    options = Options(args.layout, args.gsd_mm, args.scale, _cover_options(args))
    if args.shard is not None:
        index, count = args.shard
        source, output = (
            open_location(args.source, args.endpoint_url),
            open_location(args.output, args.endpoint_url),
        )
        records = run_shard(source, output, _load(args, args.threads), options, index, count)
        failed = sum(record["status"] == "failed" for record in records)
        print(f"shard {index}/{count}: {len(records)} inputs, {failed} failed")
        return 0
    if args.workers < 1:
        raise BatchError(f"--workers must be at least 1 (got {args.workers})")
    _load(args)  # a missing model fails here, not in every worker
    with tqdm(desc="batch", unit="file") as bar:

        def show(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        summary, codes = run_local(
            args.source, args.output, options, workers=args.workers, model_path=args.model,
            endpoint_url=args.endpoint_url, on_progress=show,
        )  # fmt: skip
    if summary is None:
        raise BatchError(
            f"workers exited with {codes}; finished files are kept: run the same command to resume"
        )
    print(f"{summary['inputs']} inputs: {summary['ok']} ok, {summary['failed']} failed; summary at "
          f"{args.output.rstrip('/')}/summary.json and summary.csv")  # fmt: skip
    for row in summary["files"]:
        if row["status"] == "failed":
            print(f"  failed: {row['key']}: {row['error']}")
    return 0


def _default_work() -> Path:
    """CROPSEG_FIELD_WORK, else a folder in the system's temp folder: found when the worker starts,
    not on import (a read-only container has no temp folder for ``--help``)."""
    return Path(os.environ.get("CROPSEG_FIELD_WORK") or Path(tempfile.gettempdir()) / "cropseg-fields")


def _field_worker(args: argparse.Namespace) -> int:
    store = open_location(args.store, args.endpoint_url)
    if args.field is not None:
        check_field_id(args.field)
    worker = FieldWorker(
        store, _load(args, args.threads), args.work or _default_work(), window=args.window,
        checkpoint_every_s=args.checkpoint_s,
    )  # fmt: skip
    for stop in (signal.SIGTERM, signal.SIGINT):  # finish the window, keep the checkpoint, requeue
        signal.signal(stop, lambda number, frame: worker.stopping.set())
    if args.field is None:
        worker.poll(args.poll_s)
        return 0
    outcome = worker.run(args.field, take_segmenting=True)
    return {"failed": 1, "queued": STOPPED}.get(outcome or "", 0)


if __name__ == "__main__":
    sys.exit(main())
