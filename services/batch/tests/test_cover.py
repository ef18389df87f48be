"""Cover grid exports: what GDAL reads from each (CRS, cells, geometry, zones), the files agree,
other cell sizes come from the kept counts, and bad choices are named.

The cells are counted from a generated field as segment-raster counts them, with the plants
told apart by colour instead of by the model, so these tests take a second.
"""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
from affine import Affine
from cropseg_batch.cli import main
from cropseg_batch.cover import (
    FIELDS,
    CellCounts,
    CoverError,
    CoverOptions,
    Georeference,
    counting_grid,
    recompute,
    write_cover,
)
from cropseg_batch.fields import ORIGIN, write_field
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

GSD = 0.02
SIDE = 1030
"""20.6 m a side: the last column and row of 2 m cells are 0.6 m wide."""
EXPORTS = ("cover_csv", "cover_geojson", "cover_gpkg")


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_field(tmp_path_factory.mktemp("field") / "field.tif", SIDE, gsd_m=GSD)


def counted(field: Path, options: CoverOptions) -> tuple[CellCounts, Georeference]:
    """The field's cells counted window by window, as segment-raster does; plants are green."""
    with rasterio.open(field) as source:
        geo = Georeference(source.crs, source.transform, source.width, source.height, GSD)
        counts = counting_grid(options, geo)
        for top in range(0, SIDE, 512):
            for left in range(0, SIDE, 512):
                red, green, _, alpha = source.read(window=Window(left, top, 512, 512)).astype(int)
                counts.add(top, left, alpha > 0, (alpha > 0) & (green > red))
    return counts, geo


def utm_raster(side: int) -> Georeference:
    return Georeference(
        rasterio.CRS.from_epsg(32632), Affine(GSD, 0, ORIGIN[0], 0, -GSD, ORIGIN[1]), side, side, GSD
    )


def polygons(wkb: np.ndarray) -> np.ndarray:
    """(features, 5, 2) rings of one-ring polygons in WKB."""
    rings = []
    for blob in wkb:
        order, kind, count, points = struct.unpack_from("<BIII", blob)
        assert (order, kind, count, points) == (1, 3, 1, 5)
        rings.append(np.frombuffer(blob, "<f8", 10, 13).reshape(5, 2))
    return np.array(rings)


def signed_area(rings: np.ndarray) -> np.ndarray:
    x, y = rings[..., 0], rings[..., 1]
    return (x[:, :-1] * y[:, 1:] - x[:, 1:] * y[:, :-1]).sum(axis=1) / 2


