"""A season at once: every image and raster under a prefix, segmented by N workers that can
be killed and restarted at any time without losing or redoing finished work.

The input and the output are S3 prefixes (``s3://bucket/prefix``) or local folders (core's
:class:`~cropseg_core.store.BlobStore`: the same operations on both). Under the output::

    manifest.json                 the inputs (key, size), fixed by the batch's first start
    outputs/<sha256>/...          what one input's content gave: mask, preview, cover files
                                  and cell counts, and result.json last, the commit point
    files/<sha256 of key>.json    per input: status (ok or failed), content hash, timings, error
    shards/<i>-of-<n>.json        worker i of n went through its share
    summary.json, summary.csv     every input's status, cover and timings, once all shards are done

Worker ``i`` of ``n`` takes the manifest's entries ``i, i + n, i + 2n, ...`` (in a Kubernetes
Indexed Job ``i`` is the pod's completion index). An input whose record says ok is skipped
without being downloaded; one whose content already has a result.json (a rerun, or the same
bytes under two keys) is not computed again. Outputs are keyed by the input's content hash
and written whole (an S3 PUT is atomic; folders write beside and rename), so a worker killed
halfway leaves at most outputs without their result.json, which the next run writes again,
byte for byte the same. A file that cannot be read is recorded as failed and the batch goes
on; a storage error is retried with backoff, then stops the worker with what it has finished
kept.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cropseg_batch.cover import CoverOptions
from cropseg_batch.raster import OUTPUT_FILES, PREVIEW_SIDE, RasterError, segment_raster
from cropseg_core.bands import LayoutError, get_layout, picture
from cropseg_core.imaging import ImageDecodeError, decode_channels
from cropseg_core.masks import encode_png, overlay
from cropseg_core.model import LoadedModel
from cropseg_core.pipeline import ScaleError
from cropseg_core.store import (
    BlobNotFoundError,
    BlobStore,
    InvalidKeyError,
    S3Settings,
    StoreError,
    encode_json,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RASTER_SUFFIXES = (".tif", ".tiff")
ATTEMPTS = 5
FIRST_WAIT_S = 0.5
SUMMARY_COLUMNS = ("key", "status", "vegetation_fraction", "seconds", "sha256", "reused", "error")


class BatchError(RuntimeError):
    """The batch cannot go on (storage unreachable after retries, a bad location); what is
    finished stays, and running the same command again resumes."""


@dataclass(frozen=True)
class Options:
    """How every input of a batch is segmented."""

    layout: str = "rgb"
    gsd_mm: float | None = None
    scale: float | None = None
    cover: CoverOptions = field(default_factory=CoverOptions)

    def to_args(self) -> list[str]:
        args = ["--layout", self.layout, "--cell-m", str(self.cover.cell_m), "--zones", str(self.cover.zones),
                "--zone-method", self.cover.zone_method]  # fmt: skip
        if self.gsd_mm is not None:
            args += ["--gsd-mm", str(self.gsd_mm)]
        if self.scale is not None:
            args += ["--scale", str(self.scale)]
        return args


def open_location(url: str, endpoint_url: str | None = None) -> BlobStore:
    """``s3://bucket/prefix`` (endpoint: ``endpoint_url``, else AWS or AWS_ENDPOINT_URL) or a folder."""
    if url.startswith("s3://"):
        from cropseg_core.store.s3 import S3Store

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if not bucket:
            raise BatchError(f"{url!r} names no bucket: write s3://bucket/prefix")
        try:
            settings = S3Settings(
                endpoint_url=endpoint_url, bucket=bucket, prefix=f"{prefix}/" if prefix else ""
            )
        except ValueError as e:
            raise BatchError(f"{url!r} is not a usable S3 location: {e}") from e
        return S3Store(settings)
    from cropseg_core.store.filesystem import FilesystemStore

    try:
        return FilesystemStore(Path(url))
    except StoreError as e:
        raise BatchError(str(e)) from e


