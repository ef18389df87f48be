from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import SecretStr
from pydantic_settings import BaseSettings
from starlette.types import Message, Scope

from cropseg_core.errors import NotFoundError, UnavailableError
from cropseg_core.imaging import NotAnImageError
from cropseg_core.processes import free_port, read_http_answer
from cropseg_core.settings import ConnectionLimits
from cropseg_core.web.auth import ApiToken, token_from_file
from cropseg_core.web.bodies import read_limited_body, read_upload
from cropseg_core.web.docs import service_app
from cropseg_core.web.errors import install_error_handlers
from cropseg_core.web.hygiene import install_http_hygiene
from cropseg_core.web.limits import install_request_limits
from cropseg_core.web.metrics import install_metrics
from cropseg_core.web.server import dependency_versions, server_config


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app, plain_prefixes=("/plain",))
    install_metrics(app, CollectorRegistry())

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            raise NotFoundError("item 0 does not exist")
        if item_id == 1:
            raise UnavailableError("busy", retry_after_s=7)
        if item_id == 2:
            raise NotAnImageError("not an image")
        if item_id == 3:
            raise RuntimeError("bug")
        return {"id": item_id}

    @app.get("/plain/{item_id}")
    def plain(item_id: int) -> None:
        raise NotFoundError(f"no {item_id}")

    @app.post("/body")
    async def body(request: Request) -> dict[str, int]:
        return {"size": len(await read_limited_body(request, 10))}

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"size": len(await read_upload(request, 10, accepted=("image/png",)))}

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/items/0", 404, "not_found"),
        ("/items/1", 503, "unavailable"),
        ("/items/2", 415, "not_an_image"),
        ("/items/3", 500, "internal_error"),
        ("/items/x", 422, "invalid_request"),
        ("/missing", 404, "not_found"),
    ],
)
def test_every_error_has_one_shape(client: TestClient, path: str, status: int, code: str) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_messages_say_what_to_fix(client: TestClient) -> None:
    assert client.get("/items/1").headers["retry-after"] == "7"
    assert client.get("/items/x").json()["error"]["message"].startswith("item_id: ")
    assert "/missing" in client.get("/missing").json()["error"]["message"]
    assert client.get("/items/3").json()["error"]["message"] == "internal error; see the service log"


def test_plain_prefix_uses_the_protocol_error_shape(client: TestClient) -> None:
    assert client.get("/plain/5").json() == {"error": "no 5"}


def test_body_limit_by_header_and_by_stream(client: TestClient) -> None:
    assert client.post("/body", content=b"x" * 10).json() == {"size": 10}
    assert client.post("/body", content=b"x" * 11).status_code == 413

    def chunks():  # type: ignore[no-untyped-def]  # no Content-Length: chunked transfer
        yield b"x" * 6
        yield b"x" * 6

    response = client.post("/body", content=chunks())
    assert response.status_code == 413
    assert "10 bytes" in response.json()["error"]["message"]


