"""The Fields page in headless Chromium against a real storage process and a real field worker.

A generated orthomosaic is uploaded through the page (tus, in 1 MiB chunks so that it takes
several), segmented by ``cropseg field-worker`` and shown on the map; the exports are
downloaded by the browser and opened. Screenshots land in var/test-artifacts/fields-ui/.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyogrio
import pytest
import rasterio
from cropseg_batch.fields import write_field
from PIL import Image
from test_ui_end_to_end import LAYOUT_PROBLEMS, VIEWPORTS

from cropseg_core.processes import free_port, running_service, stop

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "var" / "test-artifacts" / "fields-ui"
MODEL = REPO / "model" / "artifacts" / "cropseg-unet.onnx"
SIDE_PX = 3000  # 150 m at 5 cm: 9 MP, 225 cells of 10 m
CHUNK_BYTES = 1024 * 1024


@contextmanager
def field_stack(folder: Path, **settings: str) -> Iterator[str]:
    """Storage (1 MiB tus chunks, and ``settings`` as STORAGE_FIELDS__*) and a field worker polling
    its store; storage's URL."""
    data, port = folder / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {"STORAGE_LOG_LEVEL": "WARNING", "STORAGE_FIELDS__MAX_CHUNK_BYTES": str(CHUNK_BYTES)}
    environment |= {f"STORAGE_FIELDS__{name.upper()}": value for name, value in settings.items()}
    storage = [sys.executable, "-m", "cropseg_storage", "--port", str(port), "--data", str(data)]
    with running_service(
        storage, f"{url}/healthz", env=environment, cwd=REPO, log_path=folder / "storage.log"
    ):
        worker_log = (folder / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "cropseg_batch", "field-worker", "--store", str(data), "--work",
             str(folder / "work"), "--model", str(MODEL), "--poll-s", "0.5"],
            cwd=REPO, stdout=worker_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield url
        finally:
            stop(worker)
            worker_log.close()


@pytest.fixture(scope="module")
def field_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with field_stack(tmp_path_factory.mktemp("fields-ui")) as url:
        yield url


@pytest.fixture(scope="module")
def orthomosaic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_field(tmp_path_factory.mktemp("orthomosaic") / "north field.tif", SIDE_PX, gsd_m=0.05)


