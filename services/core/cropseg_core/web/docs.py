"""Interactive API docs served by the service itself, so that /docs works offline.

FastAPI's default /docs page loads Swagger UI from a CDN: behind a firewall, on a plane or in an
air-gapped cluster it is blank. Here Swagger UI's files come from the ``swagger-ui-bundle``
package (Apache-2.0) and are served under ``/docs/assets``. ReDoc is not offered: it has no
packaged build on PyPI.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

ASSETS = "/docs/assets"


def install_docs(app: FastAPI) -> None:
    """Serve /docs from packaged assets; the app must be created with ``docs_url=None``."""
    if app.docs_url is not None or app.openapi_url is None:
        raise ValueError("create the app with docs_url=None (and an openapi_url) to serve offline docs")
    openapi_url, title = app.openapi_url, f"{app.title} — API"
    redirect = "/docs/oauth2-redirect"
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            oauth2_redirect_url=redirect,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )

    @app.get(redirect, include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