def test_upload_accepts_raw_and_multipart(client: TestClient) -> None:
    assert client.post("/upload", content=b"abc", headers={"content-type": "image/png"}).json() == {"size": 3}
    assert client.post("/upload", files={"file": ("a.png", b"abcd", "image/png")}).json() == {"size": 4}
    response = client.post("/upload", content=b"abc", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["error"]["message"]
    malformed = {"content-type": "multipart/form-data; boundary=zz"}
    assert client.post("/upload", content=b"garbage", headers=malformed).status_code == 400


def test_request_metrics_use_route_templates(client: TestClient) -> None:
    client.get("/items/42")
    client.get("/items/43")
    client.get("/nowhere/at/all")
    text = client.get("/metrics").text
    assert 'http_requests_total{handler="/items/{item_id}",method="GET",status="200"} 2.0' in text
    assert 'http_requests_total{handler="none",method="GET",status="404"} 1.0' in text
    assert 'http_requests_inprogress{handler="/metrics",method="GET"} 1.0' in text


def test_dependency_versions() -> None:
    versions = dependency_versions("numpy", "no-such-distribution")
    assert versions["numpy"][0].isdigit()
    assert versions["no-such-distribution"] == "not installed"


def test_a_token_file_is_generated_once_private_and_shared(tmp_path: Path) -> None:
    token_file = tmp_path / ".cropseg" / "api-token"
    first = token_from_file(None, token_file)
    assert first is not None
    assert len(first.get_secret_value()) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    second = token_from_file(None, token_file)  # the other service on the same volume
    assert second is not None
    assert second.get_secret_value() == first.get_secret_value()
    assert [p.name for p in token_file.parent.iterdir()] == ["api-token"], "no temporary file left"
    given = SecretStr("set-by-the-operator-1234")
    assert token_from_file(given, token_file) is given
    assert token_from_file(None, None) is None


def test_two_services_starting_at_once_agree_on_one_token(tmp_path: Path) -> None:
    token_file = tmp_path / "api-token"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        tokens = {
            t.get_secret_value()
            for t in pool.map(lambda _: token_from_file(None, token_file), range(32))
            if t
        }
    assert tokens == {token_file.read_text().strip()}


@pytest.mark.parametrize(
    ("content", "message"), [("", "is empty: delete it"), ("short", "at least 16 characters")]
)
def test_a_bad_token_file_is_refused_saying_why(tmp_path: Path, content: str, message: str) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(content)
    with pytest.raises(ValueError, match=message):
        token_from_file(None, token_file)


def test_an_unusable_token_folder_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(ValueError, match="must be writable by this service's user"):
        token_from_file(None, blocker / "api-token")


def test_an_empty_token_variable_is_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    class Settings(BaseSettings):
        api_token: ApiToken = None

    monkeypatch.setenv("API_TOKEN", "")  # compose's ${CROPSEG_API_TOKEN:-} when unset
    assert Settings().api_token is None
    monkeypatch.setenv("API_TOKEN", "too-short")
    with pytest.raises(ValueError, match="at least 16"):
        Settings()


def test_docs_are_served_offline_from_packaged_assets() -> None:
    app = service_app(title="probe")
    with TestClient(app) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page)
            assert html.status_code == 200
            assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html.text)
            assert assets, html.text
            assert all(url.startswith("/static-offline-docs/") for url in assets), assets  # no CDN
            for url in assets:
                assert client.get(url).status_code == 200, url
            policy = html.headers["content-security-policy"]
            assert "default-src 'self'" in policy, policy
            assert "img-src 'self' data:" in policy, policy  # ReDoc's logo is not fetched from its CDN
            assert "http" not in policy, policy
        assert "/docs" not in client.get("/openapi.json").json()["paths"]
        assert client.get("/").status_code == 404  # no home page unless asked for


def test_an_api_service_has_a_home_page_linking_its_docs_health_and_metrics() -> None:
    app = service_app(
        title="probe service", version="9.9", description="Probes things.\n\nMore.", home_note="API only."
    )

    @app.get("/healthz", summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        """Readiness: whether it serves. More words.

        Details."""
        return {"status": "ready"}

    @app.get("/items/{item}")
    def item(item: str) -> dict[str, str]:
        return {"item": item}

    with TestClient(app) as client:
        home = client.get("/")
        assert home.status_code == 200
        assert home.headers["content-type"].startswith("text/html")
        assert all(text in home.text for text in ("probe service", "Probes things.", "API only."))
        links = re.findall(r"href='([^']+)'", home.text)
        assert links == ["/docs", "/redoc", "/openapi.json", "/healthz", "/readyz"]  # no templated paths
        assert "— Liveness</li>" in home.text  # a summary given
        assert "— Readiness: whether it serves</li>" in home.text  # else the docstring's first sentence
        assert all(client.get(link).status_code == 200 for link in links)
        assert "viewport" in home.text
        assert "/" not in client.get("/openapi.json").json()["paths"]


def test_head_is_answered_wherever_get_is_with_security_headers() -> None:
    app = FastAPI()

    @app.get("/thing")
    def thing() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/page")
    def page() -> Response:
        return Response(
            "<p>hi</p>", media_type="text/html", headers={"Content-Security-Policy": "default-src 'self'"}
        )

    install_http_hygiene(app)
    with TestClient(app) as client:
        got, head = client.get("/thing"), client.head("/thing")
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
        for response in (got, head):
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["content-security-policy"] == "frame-ancestors 'none'"
            assert response.headers["x-frame-options"] == "DENY"
        assert (
            client.get("/page").headers["content-security-policy"] == "default-src 'self'"
        )  # the route's own
        assert client.head("/nowhere").status_code == 404


SLOW_CLIENT_LIMITS = ConnectionLimits(
    header_timeout_s=0.5, body_idle_timeout_s=0.5, body_grace_s=0.5, body_min_rate=1000,
    max_body_bytes_in_flight=250_000,
)  # fmt: skip
"""Production: 10 s for headers, 30 s idle, 30 s grace, 16 KiB/s, twice the largest body."""


@dataclass
class GuardedServer:
    port: int
    cancelled: threading.Event  # set when a /hold handler was cancelled
    registry: CollectorRegistry


@pytest.fixture
def guarded_server() -> Iterator[GuardedServer]:
    """A real uvicorn server run as every service runs (server_config, request limits), with
    SLOW_CLIENT_LIMITS: /echo reads a body, /hold reads one and then waits for ever."""
    app = FastAPI()
    install_error_handlers(app)
    registry = CollectorRegistry()
    install_metrics(app, registry)
    install_request_limits(app, SLOW_CLIENT_LIMITS, largest_body_bytes=200_000, cancel_on_disconnect=True)
    install_http_hygiene(app)
    cancelled = threading.Event()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await read_limited_body(request, 200_000))}

    @app.post("/hold")
    async def hold(request: Request) -> None:
        await read_limited_body(request, 200_000)
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    port = free_port()
    config = server_config(app, host="127.0.0.1", port=port, shutdown_timeout_s=1, limits=SLOW_CLIENT_LIMITS)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield GuardedServer(port, cancelled, registry)
    server.should_exit = True
    thread.join(timeout=10)


