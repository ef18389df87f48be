"""The field worker: segments the fields of a store in the background (``cropseg field-worker``).

Storage asks for a field's segmentation by writing its ``job.json`` as ``queued``
(:mod:`cropseg_core.fields` describes the keys). The worker claims the job (``segmenting``),
segments the field's GeoTIFF with :func:`~cropseg_batch.raster.segment_raster` -- the code of
``cropseg segment-raster`` -- and rewrites ``job.json`` with its progress at most once a second.
Between windows it looks for the field's ``cancel`` key and for the field itself. It ends the
job ``done`` (the results uploaded under ``fields/<id>/result/``), ``failed`` (with a message a
person can act on) or ``cancelled``.

It checkpoints to ``WORK/<id>/`` (the partial mask and counts; for a store without local files
also the downloaded GeoTIFF), so a run stopped by a cancel, an error, SIGTERM or a kill resumes
where it was when the field is segmented again. SIGTERM (a pod's eviction, Ctrl-C of ``make up``)
stops at the next window and puts the job back to ``queued``, for the next worker to resume.

A field that has its mask and cell counts already is only re-gridded when asked again: the cover
grid of the new cell size and zones is cut from the counts (:func:`cropseg_batch.cover.recompute`),
without segmenting; a cell size that the counts cannot give segments again.

One worker per store: claiming a job is a plain write, not a compare-and-swap.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject
from rasterio.warp import transform as transform_points

from cropseg_batch.cover import CoverError, CoverOptions, CoverSummary, Zone, recompute
from cropseg_batch.raster import (
    CHECKPOINT_EVERY_S,
    NODATA,
    OUTPUT_FILES,
    WINDOW,
    CancelledError,
    RasterError,
    RasterReport,
    segment_raster,
)
from cropseg_core.bands import LayoutError
from cropseg_core.fields import (
    FieldCatalogue,
    FieldJob,
    FieldRecord,
    JobStatus,
    job_key,
    result_key,
    source_key,
)
from cropseg_core.files import write_atomic
from cropseg_core.masks import encode_png
from cropseg_core.model import LoadedModel
from cropseg_core.pipeline import ScaleError
from cropseg_core.store import BlobNotFoundError, BlobStore, StoreError

log = logging.getLogger(__name__)

REPORT_EVERY_S = 1.0
"""Least time between two progress writes of ``job.json`` (a window may take a tenth of that)."""
WEB_MERCATOR = "EPSG:3857"
COVER_FILES = ("cover.csv", "cover.geojson", "cover.gpkg")


class _StoppingError(CancelledError):
    """The worker was told to stop (SIGTERM): the job goes back to the queue."""


class _CancelAskedError(CancelledError):
    """The field's cancel key is there."""


class _FieldGoneError(CancelledError):
    """The field was deleted while it was segmented."""