def retrying(action: Callable[[], T], what: str) -> T:
    """``action()``, retried with exponential backoff on storage errors."""
    for attempt in range(ATTEMPTS):
        try:
            return action()
        except (BlobNotFoundError, InvalidKeyError):  # not transient: retrying cannot help
            raise
        except StoreError as e:
            if attempt == ATTEMPTS - 1:
                raise BatchError(
                    f"{what} failed {ATTEMPTS} times ({e}); everything finished so far is kept: run the "
                    "same command again to resume"
                ) from e
            wait = FIRST_WAIT_S * 2**attempt
            log.warning("%s failed (%s); retrying in %.1f s", what, e, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def plan(source: BlobStore, output: BlobStore) -> dict[str, Any]:
    """The batch's manifest: made from the input's listing by the first start, read after."""
    with contextlib.suppress(BlobNotFoundError):
        return retrying(lambda: output.get_json("manifest.json"), "reading the manifest")
    blobs = retrying(lambda: source.list_blobs(), "listing the input")
    files = [
        {"key": blob.key, "size": blob.size}
        for blob in blobs
        if blob.key.lower().endswith(IMAGE_SUFFIXES + RASTER_SUFFIXES)
    ]
    manifest = {"source": source.describe(), "files": files}
    created = retrying(
        lambda: output.put_if_absent("manifest.json", encode_json(manifest)), "writing the manifest"
    )
    if not created:  # another worker was first: take its manifest
        return retrying(lambda: output.get_json("manifest.json"), "reading the manifest")
    return manifest


def run_shard(
    source: BlobStore,
    output: BlobStore,
    model: LoadedModel,
    options: Options,
    index: int,
    count: int,
) -> list[dict[str, Any]]:
    """Worker ``index`` of ``count``: its share of the manifest; then the summary when every
    shard is done. Returns the records of its share."""
    if not 0 <= index < count:
        raise BatchError(f"shard {index} of {count} does not exist: the index must be 0 to {count - 1}")
    manifest = plan(source, output)
    records = []
    for entry in manifest["files"][index::count]:
        record_key = f"files/{_digest(entry['key'].encode())}.json"
        with contextlib.suppress(BlobNotFoundError):
            done = retrying(partial(output.get_json, record_key), f"reading {record_key}")
            if done.get("status") == "ok":
                records.append(done)
                continue
        record = process(source, output, model, options, entry)
        retrying(partial(output.put_json, record_key, record), f"writing {record_key}")
        records.append(record)
    retrying(
        lambda: output.put_json(f"shards/{index}-of-{count}.json", {"files": len(records)}),
        "writing the shard mark",
    )
    if all(output.exists(f"shards/{i}-of-{count}.json") for i in range(count)):
        summarize(output, manifest)
    return records


def process(
    source: BlobStore, output: BlobStore, model: LoadedModel, options: Options, entry: dict[str, Any]
) -> dict[str, Any]:
    """Segment one input into its outputs, unless its content has them already."""
    key = entry["key"]
    started = time.perf_counter()
    record: dict[str, Any] = {"key": key, "size": entry["size"]}
    with tempfile.TemporaryDirectory(prefix="cropseg-batch-") as folder:
        local = Path(folder) / ("input" + Path(key).suffix.lower())
        try:
            retrying(lambda: source.download(key, local), f"downloading {key}")
        except BlobNotFoundError:
            return record | {"status": "failed", "error": f"{key} is no longer in the input", "seconds": 0.0}
        except InvalidKeyError:
            error = (f"the key {key!r} has characters cropseg does not read (it takes letters, digits and "
                     "- _ . = /): rename the file")  # fmt: skip
            return record | {"status": "failed", "error": error, "seconds": 0.0}
        digest = _file_digest(local)
        result_key = f"outputs/{digest}/result.json"
        record["sha256"] = digest
        try:
            result = retrying(lambda: output.get_json(result_key), f"reading {result_key}")
            record["reused"] = True
        except BlobNotFoundError:
            try:
                result, files = _segment(local, Path(folder) / "out", model, options)
            except (RasterError, ImageDecodeError, LayoutError, ScaleError) as e:
                seconds = round(time.perf_counter() - started, 3)
                return record | {"status": "failed", "error": str(e), "seconds": seconds}
            for name, path in files.items():
                target = f"outputs/{digest}/{name}"
                retrying(partial(output.upload, target, path), f"writing {target}")
            result["outputs"] = {name: f"outputs/{digest}/{name}" for name in files}
            retrying(lambda: output.put_json(result_key, result), f"writing {result_key}")
            record["reused"] = False
    record.update(
        status="ok",
        vegetation_fraction=result["vegetation_fraction"],
        outputs=result["outputs"],
        warnings=result.get("warnings", []),
        seconds=round(time.perf_counter() - started, 3),
    )
    return record


def _segment(
    path: Path, folder: Path, model: LoadedModel, options: Options
) -> tuple[dict[str, Any], dict[str, Path]]:
    """(result, files by output name) of one downloaded input. Nothing time- or place-dependent
    goes into either: a rerun writes the same bytes."""
    folder.mkdir()
    if path.suffix in RASTER_SUFFIXES:
        report = segment_raster(
            path, folder / "mask.tif", model, layout=options.layout, gsd_mm=options.gsd_mm,
            scale=options.scale, cover=options.cover,
        )  # fmt: skip
        files = {OUTPUT_FILES[kind]: Path(local) for kind, local in report.outputs.items()}
        run_dependent = ("source", "outputs", "seconds", "megapixels_per_s")
        result = {"kind": "raster", **{k: v for k, v in report.to_json().items() if k not in run_dependent}}
        return result, files
    layout = get_layout(options.layout)
    channels = decode_channels(path.read_bytes()).pixels
    segmentation = model.run(channels, layout, gsd_mm=options.gsd_mm, scale=options.scale)
    (folder / "mask.png").write_bytes(encode_png(segmentation.mask))
    step = max(1, -(-max(segmentation.height, segmentation.width) // PREVIEW_SIDE))
    shown = np.ascontiguousarray(picture(channels, layout)[::step, ::step])
    (folder / "preview.png").write_bytes(
        encode_png(overlay(shown, segmentation.mask[::step, ::step], in_place=True))
    )
    result = {
        "kind": "image", "width": segmentation.width, "height": segmentation.height, "layout": layout.name,
        "working_scale": round(segmentation.scale, 6),
        "vegetation_fraction": segmentation.vegetation_fraction, "warnings": [],
    }  # fmt: skip
    return result, {"mask.png": folder / "mask.png", "preview.png": folder / "preview.png"}


def summarize(output: BlobStore, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write summary.json and summary.csv from every input's record."""
    rows = []
    for entry in manifest["files"]:
        record_key = f"files/{_digest(entry['key'].encode())}.json"
        try:
            rows.append(retrying(partial(output.get_json, record_key), f"reading {record_key}"))
        except BlobNotFoundError:
            rows.append({"key": entry["key"], "status": "pending"})
    statuses = [row["status"] for row in rows]
    covers = [row["vegetation_fraction"] for row in rows if row["status"] == "ok"]
    summary = {
        "source": manifest["source"],
        "inputs": len(rows),
        "ok": statuses.count("ok"),
        "failed": statuses.count("failed"),
        "pending": statuses.count("pending"),
        "mean_vegetation_fraction": float(np.mean(covers)) if covers else None,
        "seconds": round(sum(row.get("seconds", 0.0) for row in rows), 3),
        "files": rows,
    }
    table = io.StringIO()
    writer = csv.DictWriter(table, SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    retrying(lambda: output.put_json("summary.json", summary), "writing summary.json")
    retrying(lambda: output.put("summary.csv", table.getvalue().encode()), "writing summary.csv")
    return summary


def run_local(
    source_url: str, output_url: str, options: Options, *, workers: int, model_path: Path,
    endpoint_url: str | None, on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> tuple[dict[str, Any] | None, list[int]]:  # fmt: skip
    """``workers`` worker processes on this machine, as the Indexed Job's pods would run:
    returns the summary (None when a worker failed) and the workers' exit codes."""
    source, output = open_location(source_url, endpoint_url), open_location(output_url, endpoint_url)
    manifest = plan(source, output)
    total = len(manifest["files"])
    for stale in output.list_keys("shards/"):  # marks of an earlier run with other shards
        output.delete(stale)
    command = [sys.executable, "-m", "cropseg_batch", "batch", source_url, "--output", output_url,
               "--model", str(model_path), "--threads", "1", *options.to_args(),
               *(["--endpoint-url", endpoint_url] if endpoint_url else [])]  # fmt: skip
    with _workers(command, workers) as processes:
        while any(process.poll() is None for process in processes):
            on_progress(len(output.list_keys("files/")), total)
            time.sleep(0.5)
    on_progress(len(output.list_keys("files/")), total)
    codes = [process.returncode for process in processes]
    if any(codes):
        return None, codes
    return output.get_json("summary.json"), codes


@contextlib.contextmanager
def _workers(command: list[str], count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = [subprocess.Popen([*command, "--shard", f"{index}/{count}"]) for index in range(count)]
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
            process.wait()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
