"""Vegetation cover per grid cell of a segmented raster: counted while the raster is segmented,
classified into zones (:mod:`cropseg_batch.zones`) and exported for GIS and farm-management
tools.

Cells are squares of ``cell_m`` metres in the raster's CRS from its top-left corner (those on
the right and bottom edges cut by the raster); a pixel counts in the cell that holds its centre.
Pixels are counted into *base* cells, the smallest whole fraction of the cell of at least
``FINEST_BASE_M`` (never under a pixel, never more than ``MAX_CELLS`` of them), kept in
``OUT.cell-counts.tif``: any whole multiple of the base cell (5, 10, 20 m of a 1 m base) is
computed from it later in a moment, without segmenting again (:func:`recompute`, ``cropseg
cover``). Written for the cells with data, each file whole or not at all:

* ``OUT.cover.csv`` -- row, col, x_min, y_min, x_max, y_max (raster CRS), vegetation_cover,
  data_area_m2, zone
* ``OUT.cover.geojson`` -- the cells as polygons in WGS 84 (RFC 7946), the same properties
* ``OUT.cover.gpkg`` -- GeoPackage, layer ``cover``: the polygons in the raster's CRS (recorded
  in the file), the same fields; written by GDAL through pyogrio, the reference implementation
  QGIS reads with
* ``OUT.cell-counts.tif`` -- GeoTIFF of the base cells: band 1 pixels with data, band 2
  vegetation pixels

Cover is rounded to 4 decimals and area to 0.01 m² in every file, and zones are classified on
the rounded cover, so a cell's zone agrees with the reported breaks in every export.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform as transform_points

from cropseg_batch import zones as zoning
from cropseg_core.files import write_atomic, written_beside

FINEST_BASE_M = 1.0
"""Side of the base cells the counts are kept at, when the cell is a whole multiple of it."""
MAX_CELLS = 1 << 20
"""Cells a grid may have (base or asked for): 16 MiB of counts, a GeoJSON of about 250 MB."""
MIN_ZONES, MAX_ZONES = 2, 9
COUNTS_FORMAT = "1"
GEOPACKAGE_DATE = "1970-01-01T00:00:00.000Z"
"""The GeoPackage's last-change date: fixed, so that a rerun writes the same bytes (a batch keys
outputs by content and promises that)."""
FIELDS = ("row", "col", "vegetation_cover", "data_area_m2", "zone")
EXPORT_KINDS = ("csv", "geojson", "gpkg")


class CoverError(ValueError):
    """The cover grid cannot be made as asked; the message says what to change."""


@dataclass(frozen=True)
class CoverOptions:
    """How the cover grid is cut and classified."""

    cell_m: float = 10.0
    zones: int = 3
    zone_method: str = "jenks"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cell_m) and self.cell_m > 0):
            raise CoverError(f"--cell-m must be a positive number of metres, e.g. 10 (got {self.cell_m})")
        if not MIN_ZONES <= self.zones <= MAX_ZONES:
            raise CoverError(f"--zones must be {MIN_ZONES} to {MAX_ZONES} (got {self.zones})")
        if self.zone_method not in zoning.METHODS:
            raise CoverError(
                f"--zone-method must be one of {', '.join(zoning.METHODS)} (got {self.zone_method!r})"
            )


@dataclass(frozen=True)
class Georeference:
    """Where a raster's pixels lie on the ground: what cells need to be placed and measured."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    pixel_m: float
    """Side of a pixel in metres (at the raster's centre when the CRS is in degrees)."""