class FieldWorker:
    """Runs fields' jobs from ``store`` with ``model``, checkpointing under ``work``."""

    def __init__(
        self, store: BlobStore, model: LoadedModel, work: Path, *, window: int = WINDOW,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S, report_every_s: float = REPORT_EVERY_S,
    ) -> None:  # fmt: skip
        self.store = store
        self.catalogue = FieldCatalogue(store)
        self.model = model
        self.work = work
        self.window = window
        self.checkpoint_every_s = checkpoint_every_s
        self.report_every_s = report_every_s
        self.stopping = threading.Event()
        """Set (by a signal handler) to stop at the next window and leave the job queued."""

    def poll(self, poll_s: float) -> None:
        """Run queued jobs, oldest first, looking for new ones every ``poll_s`` seconds, until
        :attr:`stopping` is set."""
        log.info("field worker: polling %s every %g s", self.store.describe(), poll_s)
        while not self.stopping.is_set():
            try:
                waiting = self.catalogue.queued()
            except StoreError as e:
                log.warning("cannot list the queued fields (%s); trying again in %g s", e, poll_s)
                waiting = []
            for field_id in waiting:
                if self.stopping.is_set():
                    break
                try:
                    self.run(field_id)
                except StoreError as e:  # writing the outcome failed: the job reads as stale later
                    log.error("field %s: the store failed (%s); going on with the next field", field_id, e)
            self.stopping.wait(poll_s)

    def run(self, field_id: str, *, take_segmenting: bool = False) -> JobStatus | None:
        """Claim and run the field's job if it is queued (or, ``take_segmenting``, one a worker
        that died left segmenting: a Kubernetes Job's next pod). Returns how the job ended
        (``queued`` when the worker was stopped), None when there was nothing to do."""
        job = self.catalogue.job(field_id)
        wanted: tuple[JobStatus, ...] = ("queued", "segmenting") if take_segmenting else ("queued",)
        if job is None or job.status not in wanted or not self.catalogue.exists(field_id):
            log.info("field %s: nothing to do (job %s)", field_id, job.status if job else "never asked for")
            return None
        now = datetime.now(UTC)
        job = job.model_copy(
            update={"status": "segmenting", "started": now, "updated": now, "finished": None, "error": None,
                    "megapixels_per_s": None, "seconds_left": None}
        )  # fmt: skip
        self.catalogue.put_job(field_id, job)
        log.info("field %s: segmenting (cell %g m, %d zones)", field_id, job.cover.cell_m, job.cover.zones)
        folder = self.work / field_id
        run = _Run(self, field_id, job)
        try:
            run.segment(folder)
            outcome = run.end("done")
        except _FieldGoneError:
            log.info("field %s was deleted: stopped", field_id)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        except _StoppingError:
            log.info("field %s: stopped at window %d; back in the queue", field_id, run.job.windows_done)
            return run.end("queued", finished=False)
        except _CancelAskedError:
            log.info("field %s: cancelled at window %d", field_id, run.job.windows_done)
            self.catalogue.clear_cancel(field_id)
            return run.end("cancelled")
        except (RasterError, CoverError, LayoutError, ScaleError) as e:
            return run.end("failed", error=str(e))
        except StoreError as e:
            return run.end("failed", error=f"the store failed ({e}): check it, then segment again to resume")
        except Exception as e:
            log.exception("field %s failed", field_id)
            return run.end(
                "failed", error=f"unexpected error ({type(e).__name__}: {e}): segment again to resume, "
                "and report it if it happens again",
            )  # fmt: skip
        finally:
            shutil.rmtree(folder / "out", ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)  # done: the checkpoint is spent
        return outcome