def test_each_export_opens_in_gdal_with_its_crs_cells_geometry_and_zones(field: Path, tmp_path: Path) -> None:
    options = CoverOptions(cell_m=2, zones=4)
    counts, geo = counted(field, options)
    summary, outputs = write_cover(tmp_path / "mask.tif", counts, geo, options)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "mask.cell-counts.tif", "mask.cover.csv", "mask.cover.geojson", "mask.cover.gpkg",
    ]  # fmt: skip

    info = pyogrio.read_info(outputs["cover_gpkg"])
    assert (info["crs"], info["geometry_type"], info["layer_name"]) == ("EPSG:32632", "Polygon", "cover")
    assert list(info["fields"]) == list(FIELDS)
    _, _, wkb, columns = pyogrio.raw.read(outputs["cover_gpkg"])
    row, col, cover, area, zone = columns
    with rasterio.open(field) as source:
        alpha = source.read(4) > 0
    cells_in_field = {(y // 100, x // 100) for y, x in zip(*np.nonzero(alpha), strict=True)}
    assert set(zip(row.tolist(), col.tolist(), strict=True)) == cells_in_field
    assert info["features"] == summary.cells == len(cells_in_field)

    # Each polygon is its cell: 2 m from the raster's corner, cut by the raster's right and bottom edges.
    rings = polygons(wkb)
    x0, y0 = ORIGIN
    assert rings.min(axis=1)[:, 0] == pytest.approx(x0 + col * 2.0)
    assert rings.max(axis=1)[:, 0] == pytest.approx(np.minimum(x0 + (col + 1) * 2.0, x0 + SIDE * GSD))
    assert rings.max(axis=1)[:, 1] == pytest.approx(y0 - row * 2.0)
    assert rings.min(axis=1)[:, 1] == pytest.approx(np.maximum(y0 - (row + 1) * 2.0, y0 - SIDE * GSD))
    assert np.all(signed_area(rings) > 0)  # counter-clockwise, as RFC 7946 and OGC ask
    assert area.sum() == pytest.approx(alpha.sum() * GSD**2, abs=0.005 * len(area))

    # Zones: 1 the lowest cover, each cell within the reported breaks, each zone summarised.
    assert sorted(set(zone.tolist())) == [1, 2, 3, 4]
    upper = np.array(summary.breaks)
    lower = np.concatenate([[-np.inf], upper[:-1]])
    assert np.all((lower[zone - 1] < cover) & (cover <= upper[zone - 1]))
    assert [z.cells for z in summary.zones] == np.bincount(zone)[1:].tolist()
    assert [z.max_cover for z in summary.zones] == summary.breaks
    assert sum(z.area_m2 for z in summary.zones) == pytest.approx(area.sum(), abs=0.005 * len(area))
    assert 0.1 < summary.zones[1].mean_cover < summary.zones[2].mean_cover < summary.zones[3].mean_cover

    # The CSV (GDAL reads it too) and the GeoJSON hold the same cells, values and places.
    by_cell = {(r, c): (v, a, z) for r, c, v, a, z in zip(*(x.tolist() for x in columns), strict=True)}
    csv_info = pyogrio.read_info(outputs["cover_csv"])
    assert csv_info["features"] == summary.cells
    assert "zone" in list(csv_info["fields"])
    table = list(csv.DictReader(Path(outputs["cover_csv"]).read_text().splitlines()))
    for line in table:
        value, area_m2, zone_of = by_cell[int(line["row"]), int(line["col"])]
        assert (float(line["vegetation_cover"]), float(line["data_area_m2"]), int(line["zone"])) == (
            value, area_m2, zone_of
        )  # fmt: skip
    csv_low = np.array([[float(line["x_min"]), float(line["y_min"])] for line in table])
    assert csv_low == pytest.approx(rings.min(axis=1), abs=1e-3)

    geojson_info = pyogrio.read_info(outputs["cover_geojson"])
    assert (geojson_info["crs"], geojson_info["features"]) == ("EPSG:4326", summary.cells)
    features = json.loads(Path(outputs["cover_geojson"]).read_text())["features"]
    for feature in features:
        p = feature["properties"]
        assert by_cell[p["row"], p["col"]] == (p["vegetation_cover"], p["data_area_m2"], p["zone"])
    lon, lat = transform_points("EPSG:32632", "EPSG:4326", rings[0, :, 0].tolist(), rings[0, :, 1].tolist())
    first_ring = np.array(features[0]["geometry"]["coordinates"][0])
    assert first_ring == pytest.approx(np.stack([lon, lat], axis=1), abs=1e-8)


def test_the_counts_are_kept_as_a_geotiff_over_the_raster(field: Path, tmp_path: Path) -> None:
    counts, geo = counted(field, CoverOptions(cell_m=10))
    write_cover(tmp_path / "mask.tif", counts, geo, CoverOptions(cell_m=10))
    with rasterio.open(tmp_path / "mask.cell-counts.tif") as kept, rasterio.open(field) as source:
        assert counts.cell_px == 50  # 1 m base cells for 10 m cells
        assert (kept.crs, kept.transform) == (source.crs, source.transform * Affine.scale(50))
        assert kept.shape == (21, 21)  # 20.6 m
        data, vegetation = kept.read()
        assert int(data.sum()) == int((source.read(4) > 0).sum())
        assert 0.1 < vegetation.sum() / data.sum() < 0.3


@pytest.mark.parametrize("pixel_m", [0.02, 0.03], ids=["50-px-base", "33.3-px-base"])
def test_coarser_cells_count_what_counting_at_their_size_counts(pixel_m: float) -> None:
    rng = np.random.default_rng(1)
    data = rng.random((700, 650)) < 0.9
    vegetation = data & (rng.random(data.shape) < 0.2)
    base, direct = CellCounts.empty(1 / pixel_m, 650, 700), CellCounts.empty(3 / pixel_m, 650, 700)
    for counts in (base, direct):
        for top in range(0, 700, 256):
            counts.add(top, 0, data[top : top + 256], vegetation[top : top + 256])
    coarser = base.coarser(3)
    assert coarser.data.shape == direct.data.shape
    assert np.array_equal(coarser.data, direct.data)
    assert np.array_equal(coarser.vegetation, direct.vegetation)


def test_another_cell_size_and_zoning_come_from_the_kept_counts(field: Path, tmp_path: Path) -> None:
    run, direct = tmp_path / "run", tmp_path / "direct"
    counts, geo = counted(field, CoverOptions(cell_m=2))
    write_cover(run / "mask.tif", counts, geo, CoverOptions(cell_m=2))
    wanted = CoverOptions(cell_m=4, zones=5, zone_method="quantile")
    summary, outputs = recompute(run / "mask.tif", wanted)
    write_cover(direct / "mask.tif", *counted(field, wanted), wanted)
    assert (summary.cell_m, summary.zone_method, len(summary.zones)) == (4, "quantile", 5)
    for name in EXPORTS:
        assert Path(outputs[name]).read_bytes() == (direct / Path(outputs[name]).name).read_bytes(), name


def test_a_rerun_writes_the_same_bytes_and_no_temporary_file_stays(field: Path, tmp_path: Path) -> None:
    """A batch keys outputs by content and writes them again, byte for byte, after a kill."""
    options = CoverOptions(cell_m=5)
    counts, geo = counted(field, options)
    _, first = write_cover(tmp_path / "a" / "mask.tif", counts, geo, options)
    _, second = write_cover(tmp_path / "b" / "mask.tif", counts, geo, options)
    for name, path in first.items():
        assert Path(path).read_bytes() == Path(second[name]).read_bytes(), name
    assert len(list((tmp_path / "a").iterdir())) == 4  # the temporary folders are gone


def test_a_raster_without_data_exports_empty_layers(tmp_path: Path) -> None:
    geo = utm_raster(300)
    options = CoverOptions(cell_m=2)
    summary, outputs = write_cover(tmp_path / "mask.tif", counting_grid(options, geo), geo, options)
    assert (summary.cells, summary.breaks, summary.zones, summary.caution()) == (0, [], [], None)
    assert pyogrio.read_info(outputs["cover_gpkg"])["features"] == 0
    assert json.loads(Path(outputs["cover_geojson"]).read_text())["features"] == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cell_m": 0}, "--cell-m must be a positive number"),
        ({"cell_m": float("nan")}, "--cell-m must be a positive number"),
        ({"zones": 1}, "--zones must be 2 to 9"),
        ({"zones": 12}, "--zones must be 2 to 9"),
        ({"zone_method": "kmeans"}, "--zone-method must be one of jenks, quantile"),
    ],
    ids=["zero-cell", "nan-cell", "one-zone", "twelve-zones", "unknown-method"],
)
def test_bad_choices_are_named(options: dict[str, object], message: str) -> None:
    with pytest.raises(CoverError, match=message):
        CoverOptions(**options)  # type: ignore[arg-type]