@dataclass
class CellCounts:
    """Vegetation and data pixels per cell of ``cell_px`` pixels (a float: cells are metres)."""

    cell_px: float
    vegetation: np.ndarray
    data: np.ndarray

    @classmethod
    def empty(cls, cell_px: float, width: int, height: int) -> CellCounts:
        shape = (math.ceil(height / cell_px), math.ceil(width / cell_px))
        return cls(cell_px, np.zeros(shape, np.int64), np.zeros(shape, np.int64))

    def add(self, row_off: int, col_off: int, data: np.ndarray, vegetation: np.ndarray) -> None:
        """Count a window's pixels with data and its vegetation pixels (boolean arrays) into their
        cells: summed over each cell's run of rows, then of columns (a few bytes a pixel, not an
        index per pixel)."""
        rows, row_starts = self._runs(row_off, data.shape[0])
        cols, col_starts = self._runs(col_off, data.shape[1])
        for counts, selected in ((self.data, data), (self.vegetation, vegetation)):
            per_cell = np.add.reduceat(np.add.reduceat(selected, row_starts, axis=0, dtype=np.int64),
                                       col_starts, axis=1)  # fmt: skip
            counts[np.ix_(rows, cols)] += per_cell

    def _runs(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """The cells a window's rows (or columns) fall in, and where each cell's run starts. A
        pixel belongs to the cell that holds its centre: by its corner, a pixel on the edge of a
        cell a fractional number of pixels wide fell on one side or the other by rounding, and
        not always the same side for the cell and for a merged multiple of it."""
        cells = ((offset + np.arange(length) + 0.5) / self.cell_px).astype(np.int64)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(cells)) + 1])
        return cells[starts], starts

    def coarser(self, factor: int) -> CellCounts:
        """The counts in cells of ``factor`` x ``factor`` of these: what counting at the larger
        size counts."""
        rows, cols = -(-self.data.shape[0] // factor), -(-self.data.shape[1] // factor)

        def merged(counts: np.ndarray) -> np.ndarray:
            padded = np.zeros((rows * factor, cols * factor), np.int64)
            padded[: counts.shape[0], : counts.shape[1]] = counts
            return padded.reshape(rows, factor, cols, factor).sum(axis=(1, 3))

        return CellCounts(self.cell_px * factor, merged(self.vegetation), merged(self.data))


@dataclass(frozen=True)
class Zone:
    zone: int
    cells: int
    area_m2: float
    min_cover: float
    max_cover: float
    mean_cover: float
    """Vegetation over data of the zone's cells together."""


@dataclass(frozen=True)
class CoverSummary:
    """The grid and its zones, as reported with a run (and by ``cropseg cover``)."""

    cell_m: float
    cells: int
    """Cells with data."""
    zone_method: str
    zones_asked: int
    breaks: list[float]
    """Upper bound of each zone's vegetation cover: zone z holds breaks[z-2] < cover <= breaks[z-1]."""
    zones: list[Zone] = field(default_factory=list)

    def caution(self) -> str | None:
        if self.cells and len(self.zones) < self.zones_asked:
            return (
                f"the cover of the {self.cells} cells splits into {len(self.zones)} zone(s), not "
                f"{self.zones_asked}: equal values share a zone"
            )
        return None


def counting_grid(options: CoverOptions, geo: Georeference) -> CellCounts:
    """Empty counts at the base cell for ``options.cell_m``; CoverError when the cell is smaller
    than a pixel or the grid would have more than MAX_CELLS cells."""
    cell_px = options.cell_m / geo.pixel_m
    if cell_px < 1:
        raise CoverError(
            f"the grid cell is smaller than a pixel ({cell_px:.3g} px of {geo.pixel_m:.3g} m): "
            "choose a larger --cell-m"
        )
    cells = math.ceil(geo.height / cell_px) * math.ceil(geo.width / cell_px)
    if cells > MAX_CELLS:
        fewest = math.sqrt(geo.width * geo.height / MAX_CELLS) * geo.pixel_m
        raise CoverError(
            f"--cell-m {options.cell_m:g} cuts the raster into {cells} cells, more than {MAX_CELLS}: "
            f"choose at least {math.ceil(fewest * 1.01)} m"
        )
    finest_px = max(FINEST_BASE_M / geo.pixel_m, 1.0, math.sqrt(geo.width * geo.height / MAX_CELLS))
    divisions = max(1, math.floor(cell_px / finest_px))
    return CellCounts.empty(cell_px / divisions, geo.width, geo.height)


def write_cover(
    output: Path, base: CellCounts, geo: Georeference, options: CoverOptions
) -> tuple[CoverSummary, dict[str, str]]:
    """Write the base counts and the grid of ``options`` (see the module) beside the mask
    ``output``; the summary and the files written, by name."""
    counts_path = output.with_name(output.stem + ".cell-counts.tif")
    _write_counts(counts_path, base, geo)
    summary, outputs = _write_grid(output, base, geo, options)
    return summary, {**outputs, "cell_counts": str(counts_path)}


def recompute(mask: Path, options: CoverOptions) -> tuple[CoverSummary, dict[str, str]]:
    """The grid of ``options`` from the counts a finished run of ``mask`` kept, without segmenting
    again: its cover files are written anew. CoverError: no counts, or a cell size that is not
    a whole multiple of their base cell."""
    base, geo = read_counts(mask.with_name(mask.stem + ".cell-counts.tif"))
    return _write_grid(mask, base, geo, options)


def _write_grid(
    output: Path, base: CellCounts, geo: Georeference, options: CoverOptions
) -> tuple[CoverSummary, dict[str, str]]:
    base_m = base.cell_px * geo.pixel_m
    factor = round(options.cell_m / base_m)
    if factor < 1 or not math.isclose(factor * base_m, options.cell_m, rel_tol=1e-6):
        raise CoverError(
            f"the run counted cells of {base_m:g} m: --cell-m must be a whole multiple of that, e.g. "
            f"{', '.join(f'{base_m * n:g}' for n in (5, 10, 20))} (got {options.cell_m:g}); for another "
            "size segment the raster again"
        )
    counts = base.coarser(factor) if factor > 1 else base
    table = _Table.of(counts, geo, options)
    paths = {f"cover_{kind}": output.with_name(f"{output.stem}.cover.{kind}") for kind in EXPORT_KINDS}
    write_atomic(paths["cover_csv"], table.csv())
    write_atomic(paths["cover_geojson"], table.geojson(geo))
    table.write_geopackage(paths["cover_gpkg"], geo)
    summary = CoverSummary(
        cell_m=options.cell_m, cells=len(table.row), zone_method=options.zone_method,
        zones_asked=options.zones, breaks=[round(float(b), 4) for b in table.breaks],
        zones=table.zone_summaries(counts, geo),
    )  # fmt: skip
    return summary, {name: str(path) for name, path in paths.items()}


@dataclass
class _Table:
    """The cells with data: one row per feature, one column per field, shared by every export."""

    row: np.ndarray
    col: np.ndarray
    ring: np.ndarray
    """(cells, 5, 2) corners in the raster's CRS, counter-clockwise as RFC 7946 and OGC ask."""
    cover: np.ndarray
    area_m2: np.ndarray
    zone: np.ndarray
    breaks: np.ndarray

    @classmethod
    def of(cls, counts: CellCounts, geo: Georeference, options: CoverOptions) -> _Table:
        row, col = np.nonzero(counts.data)
        top, left = row * counts.cell_px, col * counts.cell_px
        bottom = np.minimum((row + 1) * counts.cell_px, geo.height)
        right = np.minimum((col + 1) * counts.cell_px, geo.width)
        # Down the left side first: counter-clockwise on the ground for a north-up raster (its
        # transform flips y); the other way round for one that does not flip.
        pixel_x = np.stack([left, left, right, right, left], axis=1)
        pixel_y = np.stack([top, bottom, bottom, top, top], axis=1)
        if geo.transform.determinant > 0:
            pixel_x, pixel_y = pixel_x[:, ::-1], pixel_y[:, ::-1]
        x, y = geo.transform @ (pixel_x, pixel_y)
        data = counts.data[row, col]
        cover = np.round(counts.vegetation[row, col] / data, 4)
        upper_bounds = zoning.breaks(cover, data, options.zones, options.zone_method)
        return cls(
            row=row, col=col, ring=np.stack([x, y], axis=-1), cover=cover,
            area_m2=np.round(data * geo.pixel_m**2, 2), zone=zoning.assign(cover, upper_bounds),
            breaks=upper_bounds,
        )  # fmt: skip

    def zone_summaries(self, counts: CellCounts, geo: Georeference) -> list[Zone]:
        vegetation = counts.vegetation[self.row, self.col]
        data = counts.data[self.row, self.col]
        summaries = []
        for zone in range(1, len(self.breaks) + 1):
            member = self.zone == zone
            in_zone = data[member].sum()
            summaries.append(Zone(
                zone=zone, cells=int(member.sum()), area_m2=round(float(in_zone * geo.pixel_m**2), 2),
                min_cover=float(self.cover[member].min()), max_cover=float(self.cover[member].max()),
                mean_cover=round(float(vegetation[member].sum() / in_zone), 4),
            ))  # fmt: skip
        return summaries

    def csv(self) -> bytes:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["row", "col", "x_min", "y_min", "x_max", "y_max", *FIELDS[2:]])
        low, high = self.ring.min(axis=1), self.ring.max(axis=1)
        for i in range(len(self.row)):
            bounds = (f"{low[i, 0]:.3f}", f"{low[i, 1]:.3f}", f"{high[i, 0]:.3f}", f"{high[i, 1]:.3f}")
            values = (f"{self.cover[i]:.4f}", f"{self.area_m2[i]:.2f}", self.zone[i])
            writer.writerow([self.row[i], self.col[i], *bounds, *values])
        return text.getvalue().encode()

    def geojson(self, geo: Georeference) -> bytes:
        flat = self.ring.reshape(-1, 2)
        lon, lat = transform_points(geo.crs, "EPSG:4326", flat[:, 0].tolist(), flat[:, 1].tolist())
        rings = np.stack([np.round(lon, 8), np.round(lat, 8)], axis=1).reshape(self.ring.shape)
        features = [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [rings[i].tolist()]},
                "properties": dict(zip(FIELDS, self._values(i), strict=True)),
            }
            for i in range(len(self.row))
        ]
        return json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":")).encode()

    def _values(self, i: int) -> tuple[int, int, float, float, int]:
        """Cell ``i``'s FIELDS as JSON numbers."""
        row, col, zone = int(self.row[i]), int(self.col[i]), int(self.zone[i])
        return row, col, float(self.cover[i]), float(self.area_m2[i]), zone

    def write_geopackage(self, path: Path, geo: Georeference) -> None:
        # Imported here, after the segmentation: loading pyogrio's own GDAL adds ~70 MiB of RSS,
        # which the segmentation's peak need not carry.
        import pyogrio.raw

        columns = [self.row.astype(np.int32), self.col.astype(np.int32), self.cover, self.area_m2, self.zone]
        with written_beside(path) as temporary, _gdal_config(OGR_CURRENT_DATE=GEOPACKAGE_DATE):
            pyogrio.raw.write(
                temporary, _polygons_wkb(self.ring), columns, list(FIELDS), layer="cover", driver="GPKG",
                geometry_type="Polygon", crs=geo.crs.to_wkt(),
            )  # fmt: skip


