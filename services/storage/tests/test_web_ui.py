"""The web UI in a real headless Chromium against real inference and storage processes.

Screenshots land in var/test-artifacts/ui/ (kept by CI as artefacts of the run).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from storage_testing import REPO, encode

from cropseg_core.bands import from_model_bands, get_layout
from cropseg_model.synth import generate_tile

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "var" / "test-artifacts" / "ui"
MODEL_VERSION = json.loads((REPO / "model" / "artifacts" / "metrics.json").read_text())["model"]["version"]


@pytest.fixture(scope="module", autouse=True)
def artifacts() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


def test_upload_segment_and_see_mask_and_metrics(
    browser: Browser, live_stack: dict[str, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    tile, encoded, ext = generate_tile(11, 2)
    image = tmp_path / f"my-field.{ext}"
    image.write_bytes(encoded)
    label = tmp_path / "my-field-mask.png"
    label.write_bytes(encode(tile.mask))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(live_stack["storage"])
    expect(page.locator("#gallery button")).to_have_count(9)
    page.locator("summary").click()
    page.set_input_files("#label-input", str(label))
    page.set_input_files("#file-input", str(image))
    expect(page.locator("#alert-text")).to_contain_text("Stored my-field")
    expect(page.locator("#uploads button")).to_have_count(1)
    expect(page.locator("#view-label")).to_be_visible()
    page.click("#segment-button")
    expect(page.locator("#stats")).to_be_visible(timeout=30_000)
    expect(page.locator("#view-mask")).to_be_visible()
    expect(page.locator("#view-overlay")).to_be_visible()
    expect(page.locator("#stat-model")).to_have_text(f"cropseg-unet {MODEL_VERSION}")
    expect(page.locator("#stat-iou")).to_have_text(re.compile(r"0\.\d{3}"))
    iou = float(page.locator("#stat-iou").inner_text())
    fraction = float(page.locator("#stat-fraction").inner_text().split()[0]) / 100
    assert iou > 0.75
    assert abs(fraction - float(tile.meta["vegetation_fraction"])) < 0.05
    assert page.evaluate("document.getElementById('view-mask').naturalWidth") == tile.image.shape[1]
    page.screenshot(path=ARTIFACTS / "segment.png", full_page=True)
    assert errors == []


def test_a_tile_outside_the_field_is_labelled_not_shown_as_a_broken_image(
    browser: Browser, live_stack: dict[str, str]
) -> None:
    import httpx
    from playwright.sync_api import expect

    black = encode(np.zeros((60, 80, 3), np.uint8))  # beyond an orthomosaic's footprint
    edge = np.full((60, 80, 3), 120, np.uint8)
    edge[:, :40] = 0  # half outside
    for body in (black, encode(edge)):
        assert httpx.post(f"{live_stack['storage']}/api/v1/images", content=body,
                          headers={"content-type": "image/png"}).status_code in (200, 201)  # fmt: skip
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(live_stack["storage"])
    tags = page.locator("#uploads .tag.out-of-field")
    expect(tags.filter(has_text="no field: all black")).to_have_count(1)
    expect(tags.filter(has_text="50 % out of field")).to_have_count(1)
    page.close()


def test_a_colour_infrared_upload_is_read_in_its_layout_and_the_layout_can_be_changed(
    browser: Browser, live_stack: dict[str, str], tmp_path: Path
) -> None:
    """Declared CIR on upload, the picture is the false-colour composite and the mask is good;
    switched to rgb in the UI, the same file is read another way (and the IoU shows it)."""
    from playwright.sync_api import expect

    tile = next(t for t in (generate_tile(12, i)[0] for i in range(40)) if t.meta["black"] == "none")
    image = tmp_path / "cir-field.png"
    image.write_bytes(encode(from_model_bands(tile.image, get_layout("cir"))))
    label = tmp_path / "cir-field-mask.png"
    label.write_bytes(encode(tile.mask))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(live_stack["storage"])
    expect(page.locator("#layout-input option")).to_have_count(5)
    page.select_option("#layout-input", "cir")
    page.locator("summary").click()
    page.set_input_files("#label-input", str(label))
    page.set_input_files("#file-input", str(image))
    expect(page.locator("#alert-text")).to_contain_text("Stored cir-field")
    expect(page.locator("#layout-select")).to_have_value("cir")
    page.click("#segment-button")
    expect(page.locator("#stat-layout")).to_have_text("cir", timeout=30_000)
    expect(page.locator("#stat-iou")).to_have_text(re.compile(r"0\.\d{3}"))
    cir_iou = float(page.locator("#stat-iou").inner_text())
    assert cir_iou > 0.75
    # Leaves are purple in colour infrared: the overlay and its legend are yellow there.
    assert page.evaluate("getComputedStyle(document.getElementById('legend-swatch')).backgroundColor") == (
        "rgb(255, 255, 0)"
    )
    page.screenshot(path=ARTIFACTS / "segment-cir.png", full_page=True)
    page.select_option("#layout-select", "rgb")
    expect(page.locator("#alert-text")).to_contain_text("Layout set to rgb")
    page.click("#segment-button")
    expect(page.locator("#stat-layout")).to_contain_text("rgb", timeout=30_000)
    expect(page.locator("#stat-iou")).not_to_have_text(f"{cir_iou:.3f}")
    assert errors == []


def test_pick_a_sample_at_phone_width(browser: Browser, live_stack: dict[str, str]) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(live_stack["storage"])
    expect(page.locator("#gallery button")).to_have_count(9)
    expect(page.locator("#gallery-real button")).to_have_count(4)  # real CC BY-SA photos beside them
    page.locator("#gallery-real button").first.click()
    expect(page.locator("#image-credit")).to_contain_text("ETH Zurich")
    expect(page.locator("#image-credit")).to_contain_text("CC BY-SA 4.0")
    expect(page.locator("#view-original")).to_be_visible()
    expect(page.locator("#view-label")).to_be_visible()
    expect(page.locator("#label-action")).to_be_hidden()  # a sample's exact label is everyone's
    expect(page.locator("#delete-button")).to_be_hidden()
    page.click("#segment-button")
    expect(page.locator("#stats")).to_be_visible(timeout=30_000)
    expect(page.locator("#stat-iou")).to_have_text(re.compile(r"[01]\.\d{3}"))
    expect(page.locator("#explain")).to_be_visible()
    assert stats_rows(page) == [2, 2, 2]
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    page.screenshot(path=ARTIFACTS / "segment-phone.png", full_page=True)


def test_bad_upload_shows_a_readable_error(
    browser: Browser, live_stack: dict[str, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    notes = tmp_path / "notes.png"
    notes.write_text("these are field notes, not an image")
    page = browser.new_page()
    page.goto(live_stack["storage"])
    page.set_input_files("#file-input", str(notes))
    expect(page.locator("#alert")).to_be_visible()
    expect(page.locator("#alert-text")).to_contain_text(
        "Upload failed: the data is not a PNG, JPEG, TIFF image"
    )
    page.screenshot(path=ARTIFACTS / "upload-error.png")


def test_status_and_drift_pages(browser: Browser, live_stack: dict[str, str]) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(f"{live_stack['storage']}/#/status")
    expect(page.locator('[data-service="inference"] .badge')).to_have_text("up", timeout=10_000)
    expect(page.locator('[data-service="storage"] .badge')).to_have_text("up")
    expect(page.locator('[data-service="drift-monitor"] .badge')).to_have_text("down")
    expect(page.locator("#status-incidents")).to_contain_text("drift-monitor")
    # Uptime over the time actually measured (this stack started seconds ago), not "over 7 days".
    expect(page.locator('[data-service="inference"]')).to_contain_text(
        re.compile(r"uptime [\d.]+ % over the last 1 min \(\d+ checks\)")
    )
    page.screenshot(path=ARTIFACTS / "status.png", full_page=True)
    page.click("nav a[data-page=drift]")
    expect(page.locator("#drift-list")).to_contain_text(
        "drift monitor at http://127.0.0.1:8003 is not reachable"
    )
    page.screenshot(path=ARTIFACTS / "drift-unreachable.png")


def stats_rows(page: Page) -> list[int]:
    """How many visible stat cards sit on each row, top to bottom."""
    tops: list[int] = page.evaluate(
        "[...document.querySelectorAll('#stats > div')].filter((d) => d.offsetParent)"
        ".map((d) => Math.round(d.getBoundingClientRect().top))"
    )
    return [tops.count(top) for top in sorted(set(tops))]


def test_a_drone_tiff_its_label_warnings_downloads_and_delete(
    browser: Browser, live_stack: dict[str, str], tmp_path: Path
) -> None:
    """Issue 31 in one flow at 1280x800: a TIFF shows as a picture; a failed picture does not hide
    the segmentation; legend, score explanations and downloads; a label added later; stats fit;
    alerts do not outlive their page; a grey image is segmented with a warning; delete."""
    import httpx
    from playwright.sync_api import expect

    tile = next(t for t in (generate_tile(13, i)[0] for i in range(40)) if t.meta["black"] == "none")
    drone = tmp_path / "drone-export.tif"
    drone.write_bytes(encode(from_model_bands(tile.image, get_layout("rgb")), "TIFF"))
    label = tmp_path / "drone-export-mask.png"
    label.write_bytes(encode(tile.mask))
    grey = tmp_path / "grey-field.png"
    grey.write_bytes(encode(np.repeat(from_model_bands(tile.image, get_layout("rgb"))[..., 1:2], 3, axis=2)))
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(live_stack["storage"])

    page.set_input_files("#file-input", str(drone))
    expect(page.locator("#alert-text")).to_contain_text("Stored drone-export.tif")
    expect(page.locator("#view-original")).to_be_visible()
    assert page.evaluate("document.getElementById('view-original').naturalWidth") == tile.image.shape[1]
    page.click("#segment-button")
    expect(page.locator("#stats")).to_be_visible(timeout=30_000)
    expect(page.locator("#explain")).to_contain_text("Overlay: vegetation the model found")
    expect(page.locator("#explain")).to_contain_text("white = vegetation, black = soil")
    assert page.evaluate("getComputedStyle(document.getElementById('legend-swatch')).backgroundColor") == (
        "rgb(255, 0, 255)"
    )
    expect(page.locator("#explain-scores")).to_be_hidden()  # no ground truth yet: no scores
    assert stats_rows(page) == [4]
    for link, media_type in (("#download-mask", "image/png"), ("#download-mask-tiff", "image/tiff"),
                             ("#download-overlay", "image/png")):  # fmt: skip
        href = page.locator(link).get_attribute("href")
        assert href is not None
        assert httpx.get(live_stack["storage"] + href).headers["content-type"] == media_type

    page.set_input_files("#label-replace", str(label))
    expect(page.locator("#alert-text")).to_contain_text("Ground truth of drone-export.tif saved")
    expect(page.locator("#stat-iou")).to_have_text(re.compile(r"0\.\d{3}"))
    expect(page.locator("#explain-scores")).to_contain_text("stays high when most of the picture is soil")
    expect(page.locator("#label-replace-text")).to_have_text("Replace ground truth")
    assert stats_rows(page) == [3, 3]  # no card alone on a row
    model = page.locator("#stat-model")
    assert model.evaluate("(dd) => dd.scrollWidth <= dd.clientWidth && dd.getClientRects().length === 1")
    page.screenshot(path=ARTIFACTS / "segment-tiff-1280.png", full_page=True)

    # The picture fails to load: the stored segmentation is shown all the same.
    page.route("**/picture?*", lambda route: route.abort())
    page.locator(f'#uploads button[data-id="{page_image_id(page)}"]').click()
    expect(page.locator("#alert-text")).to_contain_text(
        "Could not show the original picture of drone-export.tif"
    )
    expect(page.locator("#slot-original")).to_have_attribute(
        "data-empty", "the original picture could not be shown"
    )
    expect(page.locator("#view-overlay")).to_be_visible()
    expect(page.locator("#stat-iou")).to_have_text(re.compile(r"0\.\d{3}"))
    page.screenshot(path=ARTIFACTS / "segment-picture-failed.png")
    page.unroute("**/picture?*")

    page.click("nav a[data-page=drift]")  # an alert belongs to its page
    expect(page.locator("#alert")).to_be_hidden()
    page.click("nav a[data-page=segment]")
    page.set_input_files("#file-input", str(notes))
    expect(page.locator("#alert-text")).to_contain_text("Upload failed")
    page.locator("#gallery button").first.click()  # a new selection clears it too
    expect(page.locator("#alert")).to_be_hidden()

    page.set_input_files("#file-input", str(grey))
    expect(page.locator("#alert-text")).to_contain_text("Stored grey-field.png")
    page.click("#segment-button")
    expect(page.locator("#result-warning")).to_contain_text("cannot be read as true colour", timeout=30_000)
    page.screenshot(path=ARTIFACTS / "segment-grey-warning.png", full_page=True)

    grey_id = page_image_id(page)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-button")
    expect(page.locator("#alert-text")).to_have_text("Deleted grey-field.png.")
    expect(page.locator(f'#uploads button[data-id="{grey_id}"]')).to_have_count(0)
    expect(page.locator("#result")).to_be_hidden()
    assert httpx.get(f"{live_stack['storage']}/api/v1/images/{grey_id}/metadata").status_code == 404
    assert errors == []
    page.close()


def page_image_id(page: Page) -> str:
    """The full id of the selected image (the caption shows only its start)."""
    selected: str = page.evaluate("state.selected.id")
    return selected