def watch_errors(page: Page) -> list[str]:
    """Uncaught exceptions and console errors of ``page``, as they come."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"exception: {error}"))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    return errors


@pytest.mark.parametrize("viewport", ["laptop", "phone"])
def test_field_uploaded_segmented_and_mapped(
    browser: Browser, field_service: str, orthomosaic: Path, tmp_path: Path, viewport: str
) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    width, height = VIEWPORTS[viewport]
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    errors = watch_errors(page)
    page.goto(f"{field_service}/#/fields")
    page.fill("#field-name", f"North field {viewport}")
    page.set_input_files("#field-file", str(orthomosaic))
    expect(page.locator("#field-upload-text")).to_contain_text("Uploaded", timeout=60_000)
    assert page.locator("#field-upload-bar").evaluate("bar => bar.value") == 100
    expect(page.locator("#field-title")).to_have_text(f"North field {viewport}")
    expect(page.locator("#field-caption")).to_contain_text("3,000 × 3,000 px")
    expect(page.locator("#field-caption")).to_contain_text("EPSG:32632")
    expect(page.locator("#job-status")).to_have_text("done", timeout=120_000)
    expect(page.locator("#field-results")).to_be_visible()

    field_id = page.url.rsplit("/", 1)[1]
    report = page.request.get(f"{field_service}/api/v1/fields/{field_id}/results/report.json").json()
    cover = report["cover"]
    assert report["width"] == SIDE_PX
    assert cover["cell_m"] == 10
    assert cover["cells"] > 100
    # the map: the field's image in place and one path per cell
    overlay = page.locator("#field-map img.leaflet-image-layer")
    expect(overlay).to_have_attribute("src", f"/api/v1/fields/{field_id}/results/map.png")
    page.wait_for_function(
        "() => document.querySelector('#field-map img.leaflet-image-layer').naturalWidth > 0"
    )
    cells = page.locator("#field-map path.leaflet-interactive")
    expect(cells).to_have_count(cover["cells"])
    # totals, legend and histogram as the report has them
    expect(page.locator("#field-cover")).to_have_text(f"{100 * report['vegetation_fraction']:.1f} %")
    expect(page.locator("#field-area")).to_have_text(f"{report['area_m2'] / 10_000:.2f} ha")
    legend = page.locator("#field-legend tbody tr")
    expect(legend).to_have_count(len(cover["zones"]))
    for row, zone in zip(legend.all(), cover["zones"], strict=True):
        expect(row.locator("td").nth(2)).to_have_text(str(zone["cells"]))
    bars = page.locator("#field-histogram rect.bar")
    heights = [float(bar.get_attribute("height") or 0) for bar in bars.all()]
    assert heights
    assert max(heights) > 50
    # hovering a cell names its cover
    middle = cells.nth(cover["cells"] // 2)
    middle.scroll_into_view_if_needed()
    middle.hover()
    expect(page.locator(".leaflet-tooltip")).to_contain_text("vegetation cover")
    page.mouse.move(0, 0)
    page.screenshot(path=ARTIFACTS / f"field-{width}x{height}.png", full_page=True)
    assert page.evaluate(LAYOUT_PROBLEMS) == []

    downloads = {}
    for name in ("mask.tif", "cover.geojson", "cover.csv", "cover.gpkg", "report.json"):
        with page.expect_download() as download:
            page.click(f'#field-exports a[data-result="{name}"]')
        downloads[name] = tmp_path / download.value.suggested_filename
        download.value.save_as(downloads[name])
    assert downloads["mask.tif"].name == f"North field {viewport}.mask.tif"
    with rasterio.open(downloads["mask.tif"]) as mask:
        assert (mask.width, mask.height, mask.crs.to_epsg()) == (SIDE_PX, SIDE_PX, 32632)
        assert mask.overviews(1), "a COG has overviews"
    geojson = json.loads(downloads["cover.geojson"].read_text())
    assert len(geojson["features"]) == cover["cells"]
    rings = [feature["geometry"]["coordinates"][0] for feature in geojson["features"]]
    lon, lat = np.array(rings).reshape(-1, 2).T
    west, south, east, north = report["map_bounds"]  # the cells lie on the field's box (1e-4° ~ 10 m)
    assert west - 1e-4 < lon.min() < lon.max() < east + 1e-4
    assert south - 1e-4 < lat.min() < lat.max() < north + 1e-4
    csv_lines = downloads["cover.csv"].read_text().splitlines()
    assert csv_lines[0].startswith("row,col,")
    assert len(csv_lines) == cover["cells"] + 1
    info = pyogrio.read_info(downloads["cover.gpkg"])
    assert info["features"] == cover["cells"]
    assert info["crs"] == "EPSG:32632"
    assert json.loads(downloads["report.json"].read_text()) == report
    page.close()
    assert errors == []


def test_wrong_files_are_refused_saying_why(browser: Browser, field_service: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = watch_errors(page)
    page.goto(f"{field_service}/#/fields")
    picture = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(picture, format="PNG")
    (tmp_path / "photo.png").write_bytes(picture.getvalue())
    page.set_input_files("#field-file", str(tmp_path / "photo.png"))
    alert = page.locator("#alert-text")
    expect(alert).to_contain_text("photo.png is not a GeoTIFF: choose a .tif or .tiff file")

    (tmp_path / "renamed.tif").write_bytes(picture.getvalue())  # the name passes; the server reads the bytes
    page.set_input_files("#field-file", str(tmp_path / "renamed.tif"))
    expect(alert).to_contain_text("renamed.tif was not uploaded: the file is not a TIFF", timeout=30_000)
    expect(alert).to_contain_text("export the orthomosaic as a GeoTIFF (HTTP 415)")
    expect(page.locator("#field-upload-text")).to_contain_text("Not uploaded")
    assert page.locator("#field-file").is_enabled()
    assert page.locator("#field-upload-bar").evaluate("bar => bar.value") == 0
    page.screenshot(path=ARTIFACTS / "refused-1280x800.png", full_page=True)
    page.close()
    # the browser logs the refused request itself; nothing else may go wrong
    assert [error for error in errors if "status of 415" not in error] == []


def test_segmenting_shows_progress_and_cancels(browser: Browser, field_service: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    large = write_field(tmp_path / "large.tif", 6000, gsd_m=0.05)  # 36 MP: 16 windows, tens of seconds
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = watch_errors(page)
    page.goto(f"{field_service}/#/fields")
    page.set_input_files("#field-file", str(large))
    expect(page.locator("#job-status")).to_have_text("segmenting", timeout=60_000)
    progress = page.locator("#job-text")
    under_way = re.compile(r"^\d+\.\d % · [1-9]\d* of 16 windows · .+ left · [\d.]+ MP/s")
    expect(progress).to_contain_text(under_way)
    assert 0 < page.locator("#job-bar").evaluate("bar => bar.value") < 100
    expect(page.locator("#field-segment")).to_be_disabled()
    page.click("#job-cancel")
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=60_000)
    expect(progress).to_contain_text(re.compile(r"stopped after \d+ of 16 windows"))
    expect(page.locator("#job-cancel")).to_be_hidden()
    expect(page.locator("#field-segment")).to_be_enabled()
    expect(page.locator("#field-results")).to_be_hidden()
    page.close()
    assert errors == []


def test_cut_upload_resumes_where_it_stopped(browser: Browser, field_service: str, orthomosaic: Path) -> None:
    """The connection drops during the third chunk and the tab is reloaded; the same file chosen
    again goes on from the server's offset (tus HEAD), not from 0."""
    from playwright.sync_api import Route, expect

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    offsets: list[int] = []
    cut, resumed = [False], [False]

    def chunk(route: Route) -> None:
        if route.request.method != "PATCH":
            route.continue_()
            return
        offsets.append(int(route.request.headers["upload-offset"]))
        cut[0] = cut[0] or (len(offsets) == 3 and not resumed[0])
        route.abort() if cut[0] else route.continue_()

    page.route("**/api/v1/fields/uploads/*", chunk)
    page.goto(f"{field_service}/#/fields")
    page.uncheck("#field-autostart")
    page.set_input_files("#field-file", str(orthomosaic))
    page.wait_for_function("() => document.querySelector('#field-upload-bar').value > 0")
    while not cut[0]:
        page.wait_for_timeout(20)
    page.reload()
    assert offsets[:3] == [0, CHUNK_BYTES, 2 * CHUNK_BYTES]
    offsets.clear()
    cut[0], resumed[0] = False, True
    page.uncheck("#field-autostart")
    page.set_input_files("#field-file", str(orthomosaic))
    expect(page.locator("#field-upload-text")).to_contain_text("Uploaded", timeout=60_000)
    assert offsets[0] == 2 * CHUNK_BYTES  # the two chunks the server had were not sent again
    assert len(offsets) == -(-orthomosaic.stat().st_size // CHUNK_BYTES) - 2
    expect(page.locator("#field-caption")).to_contain_text("3,000 × 3,000 px")
    page.close()


@pytest.fixture
def tile_server() -> Iterator[tuple[str, list[str]]]:
    """A loopback XYZ tile server answering every tile with one grey PNG; and the paths asked."""
    tile = io.BytesIO()
    Image.fromarray(np.full((256, 256, 3), 200, np.uint8)).save(tile, format="PNG")
    asked: list[str] = []

    class Tiles(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(tile.getvalue())))
            self.end_headers()
            self.wfile.write(tile.getvalue())

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Tiles)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_a_configured_basemap_is_drawn_under_the_field(
    browser: Browser, tile_server: tuple[str, list[str]], tmp_path: Path
) -> None:
    """STORAGE_FIELDS__MAP_TILES puts a tile layer under the field, credited, and the page's
    policy lets exactly that host's images in (no console error)."""
    from playwright.sync_api import expect

    tiles, asked = tile_server
    field = write_field(tmp_path / "small.tif", 1500, gsd_m=0.05)
    with field_stack(
        tmp_path, map_tiles=f"{tiles}/{{z}}/{{x}}/{{y}}.png", map_attribution="Test tiles"
    ) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = watch_errors(page)
        page.goto(f"{url}/#/fields")
        page.set_input_files("#field-file", str(field))
        expect(page.locator("#job-status")).to_have_text("done", timeout=120_000)
        tile_images = page.locator("#field-map img.leaflet-tile")
        expect(tile_images.first).to_be_visible(timeout=30_000)
        page.wait_for_function("() => document.querySelector('#field-map img.leaflet-tile-loaded')")
        expect(page.locator("#field-map .leaflet-control-attribution")).to_contain_text("Test tiles")
        assert asked
        assert all(re.fullmatch(r"/\d+/\d+/\d+\.png", path) for path in asked), asked
        page.close()
    assert errors == []
