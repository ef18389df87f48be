"""The web UI against the whole running system in headless Chromium.

Screenshots land in var/test-artifacts/ui-e2e/.
"""

from __future__ import annotations

import re
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
    # The numbers come first; the IoU once the evaluation is back.
    expect(page.locator("#stat-iou")).to_have_text(re.compile(r"^[01]\.\d{3}$"), timeout=30_000)
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
    page.click("nav a[data-page=drift]")
    page.click("#drift-run")  # through storage to the drift monitor, which runs it in a worker
    expect(page.locator("#drift-run-state")).to_contain_text("Finished", timeout=120_000)
    expect(page.locator("#drift-list li").first).to_contain_text("images")
    detail = page.locator("#drift-detail")
    expect(detail).to_contain_text("Compared with 128 ews/train + 48 peanut/train images")
    short_number = re.compile(r"^(\d\.\d{3}|\d\.\de-\d+|<1e-300|–)$")  # never wraps mid-number
    expect(detail.locator("td.number").first).to_have_text(short_number)
    expect(page.locator("#drift-detail table")).to_be_visible()
    expect(page.locator("#drift-detail .plots img").first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "2-drift.png", full_page=True)
    # these uploads as the reference: the next run compares them with themselves, then back
    page.click("#drift-use-reference")
    expect(detail).to_contain_text("rgb runs now compare with uploads chosen as the reference")
    page.click("#drift-run")
    expect(page.locator("#drift-run-state")).to_contain_text("Finished: no drift", timeout=120_000)
    expect(detail).to_contain_text("Compared with uploads chosen as the reference on")
    page.screenshot(path=ARTIFACTS / "2-drift-chosen-reference.png", full_page=True)
    page.click("#drift-reset-reference")
    expect(detail).to_contain_text("rgb runs now compare with 128 ews/train + 48 peanut/train images")

    page.click("nav a[data-page=status]")
    for service in ("storage", "inference", "drift-monitor"):
        expect(page.locator(f'[data-service="{service}"] .badge')).to_have_text("up", timeout=15_000)
    expect(page.locator("#status-overall")).to_have_text("All systems operational")
    page.screenshot(path=ARTIFACTS / "3-status.png", full_page=True)
    assert errors == []


VIEWPORTS = {"laptop": (1280, 800), "desktop": (1920, 1080), "phone": (390, 844)}

# What a reader sees wrong at a glance: the page scrolls sideways, an element sticks out of the
# viewport (unless inside a container that scrolls or clips it), or a primary panel (marked
# data-primary in the page) starts beyond the first two screens.
LAYOUT_PROBLEMS = """() => {
  const width = document.documentElement.clientWidth, height = window.innerHeight, problems = [];
  if (document.documentElement.scrollWidth > width + 1)
    problems.push(`the page scrolls sideways: ${document.documentElement.scrollWidth} px wide in ${width}`);
  const contained = (el) => {
    for (let up = el.parentElement; up && up !== document.body; up = up.parentElement)
      if (["auto", "scroll", "hidden", "clip"].includes(getComputedStyle(up).overflowX)) return true;
    return false;
  };
  for (const el of document.querySelectorAll("body *")) {
    if (!el.getClientRects().length || contained(el)) continue;
    const box = el.getBoundingClientRect();
    if (box.right > width + 1 || box.left < -1)
      problems.push(`${el.tagName}#${el.id}.${el.className}: ${box.left | 0}..${box.right | 0} of ${width}`);
  }
  for (const el of document.querySelectorAll("[data-primary]")) {
    if (!el.getClientRects().length) continue;
    const top = el.getBoundingClientRect().top + window.scrollY;
    if (top > 2 * height)
      problems.push(`primary panel ${el.id || el.className} starts at ${top | 0} px, past 2 screens`);
  }
  return problems.slice(0, 12);
}"""


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_every_page_fits_the_screen(browser: Browser, system: Stack, viewport: str) -> None:
    """Screenshots of every page at a laptop, a desktop and a phone size (var/test-artifacts/
    ui-e2e/screens/), each checked for sideways overflow and primary panels out of reach."""
    from playwright.sync_api import expect

    folder = ARTIFACTS / "screens"
    folder.mkdir(parents=True, exist_ok=True)
    urls = system.urls()
    if not httpx.get(f"{urls['drift-monitor']}/api/v1/drift/reports").json()["items"]:
        system.run_drift(source="sample", min_samples="5")
    width, height = VIEWPORTS[viewport]
    page = browser.new_page(viewport={"width": width, "height": height})
    problems: dict[str, list[str]] = {}

    def check(name: str) -> None:
        page.wait_for_timeout(300)  # images and fonts settle
        page.screenshot(path=folder / f"{name}-{width}x{height}.png", full_page=True)
        found = page.evaluate(LAYOUT_PROBLEMS)
        if found:
            problems[name] = found

    page.goto(f"{urls['storage']}/#/segment")
    expect(page.locator("#gallery button")).to_have_count(9)
    page.locator("#gallery button").first.click()
    page.click("#segment-button")
    expect(page.locator("#stats")).to_be_visible(timeout=30_000)
    check("segment")
    page.goto(f"{urls['storage']}/#/drift")
    page.locator("#drift-list li").first.click()
    expect(page.locator("#drift-detail table")).to_be_visible()
    check("drift")
    page.goto(f"{urls['storage']}/#/status")
    expect(page.locator('[data-service="inference"] .badge')).to_have_text("up", timeout=10_000)
    check("status")
    for service in ("storage", "inference", "drift-monitor"):
        page.goto(f"{urls[service]}/docs")
        expect(page.locator(".swagger-ui .info .title")).to_be_visible(timeout=15_000)  # offline: no CDN here
        check(f"docs-{service}")
    page.close()
    assert problems == {}, problems