class _Run:
    """One field's run: its job as last written, and the progress callback."""

    def __init__(self, worker: FieldWorker, field_id: str, job: FieldJob) -> None:
        self.worker = worker
        self.catalogue = worker.catalogue
        self.store = worker.store
        self.field_id = field_id
        self.job = job
        self.record: FieldRecord | None = None
        self.started = time.monotonic()
        self.resumed_from: int | None = None
        self.last_report = -float("inf")

    def segment(self, folder: Path) -> None:
        self.record = record = self.catalogue.get(self.field_id)
        out = folder / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        cover = CoverOptions(self.job.cover.cell_m, self.job.cover.zones, self.job.cover.zone_method)
        if self._regrid(out / "mask.tif", cover):
            return
        source = self._source(folder)
        self._check()
        report = segment_raster(
            source, out / "mask.tif", self.worker.model, layout=record.layout, cover=cover,
            window=self.worker.window, on_window=self._on_window, checkpoint=folder / "checkpoint",
            checkpoint_every_s=self.worker.checkpoint_every_s,
        )  # fmt: skip
        if report.crs is None or report.pixel_size_m is None:
            raise RasterError(
                f"{record.filename} has no georeference (CRS and geotransform): it cannot be placed on a "
                "map; export the orthomosaic as a GeoTIFF with its CRS"
            )
        self._check()
        files = {OUTPUT_FILES[kind]: Path(path) for kind, path in report.outputs.items()}
        map_png, map_bounds = web_map(files["preview.png"], files["mask.tif"])
        write_atomic(out / "map.png", map_png)
        files["map.png"] = out / "map.png"
        for name, path in files.items():
            self.store.upload(result_key(self.field_id, name), path)
        self.store.put_json(result_key(self.field_id, "report.json"), self._report(report, map_bounds))

    def _regrid(self, mask: Path, cover: CoverOptions) -> bool:
        """Cut the asked-for grid from the kept cell counts, if the field has them; whether it did."""
        keys = {
            name: result_key(self.field_id, name) for name in ("mask.tif", "cell-counts.tif", "report.json")
        }
        if not all(self.store.exists(key) for key in keys.values()):
            return False
        self.store.download(keys["cell-counts.tif"], mask.with_name("mask.cell-counts.tif"))
        try:
            summary, outputs = recompute(mask, cover)
        except CoverError as e:
            log.info(
                "field %s: the kept counts cannot give this grid (%s): segmenting again", self.field_id, e
            )
            return False
        report = self.store.get_json(keys["report.json"])
        self._check()
        for kind, path in outputs.items():
            self.store.upload(result_key(self.field_id, OUTPUT_FILES[kind]), Path(path))
        if report.get("cover"):
            old = report["cover"]
            before = CoverSummary(**{**old, "zones": [Zone(**zone) for zone in old["zones"]]}).caution()
            report["warnings"] = [warning for warning in report.get("warnings", []) if warning != before]
        if caution := summary.caution():
            report.setdefault("warnings", []).append(caution)
        report["cover"] = asdict(summary)
        self.store.put_json(keys["report.json"], report)
        log.info("field %s: cover grid of %g m recomputed from the cell counts", self.field_id, cover.cell_m)
        return True

    def _source(self, folder: Path) -> Path:
        """The field's GeoTIFF as a file: the store's own, or a copy in ``folder`` (kept for a
        resume: the checkpoint is of that file)."""
        assert self.record is not None
        key = source_key(self.field_id)
        if (local := self.store.local_path(key)) is not None:
            return local
        copy = folder / "source.tif"
        if not (copy.is_file() and copy.stat().st_size == self.record.size):
            try:
                partial = copy.with_name("source.tif.partial")
                self.store.download(key, partial)
                partial.replace(copy)
            except BlobNotFoundError as e:
                self._check()
                raise RasterError(
                    f"the field's GeoTIFF is missing from the store ({key}): delete the field and upload "
                    "it again"
                ) from e
        return copy

    def _on_window(self, done: int, total: int) -> None:
        """segment_raster's callback: progress into job.json, at most every report_every_s; stop
        when told to, when a cancel is asked for or when the field is gone."""
        first = self.resumed_from is None
        if first:  # called as the windows are laid out: those done are a checkpoint's
            self.started, self.resumed_from = time.monotonic(), done
            self.job = self.job.model_copy(update={"resumed_from": done})
        self.job = self.job.model_copy(update={"windows_done": done, "windows_total": total})
        if self.worker.stopping.is_set():
            raise _StoppingError
        if self.catalogue.cancel_asked(self.field_id):
            raise _CancelAskedError
        now = time.monotonic()
        if first or done == total or now - self.last_report >= self.worker.report_every_s:
            assert self.record is not None
            fresh = done - self.job.resumed_from
            elapsed = now - self.started
            if fresh > 0 and elapsed > 0:
                megapixels = self.record.width * self.record.height / 1e6 * fresh / total
                self.job = self.job.model_copy(
                    update={"megapixels_per_s": round(megapixels / elapsed, 3),
                            "seconds_left": round((total - done) * elapsed / fresh, 1)}
                )  # fmt: skip
            self._write()
            self.last_report = now

    def _check(self) -> None:
        """Raise when the field is gone or a cancel is asked for."""
        if not self.catalogue.exists(self.field_id):
            raise _FieldGoneError
        if self.catalogue.cancel_asked(self.field_id):
            raise _CancelAskedError

    def _write(self, **changes: Any) -> None:
        """Write the job (with ``changes``) as the heartbeat; _FieldGoneError if the field was deleted
        (writing would bring its folder back)."""
        if not self.catalogue.exists(self.field_id):
            raise _FieldGoneError
        self.job = self.job.model_copy(update={**changes, "updated": datetime.now(UTC)})
        self.catalogue.put_job(self.field_id, self.job)
        if not self.catalogue.exists(self.field_id):  # deleted as it was written: leave nothing
            self.store.delete(job_key(self.field_id))
            raise _FieldGoneError

    def end(self, status: JobStatus, *, error: str | None = None, finished: bool = True) -> JobStatus | None:
        """Write the job's outcome; None when the field is gone meanwhile."""
        if error:
            log.warning("field %s failed: %s", self.field_id, error)
        changes: dict[str, Any] = {"status": status, "error": error, "seconds_left": None}
        if finished:
            changes["finished"] = datetime.now(UTC)
        else:  # back in the queue: a worker claims it afresh
            changes["started"] = None
        if status == "done":
            changes["windows_done"] = self.job.windows_total or self.job.windows_done
        with contextlib.suppress(_FieldGoneError):
            self._write(**changes)
            return status
        return None

    def _report(self, report: RasterReport, map_bounds: list[float]) -> dict[str, Any]:
        """report.json: the run's report with store keys for paths, the map's box and the field's
        area; throughput over the windows this run segmented."""
        assert report.pixel_size_m is not None
        total = self.job.windows_total or 1
        fresh = (total - self.job.resumed_from) / total
        return {
            **report.to_json(),
            "source": source_key(self.field_id),
            "outputs": {kind: OUTPUT_FILES[kind] for kind in report.outputs} | {"map": "map.png"},
            "megapixels_per_s": round(report.megapixels_per_s * fresh, 3),
            "resumed_from": self.job.resumed_from,
            "map_bounds": map_bounds,
            "area_m2": round(report.data_fraction * report.width * report.height * report.pixel_size_m**2, 2),
        }


