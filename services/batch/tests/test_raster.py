"""Orthomosaics window by window: seamless, georeferenced, bounded in memory, clear about bad input."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from cropseg_batch.cli import main
from cropseg_batch.cover import CoverOptions
from cropseg_batch.fields import write_field
from cropseg_batch.raster import NODATA, VEGETATION, RasterError, segment_raster
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from cropseg_core.model import LoadedModel

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "model/artifacts/cropseg-unet.onnx"


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return LoadedModel.load(MODEL)


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_field(tmp_path_factory.mktemp("field") / "field.tif", 1300)


@pytest.mark.slow
def test_windows_leave_no_seam(model: LoadedModel, field: Path, tmp_path: Path) -> None:
    """Nine 512-px windows give the mask one window over the whole raster gives, but for a few
    pixels: the EfficientNet encoder of model 2.0.0 sees past the windows' overlap, and here
    548 of 1.69 M pixels (3.2e-4) differ (services/core/tests/test_tiling.py measures the
    same on tiles)."""
    small = segment_raster(field, tmp_path / "small.tif", model, window=512)
    whole = segment_raster(field, tmp_path / "whole.tif", model, window=2048)
    with rasterio.open(tmp_path / "small.tif") as a, rasterio.open(tmp_path / "whole.tif") as b:
        differ = np.count_nonzero(a.read(1) != b.read(1))
    assert differ <= 1300 * 1300 * 5e-4
    assert abs(small.vegetation_fraction - whole.vegetation_fraction) < 1e-3


@pytest.mark.slow
def test_the_mask_keeps_the_georeference_and_the_nodata(
    model: LoadedModel, field: Path, tmp_path: Path
) -> None:
    report = segment_raster(field, tmp_path / "mask.tif", model, cover=CoverOptions(cell_m=5))
    with rasterio.open(field) as source, rasterio.open(tmp_path / "mask.tif") as mask:
        assert (mask.crs, mask.transform, mask.shape) == (source.crs, source.transform, source.shape)
        assert (mask.count, mask.dtypes[0], mask.nodata) == (1, "uint8", NODATA)
        assert mask.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert mask.overviews(1)  # a viewer zoomed out reads the overview, not the whole mask
        classes, alpha = mask.read(1), source.read(4)
    assert set(np.unique(classes)) == {0, VEGETATION, NODATA}
    assert np.array_equal(classes == NODATA, alpha == 0)
    in_field = classes != NODATA
    assert report.vegetation_fraction == pytest.approx((classes == VEGETATION).sum() / in_field.sum())
    assert report.pixel_size_m == pytest.approx(0.02)
    assert 0.1 < report.vegetation_fraction < 0.3  # the generated field's plants
    assert report.crs == "EPSG:32632"


@pytest.mark.slow
def test_cover_per_cell_adds_up_to_the_field(model: LoadedModel, field: Path, tmp_path: Path) -> None:
    report = segment_raster(field, tmp_path / "mask.tif", model, cover=CoverOptions(cell_m=5))  # 250 px cells
    rows = list(csv.DictReader((tmp_path / "mask.cover.csv").read_text().splitlines()))
    area = np.array([float(row["data_area_m2"]) for row in rows])
    cover = np.array([float(row["vegetation_cover"]) for row in rows])
    with rasterio.open(field) as source:
        in_field = source.read(4) > 0
    cells_in_field = {(y // 250, x // 250) for y, x in zip(*np.nonzero(in_field), strict=True)}
    assert {(int(row["row"]), int(row["col"])) for row in rows} == cells_in_field  # 6 x 6 but the corners
    assert (cover * area).sum() / area.sum() == pytest.approx(report.vegetation_fraction, abs=1e-3)
    assert area.sum() == pytest.approx(report.data_fraction * 1300 * 1300 * 0.02**2, abs=0.005 * len(rows))
    geojson = json.loads((tmp_path / "mask.cover.geojson").read_text())
    assert len(geojson["features"]) == len(rows)
    lon, lat = geojson["features"][0]["geometry"]["coordinates"][0][0]
    assert 8.9 < lon < 9.1  # UTM 32N (500 km, 5300 km): southern Germany
    assert 47.8 < lat < 47.9
    assert report.cover is not None
    assert report.cover.cells == len(rows)
    assert {int(row["zone"]) for row in rows} == {1, 2, 3}  # the default: 3 zones by natural breaks
    assert pyogrio.read_info(tmp_path / "mask.cover.gpkg")["features"] == len(rows)
    with Image.open(tmp_path / "mask.preview.png") as preview:
        assert max(preview.size) <= 1024


@pytest.mark.slow
def test_a_raster_without_georeference_is_segmented_with_a_warning(
    model: LoadedModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain = write_field(tmp_path / "plain.tif", 700, georeferenced=False)
    report = segment_raster(plain, tmp_path / "mask.tif", model)
    assert "no georeference" in report.warnings[0]
    assert "no georeference" in caplog.text
    assert set(report.outputs) == {"mask", "preview"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "mask.tif") as mask:
            assert mask.crs is None
            assert mask.shape == (700, 700)


def write_raster(path: Path, bands: int, dtype: str) -> Path:
    data = np.random.default_rng(0).integers(0, 200, (bands, 300, 300)).astype(dtype)
    profile = {"driver": "GTiff", "width": 300, "height": 300, "count": bands, "dtype": dtype,
               "crs": "EPSG:32632", "transform": from_origin(500_000, 5_300_000, 0.02, 0.02)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as out:
        out.write(data)
    return path


def test_unsupported_data_types_and_band_counts_are_named(model: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(RasterError, match=r"1 band\(s\) of uint16.*8-bit"):
        segment_raster(write_raster(tmp_path / "a.tif", 1, "uint16"), tmp_path / "m.tif", model)
    five = write_raster(tmp_path / "five.tif", 5, "uint8")
    with pytest.raises(
        RasterError, match=r"layout 'rgb' .* needs 1, 2, 3 or 4 bands, but the raster has 5 band\(s\)"
    ):
        segment_raster(five, tmp_path / "m.tif", model)
    report = segment_raster(five, tmp_path / "m.tif", model, layout="rgbn", bands=[3, 2, 1, 5])
    assert report.bands == [3, 2, 1, 5]
    with pytest.raises(RasterError, match="names a band the raster does not have"):
        segment_raster(five, tmp_path / "m.tif", model, bands=[1, 2, 9])


def test_a_truncated_raster_fails_clearly_and_leaves_no_output(
    model: LoadedModel, field: Path, tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(field.read_bytes()[: field.stat().st_size // 2])
    with pytest.raises(RasterError, match=r"truncated\.tif"):
        segment_raster(truncated, tmp_path / "out" / "mask.tif", model)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_the_command_line(field: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mask.tif"
    code = main(
        ["segment-raster", str(field), str(out), "--model", str(MODEL), "--report", str(tmp_path / "r.json")]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "1300 x 1300 px" in printed.out
    assert "cover_geojson" in printed.out
    assert "cover_gpkg" in printed.out
    assert "cells of 10 m in 3 zones (jenks)" in printed.out
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["width"] == 1300
    assert len(written["cover"]["breaks"]) == 3
    assert main(["segment-raster", str(tmp_path / "none.tif"), str(out), "--model", str(MODEL)]) == 2
    assert "cropseg: error: no raster at" in capsys.readouterr().err
    assert main(["segment-raster", str(field), str(out), "--model", str(MODEL), "--scale", "5"]) == 2
    assert "scale must be between" in capsys.readouterr().err


def peak_rss_mib(side: int, folder: Path) -> float:
    """Peak RSS of `cropseg segment-raster` on a generated ``side`` px field (at scale 1/4)."""
    raster = write_field(folder / f"field{side}.tif", side)
    script = (
        "import resource, sys; from cropseg_batch.cli import main; code = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "segment-raster", str(raster), str(folder / f"mask{side}.tif"),
         "--model", str(MODEL), "--scale", "0.25", "--window", "1024"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    return int(re.findall(r"^(\d+)$", result.stdout, re.MULTILINE)[-1]) / 1024


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_raster(tmp_path: Path) -> None:
    """16 times the pixels, the same peak: memory is a window's, not the raster's."""
    small, large = peak_rss_mib(1024, tmp_path), peak_rss_mib(4096, tmp_path)
    assert large < small * 1.1 + 16, f"{small:.0f} MiB for 1024 px, {large:.0f} MiB for 4096 px"