def send_slowly(port: int, declared: int, pieces: list[bytes], pause_s: float) -> tuple[int, str]:
    """POST /echo declaring ``declared`` bytes, sending ``pieces`` with pauses; the status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n".encode())
        for piece in pieces:
            try:
                connection.sendall(piece)
            except OSError:  # the server answered and closed already
                break
            time.sleep(pause_s)
        return read_http_answer(connection)


@pytest.mark.slow
def test_a_stalled_body_is_answered_408(guarded_server: GuardedServer) -> None:
    status, body = send_slowly(guarded_server.port, 100_000, [b"x" * 10], pause_s=0)
    assert status == 408
    assert "no part of the request body arrived" in body


@pytest.mark.slow
def test_a_trickled_body_is_answered_408(guarded_server: GuardedServer) -> None:
    status, body = send_slowly(guarded_server.port, 100_000, [b"x"] * 20, pause_s=0.1)  # ~10 B/s
    assert status == 408
    assert "arrives too slowly" in body


def test_a_body_at_a_normal_pace_is_read(guarded_server: GuardedServer) -> None:
    status, body = send_slowly(guarded_server.port, 50_000, [b"x" * 50_000], pause_s=0)
    assert status == 200
    assert '"bytes":50000' in body


@pytest.mark.slow
def test_headers_sent_line_by_line_too_slowly_get_408_and_the_connection_closed(
    guarded_server: GuardedServer,
) -> None:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", guarded_server.port), timeout=10) as connection:
        connection.sendall(b"POST /echo HTTP/1.1\r\n")
        for line in (b"Host: x\r\n", b"X-Slow: 1\r\n", b"X-Slow: 2\r\n"):
            time.sleep(0.3)
            with contextlib.suppress(OSError):
                connection.sendall(line)
        status, body = read_http_answer(connection)
        assert connection.recv(1) == b""  # closed
    assert (status, body) == (408, "request headers not received within 0.5 s")
    assert time.perf_counter() - started < 5


@pytest.mark.slow
def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    guarded_server: GuardedServer,
) -> None:
    with socket.create_connection(("127.0.0.1", guarded_server.port), timeout=10) as connection:
        assert read_http_answer(connection)[0] == 408


@pytest.mark.slow
def test_bodies_count_against_the_budget_with_the_bytes_received(guarded_server: GuardedServer) -> None:
    """Two clients declaring 100 kB and sending one byte hold two bytes, not 200 kB: others
    are served. Two that sent their 100 kB and wait for their answer hold 200 kB of the 250 kB
    budget: a third 100 kB body is refused with Retry-After, a small one still fits, and when
    the holders leave their share is free again."""
    url = f"http://127.0.0.1:{guarded_server.port}/echo"

    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", guarded_server.port), timeout=10)

    declared_only, holders = [connect(), connect()], []
    try:
        for connection in declared_only:
            connection.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx")
        time.sleep(0.1)
        assert httpx.post(url, content=b"y" * 100_000).json() == {"bytes": 100_000}
        assert [read_http_answer(connection)[0] for connection in declared_only] == [408, 408]
        holders = [connect(), connect()]  # now: an idle connection is cut at the header deadline
        for holder in holders:
            holder.sendall(
                b"POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000
            )
        time.sleep(0.3)
        refused = httpx.post(url, content=b"y" * 100_000)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "receiving 200000 bytes of other request bodies" in refused.json()["error"]["message"]
        assert httpx.post(url, content=b"y" * 40_000).json() == {"bytes": 40_000}
        for holder in holders:
            holder.close()
        time.sleep(0.3)
        assert httpx.post(url, content=b"y" * 100_000).json() == {"bytes": 100_000}
        assert httpx.post(url, content=b"y" * 300_000).status_code == 413  # beyond the route's limit
    finally:
        for connection in declared_only + holders:
            connection.close()


@pytest.mark.slow
def test_one_address_cannot_take_every_connection_and_probes_are_always_answered() -> None:
    """Connections capped at 6 for the process and 4 per address: an address holding 4 idle
    connections gets 503 on a fifth at once, other addresses are served, and once the process
    is full the probes and /metrics are still answered while other requests get 503."""
    limits = ConnectionLimits(header_timeout_s=5, max_connections=6, max_connections_per_client=4)
    app = FastAPI()
    install_metrics(app, CollectorRegistry())

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/work")
    def work() -> dict[str, str]:
        return {"done": "yes"}

    port = free_port()
    server = uvicorn.Server(
        server_config(app, host="127.0.0.1", port=port, shutdown_timeout_s=1, limits=limits)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def connect(source: str) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))

    held = [connect("127.0.0.2") for _ in range(4)]
    try:
        time.sleep(0.1)
        with connect("127.0.0.2") as fifth:
            status, body = read_http_answer(fifth)
        assert status == 503
        assert "this address has 4 connections open already" in body
        assert httpx.get(f"http://127.0.0.1:{port}/work").json() == {"done": "yes"}  # another address
        held += [connect("127.0.0.3") for _ in range(2)]  # six: the process is full
        time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/work").status_code == 503
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
    finally:
        for connection in held:
            connection.close()
        server.should_exit = True
        thread.join(timeout=10)


def test_a_client_that_disconnects_cancels_its_request(guarded_server: GuardedServer) -> None:
    with socket.create_connection(("127.0.0.1", guarded_server.port), timeout=10) as connection:
        connection.sendall(b"POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        time.sleep(0.2)
        assert not guarded_server.cancelled.is_set()
    assert guarded_server.cancelled.wait(5)
    counted = 'http_requests_total{handler="/hold",method="POST",status="499"} 1.0'
    deadline = time.monotonic() + 5  # the handler's finally runs before the middleware counts it
    while counted not in generate_latest(guarded_server.registry).decode():
        assert time.monotonic() < deadline, "the cancelled request was not counted as 499"
        time.sleep(0.02)


def test_a_client_that_leaves_mid_body_is_counted_499_and_logged_as_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that disconnects while its upload is being read caused no error of the
    service: no 500 in the request metrics (the error-ratio alert reads them), no traceback."""
    app = FastAPI()
    install_error_handlers(app)
    registry = CollectorRegistry()
    install_metrics(app, registry)

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"size": len(await read_upload(request, 1000, accepted=("image/png",)))}

    arriving: Iterator[Message] = iter([
        {"type": "http.request", "body": b"\x89PNG", "more_body": True},
        {"type": "http.disconnect"},  # what the server says once the client is gone
    ])  # fmt: skip
    sent: list[Message] = []

    async def receive() -> Message:
        return next(arriving)

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/upload", "raw_path": b"/upload", "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"image/png"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    with caplog.at_level(logging.INFO):
        asyncio.run(app(scope, receive, send))
    text = generate_latest(registry).decode()
    assert 'http_requests_total{handler="/upload",method="POST",status="499"} 1.0' in text
    assert 'status="500"' not in text
    assert sent[0]["status"] == 499
    assert [r.levelname for r in caplog.records if "disconnected" in r.getMessage()] == ["INFO"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
