"""What a person sees who opens a service's address in a browser: the API-only services'
home pages and every service's API docs, in headless Chromium, with no request leaving the host.

Screenshots land in var/test-artifacts/api-pages/.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from cropseg_stack.launcher import Stack

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Route

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "var" / "test-artifacts" / "api-pages"
VIEWPORTS = {"1280x800": (1280, 800), "390x844": (390, 844)}


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_home_and_docs_pages_render_offline(browser: Browser, system: Stack, viewport: str) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    width, height = VIEWPORTS[viewport]
    page = browser.new_page(viewport={"width": width, "height": height})
    outside: list[str] = []

    def local_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", None):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    for name in ("inference", "drift-monitor"):
        url = system.urls()[name]
        page.goto(url)
        expect(page.locator("h1")).to_contain_text("cropseg")
        expect(page.locator("a[href='/docs']")).to_be_visible()
        expect(page.locator("a[href='/metrics']")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{name} home overflows"
        page.screenshot(path=ARTIFACTS / f"{name}-home-{viewport}.png", full_page=True)
        page.click("a[href='/redoc']")
        expect(page.locator("h1").first).to_contain_text("cropseg", timeout=20_000)  # ReDoc rendered
        page.screenshot(path=ARTIFACTS / f"{name}-redoc-{viewport}.png")
        page.goto(f"{url}/docs")
        expect(page.locator(".swagger-ui .title").first).to_contain_text("cropseg", timeout=20_000)
    page.goto(f"{system.urls()['storage']}/docs")
    expect(page.locator(".swagger-ui .title").first).to_contain_text("cropseg storage", timeout=20_000)
    page.close()
    assert outside == [], outside  # ReDoc's logo from cdn.redoc.ly among them before
    assert errors == [], errors