def _polygons_wkb(rings: np.ndarray) -> np.ndarray:
    """One-ring polygons as WKB (ISO 19125: little-endian flag, type 3, 1 ring, 5 points, x y
    doubles), the form OGR takes geometries in."""
    record = np.dtype(
        [("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4"), ("xy", "<f8", (5, 2))]
    )
    polygons = np.zeros(len(rings), record)
    polygons["order"], polygons["type"], polygons["rings"], polygons["points"] = 1, 3, 1, 5
    polygons["xy"] = rings
    blob, size = polygons.tobytes(), record.itemsize
    return np.array([blob[i * size : (i + 1) * size] for i in range(len(rings))], dtype=object)


@contextlib.contextmanager
def _gdal_config(**options: str) -> Iterator[None]:
    """Set pyogrio's GDAL configuration options for the block (they are process-wide)."""
    import pyogrio

    before = {name: pyogrio.get_gdal_config_option(name) for name in options}
    pyogrio.set_gdal_config_options(options)
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options(before)


def _write_counts(path: Path, counts: CellCounts, geo: Georeference) -> None:
    """The base counts as a GeoTIFF over the raster (a cell a pixel), with what recomputing needs
    in its tags: rasterio's GeoTIFF writes the same bytes for the same counts."""
    rows, cols = counts.data.shape
    profile = {
        "driver": "GTiff", "width": cols, "height": rows, "count": 2, "dtype": "uint64", "crs": geo.crs,
        "transform": geo.transform * Affine.scale(counts.cell_px), "compress": "deflate",
    }  # fmt: skip
    with written_beside(path) as temporary, rasterio.open(temporary, "w", **profile) as out:
        out.write(np.stack([counts.data, counts.vegetation]).astype(np.uint64))
        out.set_band_description(1, "pixels with data")
        out.set_band_description(2, "vegetation pixels")
        out.update_tags(
            CROPSEG_CELL_COUNTS=COUNTS_FORMAT, CELL_PX=repr(counts.cell_px), PIXEL_SIZE_M=repr(geo.pixel_m),
            RASTER_WIDTH=str(geo.width), RASTER_HEIGHT=str(geo.height),
            RASTER_TRANSFORM=json.dumps(list(geo.transform)[:6]),
        )  # fmt: skip


def read_counts(path: Path) -> tuple[CellCounts, Georeference]:
    """The base counts and georeference a run kept at ``path`` (an ``.cell-counts.tif``)."""
    try:
        with rasterio.open(path) as dataset:
            tags = dataset.tags()
            if tags.get("CROPSEG_CELL_COUNTS") != COUNTS_FORMAT:
                raise CoverError(f"{path.name} holds no cropseg cell counts (format {COUNTS_FORMAT})")
            data, vegetation = dataset.read().astype(np.int64)
            geo = Georeference(
                crs=dataset.crs, transform=Affine(*json.loads(tags["RASTER_TRANSFORM"])),
                width=int(tags["RASTER_WIDTH"]), height=int(tags["RASTER_HEIGHT"]),
                pixel_m=float(tags["PIXEL_SIZE_M"]),
            )  # fmt: skip
    except RasterioError as e:
        raise CoverError(
            f"cannot read the cell counts {path.name} ({e}): recomputing needs the .cell-counts.tif a "
            "segment-raster run writes beside its mask"
        ) from e
    return CellCounts(float(tags["CELL_PX"]), vegetation, data), geo
