"""Interactive API docs and a home page served by the service itself, so that they work offline.

FastAPI's default pages load Swagger UI and ReDoc from a CDN: behind a firewall, on a plane or
in an air-gapped cluster they are blank. ``fastapi-offline`` (MIT) packages both (Swagger UI 5,
which renders OpenAPI 3.1) and serves them from ``/static-offline-docs``. ReDoc's bundle still
draws its maker's logo from ``cdn.redoc.ly``: the docs pages carry a Content-Security-Policy
that allows this service's own files only, so a browser never asks another host for anything.

A person who opens an API-only service's address in a browser gets a home page that says what
the service is and links its docs, health and metrics, instead of a JSON 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from html import escape
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
"""Swagger UI and ReDoc start from inline scripts and style themselves inline; nothing leaves the host."""

HOME_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;color:#1d2521;"
    "line-height:1.5}h1{font-size:1.5rem}code{background:#eef2ef;padding:0 .25rem;border-radius:3px}"
    "li{margin:.2rem 0}.muted{color:#5f6b64}"
)


class _Home:
    """The HTML home page of an API-only service: built once the routes are known."""

    def __init__(self, app: FastAPI, note: str) -> None:
        self.app = app
        self.note = note
        self.page: str | None = None

    def render(self, root: str) -> str:
        if self.page is None:
            self.page = self._build()
        return self.page.replace("{root}", escape(root))

    def _build(self) -> str:
        app = self.app
        summary = escape((app.description or "").split("\n\n", 1)[0].strip())
        documented = [
            (path, _label(operations["get"]))
            for path, operations in app.openapi()["paths"].items()
            if "get" in operations and "{" not in path
        ]
        if any(getattr(route, "path", None) == "/metrics" for route in app.routes):
            documented.append(("/metrics", "Prometheus metrics"))
        links = [
            ("/docs", "interactive API docs (Swagger UI)"),
            ("/redoc", "API reference (ReDoc)"),
            ("/openapi.json", "OpenAPI description"),
            *documented,
        ]
        items = "".join(
            f"<li><a href='{{root}}{escape(path)}'><code>{escape(path)}</code></a> — {escape(text)}</li>"
            for path, text in links
        )
        note = f"<p class='muted'>{escape(self.note)}</p>" if self.note else ""
        return (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{escape(app.title)}</title><style>{HOME_STYLE}</style></head><body>"
            f"<h1>{escape(app.title)} <span class='muted'>{escape(app.version)}</span></h1>"
            f"<p>{summary}</p>{note}<h2>Links</h2><ul>{items}</ul></body></html>"
        )


def service_app(*, home_note: str | None = None, **kwargs: Any) -> FastAPI:
    """A FastAPI app with /docs (Swagger UI) and /redoc served from packaged files.

    ``home_note``: give it (even empty) for an API-only service, which then answers ``GET /``
    with a home page; a service with its own page at ``/`` leaves it out.
    """
    app = FastAPIOffline(**kwargs)
    _restrict_docs_pages(app)
    if home_note is not None:
        home = _Home(app, home_note)

        @app.get("/", include_in_schema=False)
        def home_page(request: Request) -> HTMLResponse:
            html = home.render(request.scope.get("root_path", ""))
            return HTMLResponse(html, headers={"Content-Security-Policy": DOCS_POLICY})

    return app


def _restrict_docs_pages(app: FastAPI) -> None:
    """Serve the library's /docs and /redoc pages with DOCS_POLICY."""
    for route in list(app.router.routes):
        if isinstance(route, APIRoute) and route.path in ("/docs", "/redoc"):
            app.router.routes.remove(route)
            app.add_api_route(
                route.path, _with_policy(route.endpoint), methods=["GET"], include_in_schema=False
            )


def _with_policy(
    page: Callable[[Request], Awaitable[HTMLResponse]],
) -> Callable[[Request], Awaitable[HTMLResponse]]:
    async def restricted(request: Request) -> HTMLResponse:
        response = await page(request)
        response.headers["Content-Security-Policy"] = DOCS_POLICY
        return response

    return restricted


def _label(operation: dict[str, str]) -> str:
    """A route's line on the home page: its docstring's first sentence (FastAPI's automatic
    summary is only the function's name, "Healthz"), else its summary."""
    first = operation.get("description", "").split("\n\n", 1)[0].strip()
    return first.split(". ", 1)[0].rstrip(".") if first else operation.get("summary", "")