def web_map(preview: Path, mask: Path) -> tuple[bytes, list[float]]:
    """The preview warped to Web Mercator as an RGBA PNG (transparent where the mask has no
    data), and its box [west, south, east, north] in WGS84 degrees: what a web map's image
    overlay needs."""
    with Image.open(preview) as image:
        rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    with rasterio.open(mask) as dataset:  # a COG: read from an overview of about this size
        in_field = dataset.read(1, out_shape=(height, width), resampling=Resampling.nearest) != NODATA
        transform = dataset.transform * Affine.scale(dataset.width / width, dataset.height / height)
        crs = dataset.crs
        west, south, east, north = dataset.bounds
    rgba = np.concatenate([np.moveaxis(rgb, -1, 0), np.where(in_field, np.uint8(255), np.uint8(0))[None]])
    target, target_width, target_height = calculate_default_transform(
        crs, WEB_MERCATOR, width, height, west, south, east, north
    )
    warped = np.zeros((4, target_height, target_width), np.uint8)
    reproject(
        rgba, warped, src_transform=transform, src_crs=crs, dst_transform=target, dst_crs=WEB_MERCATOR,
        resampling=Resampling.nearest,
    )  # fmt: skip
    left, top = target.c, target.f
    right, bottom = left + target.a * target_width, top + target.e * target_height
    longitudes, latitudes = transform_points(WEB_MERCATOR, "EPSG:4326", [left, right], [bottom, top])
    bounds = [
        round(longitudes[0], 8),
        round(latitudes[0], 8),
        round(longitudes[1], 8),
        round(latitudes[1], 8),
    ]
    return encode_png(np.ascontiguousarray(np.moveaxis(warped, 0, -1))), bounds
