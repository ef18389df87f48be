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
    from playwright.sync_api import Browser

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
    page.locator("#gallery button").first.click()
    expect(page.locator("#view-original")).to_be_visible()
    page.click("#segment-button")
    expect(page.locator("#stats")).to_be_visible(timeout=30_000)
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