def test_grids_that_do_not_fit_the_raster_are_refused(field: Path, tmp_path: Path) -> None:
    geo = utm_raster(80_000)
    with pytest.raises(CoverError, match=r"smaller than a pixel .* choose a larger --cell-m"):
        counting_grid(CoverOptions(cell_m=0.01), geo)
    with pytest.raises(CoverError, match=r"into 2560000 cells, more than 1048576: choose at least 2 m"):
        counting_grid(CoverOptions(cell_m=1), geo)
    with pytest.raises(CoverError, match=r"cannot read the cell counts mask\.cell-counts\.tif"):
        recompute(tmp_path / "mask.tif", CoverOptions())
    counts, geo = counted(field, CoverOptions(cell_m=2))
    write_cover(tmp_path / "mask.tif", counts, geo, CoverOptions(cell_m=2))
    with pytest.raises(
        CoverError, match=r"counted cells of 1 m: --cell-m must be a whole multiple.*got 2\.5"
    ):
        recompute(tmp_path / "mask.tif", CoverOptions(cell_m=2.5))


def test_the_cover_command(field: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counts, geo = counted(field, CoverOptions(cell_m=2))
    write_cover(tmp_path / "mask.tif", counts, geo, CoverOptions(cell_m=2))
    mask = str(tmp_path / "mask.tif")
    assert main(["cover", mask, "--cell-m", "5", "--zones", "4", "--report", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "cells of 5 m in 4 zones (jenks)" in printed
    assert "  zone 4 " in printed
    assert "cover_gpkg" in printed
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["cell_m"], len(report["breaks"])) == (5, 4)
    with rasterio.open(field) as source:
        in_field = {(y // 250, x // 250) for y, x in zip(*np.nonzero(source.read(4)), strict=True)}
    assert pyogrio.read_info(tmp_path / "mask.cover.gpkg")["features"] == report["cells"] == len(in_field)

    assert main(["cover", mask, "--cell-m", "2.5"]) == 2
    assert "cropseg: error: the run counted cells of 1 m" in capsys.readouterr().err
    assert main(["segment-raster", str(field), str(tmp_path / "m.tif"), "--zones", "12"]) == 2
    assert "cropseg: error: --zones must be 2 to 9 (got 12)" in capsys.readouterr().err
    assert main(["segment-raster", str(field), str(tmp_path / "m.tif"), "--cell-m", "-5"]) == 2
    assert "--cell-m must be a positive number of metres" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["cover", mask, "--zone-method", "kmeans"])
    assert exit_.value.code == 2
    assert "invalid choice: 'kmeans'" in capsys.readouterr().err
