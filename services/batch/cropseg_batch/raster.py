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
* ``OUT.cover.csv`` and ``OUT.cover.geojson`` -- vegetation cover per grid cell of
  ``cell_m`` metres (cells in the raster's CRS; GeoJSON polygons in WGS 84 as RFC 7946
  asks); georeferenced rasters only.
* ``OUT.preview.png`` -- the field with its vegetation tinted, at most 1024 px a side.

Every output appears whole or not at all (written beside, then renamed).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.warp import transform as transform_points
from rasterio.windows import Window
from tqdm import tqdm

from cropseg_core.bands import Layout, display_rgb, get_layout, to_model_bands
from cropseg_core.files import write_atomic
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


class RasterError(ValueError):
    """The raster cannot be segmented as given; the message names what was found."""


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

    @property
    def megapixels_per_s(self) -> float:
        return self.width * self.height / 1e6 / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "megapixels_per_s": round(self.megapixels_per_s, 3)}


@dataclass
class _Grid:
    """Vegetation and data pixel counts per cell of ``cell_px`` pixels."""

    cell_px: float
    rows: int
    cols: int
    vegetation: np.ndarray = field(init=False)
    data: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.vegetation = np.zeros((self.rows, self.cols), np.int64)
        self.data = np.zeros((self.rows, self.cols), np.int64)

    def add(self, row_off: int, col_off: int, classes: np.ndarray) -> None:
        """Count a window's pixels into its cells: summed over each cell's run of rows, then of
        columns (a few bytes a pixel, not an index per pixel)."""
        rows, row_starts = self._runs(row_off, classes.shape[0])
        cols, col_starts = self._runs(col_off, classes.shape[1])
        for counts, selected in ((self.data, classes != NODATA), (self.vegetation, classes == VEGETATION)):
            per_cell = np.add.reduceat(np.add.reduceat(selected, row_starts, axis=0, dtype=np.int64),
                                       col_starts, axis=1)  # fmt: skip
            counts[np.ix_(rows, cols)] += per_cell

    def _runs(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """The cells a window's rows (or columns) fall in, and where each cell's run starts."""
        cells = ((offset + np.arange(length)) / self.cell_px).astype(np.int64)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(cells)) + 1])
        return cells[starts], starts


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
    cell_m: float = 10.0,
    window: int = WINDOW,
    progress: bool = False,
) -> RasterReport:
    """Segment the raster at ``source`` into ``output`` (a .tif) and its cover and preview
    files beside it; see the module's description. RasterError: the raster cannot be read
    or its bands do not fit ``layout``."""
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
        grid = _Grid(cell_m / pixel_m, *_cells(dataset, cell_m / pixel_m)) if pixel_m else None
        stride = max(1, math.ceil(max(dataset.width, dataset.height) / PREVIEW_SIDE))
        preview = np.full((-(-dataset.height // stride), -(-dataset.width // stride), 3), 255, np.uint8)
        vegetation = data = 0
        # The margin is read at full resolution: the smaller the working scale, the wider it is,
        # so the core shrinks to keep the read window (the memory) the same. A raster that fits
        # in one window is read whole (no margin needed).
        fits = max(dataset.width, dataset.height) <= window
        core_side = window if fits else max(BLOCK, (window - 2 * margin) // BLOCK * BLOCK)
        windows = list(_window_grid(dataset.width, dataset.height, core_side))
        with _written_beside(output) as mask_path:
            profile = {
                "driver": "GTiff", "width": dataset.width, "height": dataset.height, "count": 1,
                "dtype": "uint8", "nodata": NODATA, "tiled": True, "blockxsize": BLOCK,
                "blockysize": BLOCK, "compress": "deflate", "BIGTIFF": "IF_SAFER",
                **({"crs": dataset.crs, "transform": dataset.transform} if georeferenced else {}),
            }  # fmt: skip
            with rasterio.open(mask_path, "w", **profile) as out:
                for core in tqdm(windows, desc=source.name, unit="window", disable=not progress):
                    classes, channels = _segment_window(
                        dataset, core, margin, band_list, sensor, model, factor
                    )
                    out.write(classes, 1, window=core)
                    vegetation += int(np.count_nonzero(classes == VEGETATION))
                    data += int(np.count_nonzero(classes != NODATA))
                    if grid is not None:
                        grid.add(int(core.row_off), int(core.col_off), classes)
                    _add_to_preview(preview, stride, core, channels, classes, sensor)
                    del classes, channels
                    trim_heap()  # what a window's smaller allocations left, ~20 MiB
            if georeferenced:
                _to_cog(mask_path)
        outputs = {"mask": str(output)}
        preview_path = output.with_name(output.stem + ".preview.png")
        write_atomic(preview_path, encode_png(preview))
        outputs["preview"] = str(preview_path)
        if grid is not None:
            outputs.update(_write_cover(output, dataset, grid))
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
            vegetation_fraction=vegetation / data if data else 0.0,
            data_fraction=data / (dataset.width * dataset.height),
            outputs=outputs,
            seconds=time.perf_counter() - started,
            warnings=cautions,
        )


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


def _cells(dataset: rasterio.DatasetReader, cell_px: float) -> tuple[int, int]:
    if cell_px < 1:
        raise RasterError(
            f"the grid cell is smaller than a pixel ({cell_px:.3g} px): choose a larger --cell-m"
        )
    return math.ceil(dataset.height / cell_px), math.ceil(dataset.width / cell_px)


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


@contextlib.contextmanager
def _written_beside(output: Path) -> Iterator[Path]:
    """A temporary path beside ``output``, renamed to it when the block succeeds."""
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp.tif", dir=output.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)


def _to_cog(path: Path) -> None:
    """Rewrite the tiled GeoTIFF at ``path`` as a Cloud-Optimised GeoTIFF with overviews."""
    cog = path.with_name(path.name + ".cog")
    try:
        rasterio.shutil.copy(
            path, cog, driver="COG", compress="DEFLATE", blocksize=BLOCK, overview_resampling="nearest",
            BIGTIFF="IF_SAFER",
        )  # fmt: skip
        os.replace(cog, path)
    finally:
        cog.unlink(missing_ok=True)


def _write_cover(output: Path, dataset: rasterio.DatasetReader, grid: _Grid) -> dict[str, str]:
    """Cover per cell as CSV (raster CRS) and GeoJSON (WGS 84), for cells with data."""
    rows, cols = np.nonzero(grid.data)
    transform = dataset.transform
    x0, y0 = transform @ (cols * grid.cell_px, rows * grid.cell_px)
    x1, y1 = transform @ (np.minimum((cols + 1) * grid.cell_px, dataset.width),
                          np.minimum((rows + 1) * grid.cell_px, dataset.height))  # fmt: skip
    pixel_m = _pixel_size_m(dataset)
    cover = grid.vegetation[rows, cols] / grid.data[rows, cols]
    area_m2 = grid.data[rows, cols] * pixel_m**2
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["row", "col", "x_min", "y_min", "x_max", "y_max", "vegetation_cover", "data_area_m2"])
    for i in range(len(rows)):
        writer.writerow([rows[i], cols[i], f"{min(x0[i], x1[i]):.3f}", f"{min(y0[i], y1[i]):.3f}",
                         f"{max(x0[i], x1[i]):.3f}", f"{max(y0[i], y1[i]):.3f}", f"{cover[i]:.4f}",
                         f"{area_m2[i]:.2f}"])  # fmt: skip
    csv_path = output.with_name(output.stem + ".cover.csv")
    write_atomic(csv_path, text.getvalue().encode())

    corners_x = np.stack([x0, x1, x1, x0, x0], axis=1).ravel()
    corners_y = np.stack([y0, y0, y1, y1, y0], axis=1).ravel()
    lon, lat = transform_points(dataset.crs, "EPSG:4326", corners_x.tolist(), corners_y.tolist())
    ring = np.stack([np.round(lon, 8), np.round(lat, 8)], axis=1).reshape(len(rows), 5, 2)
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring[i].tolist()]},
            "properties": {
                "row": int(rows[i]),
                "col": int(cols[i]),
                "vegetation_cover": round(float(cover[i]), 4),
                "data_area_m2": round(float(area_m2[i]), 2),
            },
        }
        for i in range(len(rows))
    ]
    geojson_path = output.with_name(output.stem + ".cover.geojson")
    collection = {"type": "FeatureCollection", "features": features}
    write_atomic(geojson_path, json.dumps(collection, separators=(",", ":")).encode())
    return {"cover_csv": str(csv_path), "cover_geojson": str(geojson_path)}
