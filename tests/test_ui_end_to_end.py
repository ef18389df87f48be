"""The web UI against the whole running system in headless Chromium.

Screenshots land in var/test-artifacts/ui-e2e/.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from cropseg_stack.launcher import Stack

from cropseg_core.masks import encode_png
from cropseg_model.synth import generate_tile

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "var" / "test-artifacts" / "ui-e2e"


def test_upload_segment_drift_and_status_pages(browser: Browser, system: Stack, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    storage = system.urls()["storage"]
    tile, encoded, ext = generate_tile(51, 1)
    (tmp_path / f"field.{ext}").write_bytes(encoded)
    (tmp_path / "field-mask.png").write_bytes(encode_png(tile.mask))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(storage)
    expect(page.locator("#gallery button")).to_have_count(9)
    page.locator("summary").click()
    page.set_input_files("#label-input", str(tmp_path / "field-mask.png"))
    page.set_input_files("#file-input", str(tmp_path / f"field.{ext}"))
    expect(page.locator("#view-label")).to_be_visible()
    page.click("#segment-button")
    expect(page.locator("#stats")).to_be_visible(timeout=30_000)
    assert float(page.locator("#stat-iou").inner_text()) > 0.75
    page.screenshot(path=ARTIFACTS / "1-segment.png", full_page=True)

    # a drift report to show: enough segmented uploads, then the CronJob's command
    with httpx.Client(base_url=storage, timeout=60) as client:
        for index in range(22):
            image = np.ascontiguousarray(generate_tile(52, index)[0].rgb)
            stored = client.post(
                "/api/v1/images", content=encode_png(image), headers={"content-type": "image/png"}
            )
            client.post(f"/api/v1/images/{stored.json()['id']}/segmentation")
    system.run_drift()
    page.click("nav a[data-page=drift]")
    expect(page.locator("#drift-list li").first).to_contain_text("images")
    expect(page.locator("#drift-detail table")).to_be_visible()
    expect(page.locator("#drift-detail .plots img").first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "2-drift.png", full_page=True)

    page.click("nav a[data-page=status]")
    for service in ("storage", "inference", "drift-monitor"):
        expect(page.locator(f'[data-service="{service}"] .badge')).to_have_text("up", timeout=15_000)
    expect(page.locator("#status-overall")).to_have_text("All systems operational")
    page.screenshot(path=ARTIFACTS / "3-status.png", full_page=True)
    assert errors == []
