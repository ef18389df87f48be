"""Whole-field rasters: an orthomosaic segmented window by window, in memory independent of
its size.

An orthomosaic from OpenDroneMap, Pix4D or Agisoft is a GeoTIFF of tens of thousands of
pixels a side with a coordinate reference system, a geotransform and no data outside the
field (an alpha band or a nodata value). It is read in windows of at most ``window`` pixels
a side: a core (a multiple of the 512-px output blocks) plus a margin on every side. Each
window goes through the core segmentation pipeline
(:class:`cropseg_core.pipeline.Pipeline`, the one the API runs) and only its centre is
kept: every kept pixel saw at least half the pipeline's tile overlap of context, as inside
one image, so windows leave no seam. Written as they are done:

* ``OUT.tif`` -- the mask, one band of uint8: 0 soil, 1 vegetation, 255 no data; with the
  source's CRS and transform, as a Cloud-Optimised GeoTIFF (tiled, deflate, overviews).
  A raster without georeference gets a plain tiled TIFF and a warning.
* ``OUT.cover.csv``, ``OUT.cover.geojson``, ``OUT.cover.gpkg`` -- vegetation cover and zone per
  grid cell of ``cell_m`` metres, and ``OUT.cell-counts.tif`` to compute other cell sizes from
  later; georeferenced rasters only (:mod:`cropseg_batch.cover`).
* ``OUT.preview.png`` -- the field with its vegetation tinted, at most 1024 px a side.

Every output appears whole or not at all (written beside, then renamed).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np
import rasterio
import rasterio.io
import rasterio.shutil
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from tqdm import tqdm

from cropseg_batch.cover import (
    CellCounts,
    CoverOptions,
    CoverSummary,
    Georeference,
    counting_grid,
    write_cover,
)
from cropseg_core.bands import Layout, display_rgb, get_layout, to_model_bands
from cropseg_core.files import write_atomic, written_beside
from cropseg_core.masks import encode_png, overlay
from cropseg_core.memory import trim_heap
from cropseg_core.model import LoadedModel
from cropseg_core.pipeline import PipelineConfig, working_scale

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

BLOCK = 512
"""Block size of the output (and the window grid): 512 px, as COGs use."""
WINDOW = 4 * BLOCK
"""Largest side of a window as read, margins included: what bounds memory, whatever the scale."""
PREVIEW_SIDE = 1024
SOIL, VEGETATION, NODATA = 0, 1, 255
GDAL_CACHE_MB = 16
"""GDAL's block cache: a window's blocks and the output's, not the raster's."""
AUTO_SAMPLE = 2048
"""Side of the central window the automatic working scale is measured on."""
OUTPUT_FILES = {
    "mask": "mask.tif", "preview": "preview.png", "cover_csv": "cover.csv", "cover_geojson": "cover.geojson",
    "cover_gpkg": "cover.gpkg", "cell_counts": "cell-counts.tif",
}  # fmt: skip
"""Short file names of a run's outputs (:attr:`RasterReport.outputs`), by kind: what a batch and a
field keep them as."""
CHECKPOINT_EVERY_S = 20.0
"""How often a run with a checkpoint folder saves it: a flush of the mask and a few MB of state."""


class RasterError(ValueError):
    """The raster cannot be segmented as given; the message names what was found."""


class CancelledError(Exception):
    """Raised by a run's ``on_window`` callback to stop it between windows (its checkpoint, if
    any, is saved and kept)."""


@dataclass
class RasterReport:
    """What :func:`segment_raster` did (also the per-file record of a batch)."""

    source: str
    width: int
    height: int
    bands: list[int]
    layout: str
    crs: str | None
    pixel_size_m: float | None
    working_scale: float
    vegetation_fraction: float
    """Vegetation pixels / pixels with data."""
    data_fraction: float
    """Pixels with data / all pixels."""
    outputs: dict[str, str]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    cover: CoverSummary | None = None
    """The cover grid and its zones (georeferenced rasters)."""

    @property
    def megapixels_per_s(self) -> float:
        return self.width * self.height / 1e6 / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "megapixels_per_s": round(self.megapixels_per_s, 3)}


def _bounded_gdal(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` with GDAL's block cache capped (by default GDAL may cache 5 % of the
    machine's memory: 1.2 GB here, and peak memory grew with the raster) and without rasterio's
    warning on every open of a raster without georeference (the report says it once)."""

    @functools.wraps(function)
    def bounded(*args: P.args, **kwargs: P.kwargs) -> R:
        with warnings.catch_warnings(), rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return function(*args, **kwargs)

    return bounded


@_bounded_gdal
def segment_raster(
    source: Path,
    output: Path,
    model: LoadedModel,
    *,
    layout: str = "rgb",
    bands: list[int] | None = None,
    gsd_mm: float | None = None,
    scale: float | None = None,
    cover: CoverOptions | None = None,
    window: int = WINDOW,
    progress: bool = False,
    on_window: Callable[[int, int], None] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every_s: float = CHECKPOINT_EVERY_S,
) -> RasterReport:
    """Segment the raster at ``source`` into ``output`` (a .tif) and its cover and preview
    files beside it; see the module's description. RasterError: the raster cannot be read
    or its bands do not fit ``layout``; CoverError: the grid of ``cover`` (default: 10 m cells,
    3 zones by natural breaks) does not fit it.

    ``on_window(done, total)`` is called once the windows are laid out (``done``: those a
    checkpoint had done) and after each window; it may raise :class:`CancelledError` (or anything)
    to stop between windows. With a ``checkpoint`` folder the run saves its partial mask and
    state there every ``checkpoint_every_s`` seconds and when it stops, resumes from what a
    run of the same input and settings left there, and removes it when done."""
    cover = cover or CoverOptions()
    started = time.perf_counter()
    sensor = get_layout(layout)
    if window % BLOCK:
        raise RasterError(f"window must be a multiple of {BLOCK} px, got {window}")
    try:
        dataset = rasterio.open(source)
    except (RasterioError, OSError) as e:
        raise RasterError(f"cannot read {source.name} as a raster: {e}") from e
    with dataset:
        band_list = _bands(dataset, sensor, bands)
        cautions: list[str] = []
        georeferenced = dataset.crs is not None and not dataset.transform.is_identity
        pixel_m = _pixel_size_m(dataset) if georeferenced else None
        if not georeferenced:
            cautions.append(
                f"{source.name} has no georeference (CRS and geotransform): the mask is a plain TIFF "
                "without one, and there is no cover per grid cell"
            )
        if gsd_mm is None and scale is None and pixel_m is not None:
            gsd_mm = min(pixel_m * 1000, 1000.0)
        factor = _working_scale(dataset, band_list, sensor, model.pipeline.config, gsd_mm, scale)
        margin = math.ceil(model.pipeline.config.tile_overlap / 2 / factor)
        geo = (
            Georeference(dataset.crs, dataset.transform, dataset.width, dataset.height, pixel_m)
            if pixel_m
            else None
        )
        grid = counting_grid(cover, geo) if geo else None
        stride = max(1, math.ceil(max(dataset.width, dataset.height) / PREVIEW_SIDE))
        preview = np.full((-(-dataset.height // stride), -(-dataset.width // stride), 3), 255, np.uint8)
        # The margin is read at full resolution: the smaller the working scale, the wider it is,
        # so the core shrinks to keep the read window (the memory) the same. A raster that fits
        # in one window is read whole (no margin needed).
        fits = max(dataset.width, dataset.height) <= window
        core_side = window if fits else max(BLOCK, (window - 2 * margin) // BLOCK * BLOCK)
        windows = list(_window_grid(dataset.width, dataset.height, core_side))
        state = _State(0, 0, 0, preview, grid)
        profile = {
            "driver": "GTiff", "width": dataset.width, "height": dataset.height, "count": 1,
            "dtype": "uint8", "nodata": NODATA, "tiled": True, "blockxsize": BLOCK,
            "blockysize": BLOCK, "compress": "deflate", "BIGTIFF": "IF_SAFER",
            **({"crs": dataset.crs, "transform": dataset.transform} if georeferenced else {}),
        }  # fmt: skip
        with contextlib.ExitStack() as stack:
            if checkpoint is None:
                mask_path = stack.enter_context(written_beside(output))
                saved: _Checkpoint | None = None
                out = rasterio.open(mask_path, "w", **profile)
            else:
                fingerprint = {
                    "source_bytes": source.stat().st_size, "source_mtime_ns": source.stat().st_mtime_ns,
                    "width": dataset.width, "height": dataset.height, "layout": sensor.name,
                    "bands": band_list, "scale": repr(factor), "window": window, "core_side": core_side,
                    "cell_px": repr(grid.cell_px) if grid is not None else None,
                }  # fmt: skip
                saved = _Checkpoint(checkpoint, fingerprint, checkpoint_every_s)
                mask_path = saved.mask
                out = saved.open(state, profile)
            stack.callback(lambda: out.close())
            try:
                if on_window is not None:
                    on_window(state.done, len(windows))
                for core in tqdm(windows[state.done :], desc=source.name, unit="window", initial=state.done,
                                 total=len(windows), disable=not progress):  # fmt: skip
                    classes, channels = _segment_window(
                        dataset, core, margin, band_list, sensor, model, factor
                    )
                    out.write(classes, 1, window=core)
                    state.add(core, classes, channels, stride, sensor)
                    del classes, channels
                    trim_heap()  # what a window's smaller allocations left, ~20 MiB
                    if saved is not None and saved.due():
                        out = saved.save(out, state)
                    if on_window is not None:
                        on_window(state.done, len(windows))
            except BaseException:
                if saved is not None:
                    try:
                        out = saved.save(out, state, reopen=False)
                    except Exception as e:  # the run's own error is the one to report
                        log.warning("could not save the checkpoint in %s: %s", checkpoint, e)
                raise
            out.close()
            if georeferenced:
                _copy_as_cog(mask_path, mask_path if saved is None else output)
            elif saved is not None:
                with written_beside(output) as plain:  # rewritten: updates left blocks unused
                    rasterio.shutil.copy(
                        mask_path, plain, driver="GTiff", tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                        compress="deflate", BIGTIFF="IF_SAFER",
                    )  # fmt: skip
        outputs = {"mask": str(output)}
        preview_path = output.with_name(output.stem + ".preview.png")
        write_atomic(preview_path, encode_png(preview))
        outputs["preview"] = str(preview_path)
        summary = None
        if grid is not None and geo is not None:
            summary, cover_files = write_cover(output, grid, geo, cover)
            outputs.update(cover_files)
            if caution := summary.caution():
                cautions.append(caution)
        if saved is not None:
            saved.remove()
        for caution in cautions:
            log.warning("%s", caution)
        return RasterReport(
            source=str(source),
            width=dataset.width,
            height=dataset.height,
            bands=band_list,
            layout=sensor.name,
            crs=dataset.crs.to_string() if georeferenced else None,
            pixel_size_m=pixel_m,
            working_scale=round(factor, 6),
            vegetation_fraction=state.vegetation / state.data if state.data else 0.0,
            data_fraction=state.data / (dataset.width * dataset.height),
            outputs=outputs,
            seconds=time.perf_counter() - started,
            warnings=cautions,
            cover=summary,
        )


@dataclass
class _State:
    """What the windows segmented so far add up to, besides the mask: all a resumed run needs."""

    done: int
    vegetation: int
    data: int
    preview: np.ndarray
    grid: CellCounts | None

    def add(
        self, core: Window, classes: np.ndarray, channels: np.ndarray, stride: int, layout: Layout
    ) -> None:
        in_field, green = classes != NODATA, classes == VEGETATION
        self.vegetation += int(np.count_nonzero(green))
        self.data += int(np.count_nonzero(in_field))
        if self.grid is not None:
            self.grid.add(int(core.row_off), int(core.col_off), in_field, green)
        _add_to_preview(self.preview, stride, core, channels, classes, layout)
        self.done += 1


class _Checkpoint:
    """A run's partial mask and :class:`_State` in a folder, with the fingerprint of the input and
    settings they belong to. The mask is closed (its blocks and directory on disk) before the
    state is written, and the state is written atomically: the state never counts a window the
    mask lacks. Windows written after it are written again by the run that resumes."""

    def __init__(self, folder: Path, fingerprint: dict[str, object], every_s: float) -> None:
        self.folder = folder
        self.mask = folder / "mask.tif"
        self.state = folder / "state.npz"
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)
        self.every_s = every_s
        self.last = time.monotonic()

    def open(self, state: _State, profile: dict[str, object]) -> rasterio.io.DatasetWriter:
        """The mask to write: the checkpoint's, with ``state`` filled from it, when it is of the
        same input and settings; else a new one (whatever was there is dropped)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            if self._load(state):
                out = rasterio.open(self.mask, "r+")
                if out.shape == (profile["height"], profile["width"]):
                    log.info("resuming %s at window %d", self.folder, state.done + 1)
                    return out
                out.close()
        except (OSError, RasterioError, ValueError, KeyError) as e:
            log.warning("the checkpoint in %s cannot be read (%s): starting over", self.folder, e)
        state.done = state.vegetation = state.data = 0
        state.preview[:] = 255
        if state.grid is not None:
            state.grid.vegetation[:] = state.grid.data[:] = 0
        self.state.unlink(missing_ok=True)
        return rasterio.open(self.mask, "w", **profile)

    def _load(self, state: _State) -> bool:
        if not (self.state.is_file() and self.mask.is_file()):
            return False
        with np.load(self.state, allow_pickle=False) as saved:
            if str(saved["fingerprint"]) != self.fingerprint:
                log.info("the checkpoint in %s is of another input or settings: starting over", self.folder)
                return False
            done, vegetation, data = (int(value) for value in saved["counts"])
            state.preview[:] = saved["preview"]
            if state.grid is not None:
                state.grid.vegetation[:] = saved["grid_vegetation"]
                state.grid.data[:] = saved["grid_data"]
        state.done, state.vegetation, state.data = done, vegetation, data
        return True

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every_s

    def save(
        self, out: rasterio.io.DatasetWriter, state: _State, *, reopen: bool = True
    ) -> rasterio.io.DatasetWriter:
        """Close the mask, write the state, and (``reopen``) open the mask again to go on."""
        out.close()
        buffer = io.BytesIO()
        grid = state.grid
        np.savez(
            buffer, fingerprint=np.array(self.fingerprint),
            counts=np.array([state.done, state.vegetation, state.data], np.int64), preview=state.preview,
            grid_vegetation=grid.vegetation if grid is not None else np.zeros(0, np.int64),
            grid_data=grid.data if grid is not None else np.zeros(0, np.int64),
        )  # fmt: skip
        descriptor = os.open(self.mask, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        write_atomic(self.state, buffer.getvalue())
        self.last = time.monotonic()
        return rasterio.open(self.mask, "r+") if reopen else out

    def remove(self) -> None:
        self.state.unlink(missing_ok=True)
        self.mask.unlink(missing_ok=True)


def _bands(dataset: rasterio.DatasetReader, layout: Layout, bands: list[int] | None) -> list[int]:
    """The 1-based raster bands that hold ``layout``'s channels, in order."""
    found = f"{dataset.count} band(s) of {', '.join(sorted(set(dataset.dtypes)))}"
    if any(dtype != "uint8" for dtype in dataset.dtypes):
        raise RasterError(
            f"the raster has {found}; cropseg reads 8-bit bands (convert with e.g. "
            "gdal_translate -ot Byte -scale)"
        )
    if bands is not None:
        if not all(1 <= band <= dataset.count for band in bands):
            raise RasterError(f"--bands {bands} names a band the raster does not have ({found})")
        chosen = bands
    else:
        chosen = [i for i, kind in enumerate(dataset.colorinterp, 1) if kind != ColorInterp.alpha]
    if len(chosen) not in layout.channel_counts:
        counts = [str(count) for count in layout.channel_counts]
        wanted = " or ".join([", ".join(counts[:-1]), counts[-1]] if len(counts) > 1 else counts)
        raise RasterError(
            f"layout {layout.name!r} ({layout.description}) needs {wanted} bands, but the raster has "
            f"{found} ({len(chosen)} besides alpha): choose them with --bands, e.g. --bands 1,2,3"
        )
    return chosen


def _pixel_size_m(dataset: rasterio.DatasetReader) -> float:
    """Side of a pixel on the ground in metres (at the raster's centre for degrees)."""
    size = math.sqrt(abs(dataset.transform.a * dataset.transform.e))
    if dataset.crs.is_geographic:
        latitude = dataset.transform.f + dataset.transform.e * dataset.height / 2
        return size * 111_320 * math.cos(math.radians(latitude))
    return size * dataset.crs.linear_units_factor[1]


def _working_scale(
    dataset: rasterio.DatasetReader, bands: list[int], layout: Layout, config: PipelineConfig,
    gsd_mm: float | None, scale: float | None,
) -> float:  # fmt: skip
    """One working scale for the whole raster: declared, from its GSD, or measured on a
    central window (windows must agree, or their seams would show)."""
    if gsd_mm is not None or scale is not None:
        return working_scale(np.zeros((1, 1, 4), np.uint8), layout, config, gsd_mm=gsd_mm, scale=scale)
    side_x, side_y = min(AUTO_SAMPLE, dataset.width), min(AUTO_SAMPLE, dataset.height)
    centre = Window((dataset.width - side_x) // 2, (dataset.height - side_y) // 2, side_x, side_y)
    sample, _ = _read(dataset, bands, centre)
    return working_scale(to_model_bands(sample, layout), layout, config)


def _read(dataset: rasterio.DatasetReader, bands: list[int], window: Window) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) channels of ``window`` and where they hold data; RasterError when the file fails."""
    try:
        channels = np.ascontiguousarray(np.moveaxis(dataset.read(bands, window=window), 0, -1))
        return channels, dataset.dataset_mask(window=window) > 0
    except RasterioError as e:
        cause = f" ({e.__cause__})" if e.__cause__ else ""
        raise RasterError(
            f"cannot read {Path(dataset.name).name} at rows {int(window.row_off)}-"
            f"{int(window.row_off + window.height)}: {e}{cause}; is the file complete?"
        ) from e


def _window_grid(width: int, height: int, size: int) -> Iterator[Window]:
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


def _segment_window(
    dataset: rasterio.DatasetReader, core: Window, margin: int, bands: list[int], layout: Layout,
    model: LoadedModel, factor: float,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Classes of the ``core`` window (segmented with ``margin`` px of context around it) and
    its channels."""
    top, left = max(0, int(core.row_off) - margin), max(0, int(core.col_off) - margin)
    bottom = min(dataset.height, int(core.row_off + core.height) + margin)
    right = min(dataset.width, int(core.col_off + core.width) + margin)
    read = Window(left, top, right - left, bottom - top)
    channels, valid = _read(dataset, bands, read)
    inner = (slice(int(core.row_off) - top, int(core.row_off) - top + int(core.height)),
             slice(int(core.col_off) - left, int(core.col_off) - left + int(core.width)))  # fmt: skip
    if not valid[inner].any():  # outside the field: nothing to segment
        return np.full((int(core.height), int(core.width)), NODATA, np.uint8), channels[inner]
    channels[~valid] = 0
    segmentation = model.run(channels, layout, scale=factor)
    classes = np.full(valid.shape, NODATA, np.uint8)
    classes[valid] = (segmentation.mask[valid] > 0).astype(np.uint8)  # SOIL 0, VEGETATION 1
    return np.ascontiguousarray(classes[inner]), channels[inner]


def _add_to_preview(
    preview: np.ndarray, stride: int, core: Window, channels: np.ndarray, classes: np.ndarray, layout: Layout
) -> None:
    """Every ``stride``-th pixel of the window into the preview, vegetation tinted, no data white."""
    first_row = -int(core.row_off) % stride
    first_col = -int(core.col_off) % stride
    rows, cols = channels[first_row::stride, first_col::stride], classes[first_row::stride, first_col::stride]
    if rows.size == 0:
        return
    picture = display_rgb(to_model_bands(np.ascontiguousarray(rows), layout), layout)
    tinted = overlay(picture, np.where(cols == VEGETATION, np.uint8(255), np.uint8(0)), in_place=True)
    tinted[cols == NODATA] = 255
    top, left = -(-int(core.row_off) // stride), -(-int(core.col_off) // stride)
    preview[top : top + tinted.shape[0], left : left + tinted.shape[1]] = tinted


def _copy_as_cog(mask: Path, output: Path) -> None:
    """Write the tiled GeoTIFF at ``mask`` to ``output`` (the same path or another) as a
    Cloud-Optimised GeoTIFF with overviews."""
    with written_beside(output) as cog:
        rasterio.shutil.copy(
            mask, cog, driver="COG", compress="DEFLATE", blocksize=BLOCK, overview_resampling="nearest",
            BIGTIFF="IF_SAFER",
        )  # fmt: skip
