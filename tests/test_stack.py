"""The launcher behind ``make up``: taken ports (Prometheus' only skips it), a second start on the
same data (after the first: its data; while the first runs: refused), the field worker segmenting
what storage queues, dead services restarted with backoff (a crash loop too), Ctrl-C while
starting, a graceful and a forced stop."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import rasterio
from cropseg_batch.fields import write_field
from cropseg_stack.launcher import Stack, StackConfig, StackError

from cropseg_core.fields import FieldCatalogue, FieldRecord
from cropseg_core.processes import free_port
from cropseg_core.store.filesystem import FilesystemStore

pytestmark = pytest.mark.slow


def config(data: Path, tmp_path: Path) -> StackConfig:
    return StackConfig(
        data=data,
        inference_port=free_port(),
        storage_port=free_port(),
        drift_port=free_port(),
        prometheus=False,
        drift_every_s=None,
        prometheus_dir=tmp_path / "prometheus",
        environment={"INFERENCE_WARMUP_RUNS": "1"},
        field_poll_s=0.5,
    )


def add_field(data: Path, tmp_path: Path) -> str:
    """A small georeferenced field in the stack's store, as storage's upload leaves it."""
    source = write_field(tmp_path / "north.tif", 512)
    field_id = uuid.uuid4().hex
    with rasterio.open(source) as dataset:
        record = FieldRecord(
            id=field_id, name="north", filename=source.name, size=source.stat().st_size, width=dataset.width,
            height=dataset.height, bands=dataset.count, alpha=True, layout="rgb", crs="EPSG:32632",
            pixel_size=(0.02, 0.02), bounds=tuple(dataset.bounds), created=datetime.now(UTC),
        )  # fmt: skip
    FieldCatalogue(FilesystemStore(data)).add(record, source)
    return field_id


def test_a_taken_port_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "cropseg_stack", "up", "--data", str(tmp_path), "--no-prometheus"]
        result = subprocess.run(
            [*command, "--storage-port", str(port)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2
    assert f"port in use: storage :{port}" in result.stderr
    assert "make up INFERENCE_PORT=" in result.stderr


def test_prometheus_is_left_out_with_one_line_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = Stack(replace(config(tmp_path / "data", tmp_path), prometheus=True, prometheus_port=port))
        stack.check_ports()  # no StackError: Prometheus is optional
    assert not stack.use_prometheus
    assert "prometheus" not in stack.ports()
    assert stack.prometheus_skipped is not None
    assert f"port {port} is in use" in stack.prometheus_skipped
    assert "PROMETHEUS_PORT=" in stack.prometheus_skipped


def test_a_prometheus_that_fails_to_start_is_left_out_and_the_stack_runs(
    tmp_path: Path, prometheus_binary: str
) -> None:
    settings = replace(config(tmp_path / "data", tmp_path), prometheus=True, prometheus_port=free_port())
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "data").write_text("a file where its database folder should be")
    lines: list[str] = []
    stack = Stack(settings, output=lambda name, line: lines.append(f"{name}| {line}"))
    try:
        stack.start()  # no StackError: Prometheus is optional (before: the whole stack stopped)
        assert "prometheus" not in stack.ports()
        assert stack.prometheus_skipped is not None
        assert "prometheus exited with code" in stack.prometheus_skipped
        assert httpx.get(f"{stack.urls()['storage']}/readyz", timeout=10).status_code == 200
    finally:
        stack.stop()
    assert "prometheus" not in stack.processes


def test_a_second_stack_on_the_same_data_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Stack(config(data, tmp_path))
    first.claim_data()
    second = Stack(config(data, tmp_path))
    with pytest.raises(
        StackError, match=rf"{data} is used by another cropseg stack \(pid {os.getpid()}, web UI "
    ):
        second.start()
    assert not second.processes
    first.release_data()  # what stop() does
    second.claim_data()  # the data is free again
    second.release_data()


class FakeServices(Stack):
    """Every service is a tiny Python process that prints a line, runs ``run_s`` and exits 3."""

    run_s = 0.0

    def command(self, name: str) -> tuple[list[str], str]:
        code = f"import time; print('starting'); time.sleep({self.run_s}); raise SystemExit(3)"
        return [sys.executable, "-c", code], "http://127.0.0.1:9/readyz"


@pytest.mark.parametrize(
    ("run_s", "reset_after_s", "delays", "crash_loop"),
    [
        (0.0, 10.0, ["0.1", "0.2", "0.4", "0.4"], True),  # dies at once every time: backoff up to its cap
        (0.6, 0.3, ["0.1", "0.1", "0.1"], False),  # ran past restart_reset_after_s each time: reset
    ],
    ids=["crash-loop", "runs-a-while"],
)
def test_a_dead_service_is_restarted_with_backoff_and_ctrl_c_still_stops_at_once(
    tmp_path: Path, run_s: float, reset_after_s: float, delays: list[str], crash_loop: bool
) -> None:
    lines: list[str] = []
    settings = replace(
        config(tmp_path / "data", tmp_path),
        restart_backoff_s=0.1,
        restart_backoff_max_s=0.4,
        restart_reset_after_s=reset_after_s,
        watch_interval_s=0.02,
    )
    stack = FakeServices(settings, output=lambda name, line: lines.append(f"{name}|{line}"))
    stack.run_s = run_s
    stack._spawn("inference")
    watcher = threading.Thread(target=stack.wait)
    watcher.start()
    try:
        deadline = time.monotonic() + 30
        while sum("inference exited with code 3" in line for line in lines) < len(delays):
            assert time.monotonic() < deadline, f"not restarted {len(delays)} times: {lines}"
            time.sleep(0.02)
    finally:
        started = time.monotonic()
        stack.stop()  # Ctrl-C during the backoff
        watcher.join(timeout=5)
    assert not watcher.is_alive()
    assert time.monotonic() - started < 3, "stopping waited for the backoff"
    exits = [line for line in lines if "inference exited with code 3" in line]
    assert [line.rsplit("restarting it in ", 1)[1] for line in exits[: len(delays)]] == [
        f"{d} s" for d in delays
    ]
    assert ("crash loop: died 3 times in a row" in exits[2]) is crash_loop
    assert "crash loop" not in exits[0]
    assert sum(line == "inference|starting" for line in lines) >= len(delays)  # each start's output streamed
    assert all(process.poll() is not None for process in stack.processes.values())


def test_second_start_on_the_same_data_and_a_dead_service_is_restarted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lines: list[str] = []
    first = Stack(config(data, tmp_path), output=lambda name, line: lines.append(f"{name}|{line}"))
    first.start()
    storage = first.urls()["storage"]
    uploaded = httpx.get(f"{storage}/api/v1/images", params={"limit": 100}).json()["items"]
    assert len(uploaded) >= 12  # seeded on the first start (generated tiles and real photos)
    # The field worker segments what storage queues, on the same data folder.
    worker = first.processes["field-worker"]
    arguments = Path(f"/proc/{worker.pid}/cmdline").read_bytes().decode().split("\0")
    assert arguments[arguments.index("--store") + 1] == str(data)
    field_id = add_field(data, tmp_path)
    assert httpx.post(f"{storage}/api/v1/fields/{field_id}/segment", json={"cell_m": 2}).status_code == 202
    deadline = time.monotonic() + 120
    while (job := httpx.get(f"{storage}/api/v1/fields/{field_id}").json()["job"])["status"] != "done":
        assert job["status"] in ("queued", "segmenting"), job
        assert time.monotonic() < deadline, f"the field worker did not segment the field: {job}"
        time.sleep(0.2)
    assert (job["backend"], job["cover"]["cell_m"]) == ("local", 2)
    assert (data / "fields" / field_id / "result" / "mask.tif").is_file()
    assert (data / ".field-work").is_dir()  # its checkpoints, beside the data and hidden from the store
    first.stop()
    assert worker.returncode == 0, "the field worker was killed, not stopped: it must end on SIGTERM"
    assert any("stack|field-worker started: polling" in line for line in lines)

    second = Stack(config(data, tmp_path), output=lambda name, line: lines.append(f"{name}|{line}"))
    second.start()
    watcher = threading.Thread(target=second.wait)
    try:
        items = httpx.get(f"{second.urls()['storage']}/api/v1/images", params={"limit": 100}).json()["items"]
        assert [i["id"] for i in items] == [i["id"] for i in uploaded]  # same data, not seeded twice
        watcher.start()
        second.processes["drift-monitor"].kill()
        deadline = time.monotonic() + 10
        while not any("drift-monitor exited with code -9" in line for line in lines):
            assert time.monotonic() < deadline, "the dead service was not reported"
            time.sleep(0.1)
        assert httpx.get(f"{second.urls()['storage']}/healthz").status_code == 200  # the others keep running
        assert any(
            "drift-monitor exited with code -9 after" in line and "restarting it in 1 s" in line
            for line in lines
        )
        deadline = time.monotonic() + 120
        while not any("stack|drift-monitor ready again at" in line for line in lines):
            assert time.monotonic() < deadline, "the dead service was not restarted"
            time.sleep(0.1)
        assert httpx.get(f"{second.urls()['drift-monitor']}/readyz").status_code == 200
    finally:
        second.stop()
        if watcher.is_alive():
            watcher.join(timeout=10)
    assert any(line.startswith("storage|") for line in lines)  # service output is streamed with its name


class Launcher:
    """`cropseg-stack up` as `make up` runs it, its output read line by line."""

    def __init__(self, tmp_path: Path) -> None:
        self.ports = {name: free_port() for name in ("inference", "storage", "drift")}
        ports = [f"--{name}-port={port}" for name, port in self.ports.items()]
        self.seen: list[str] = []
        """Every line printed so far."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cropseg_stack", "up", "--data", str(tmp_path / "data"), "--no-prometheus",
             "--drift-every", "0", *ports],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "INFERENCE_WARMUP_RUNS": "1"},
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read_lines, daemon=True)
        self.reader.start()

    def _read_lines(self) -> None:
        """The only reader of stdout (finish() waits and reads stderr, never stdout)."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.seen.append(line)
            self.lines.put(line)

    def wait_for(self, *texts: str, timeout_s: float = 120) -> None:
        """Until each of ``texts`` has been printed, in any order."""
        deadline, missing = time.monotonic() + timeout_s, set(texts)
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
                missing -= {text for text in missing if text in line}
                if not missing:
                    return
            except queue.Empty:
                pass
            assert time.monotonic() < deadline, f"never printed {sorted(missing)}"
            assert self.process.poll() is None, (
                f"exited {self.process.returncode}: {self.process.stderr.read()}"
            )  # type: ignore[union-attr]

    def children(self) -> list[int]:
        """Services started by the launcher (they run in their own sessions)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == self.process.pid:
                found.append(int(stat.parent.name))
        return found

    def finish(self, timeout_s: float) -> tuple[int, str]:
        """Exit code and stderr (the launcher's one-line reasons) once it has exited."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self.reader.join(timeout=10)  # stdout is at its end once the launcher has exited
        err = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return code, err


def gone(pids: list[int]) -> bool:
    return not any(Path(f"/proc/{pid}").exists() and "zombie" not in status(pid) for pid in pids)


def status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_the_launcher_restarts_every_service_that_dies_and_says_so(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    launcher.wait_for("Ctrl-C stops everything")
    services = launcher.children()
    assert len(services) == 4
    for pid in services:
        os.kill(pid, signal.SIGKILL)
    names = ("inference", "drift-monitor", "storage", "field-worker")
    launcher.wait_for(*(f"{name} exited with code -9" for name in names), timeout_s=30)
    launcher.wait_for(
        *(f"{name} ready again at" for name in names[:3]), "field-worker running again", timeout_s=180
    )
    restarted = launcher.children()
    assert len(restarted) == 4
    assert not set(restarted) & set(services)
    launcher.process.send_signal(signal.SIGTERM)
    code, _ = launcher.finish(timeout_s=60)
    assert code == 0
    assert gone(restarted)


def test_ctrl_c_while_services_start_stops_them_all(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    launcher.wait_for("inference ready")  # drift-monitor and storage are still starting
    started = launcher.children()
    launcher.process.send_signal(signal.SIGINT)
    code, _ = launcher.finish(timeout_s=60)
    assert code == 130
    assert gone(started), "a service outlived the launcher"


def test_sigterm_stops_gracefully_and_a_second_ctrl_c_kills_at_once(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    launcher.wait_for("Ctrl-C stops everything", "field worker    segments the fields queued")
    services = launcher.children()
    storage = f"http://127.0.0.1:{launcher.ports['storage']}"
    for probe in ("/healthz", "/readyz", "/metrics"):
        httpx.get(f"{storage}{probe}")
    refused = httpx.post(
        f"{storage}/api/v1/images", content=b"not an image", headers={"content-type": "text/plain"}
    )
    assert refused.status_code >= 400
    missing = httpx.get(f"{storage}/api/v1/images/no-such-image")
    assert missing.status_code >= 400
    # the user's requests in the terminal, with the service's name and their status
    launcher.wait_for(
        f'"POST /api/v1/images HTTP/1.1" {refused.status_code}',
        f'"GET /api/v1/images/no-such-image HTTP/1.1" {missing.status_code}',
    )
    access = [line for line in launcher.seen if "access: " in line]
    assert access
    assert all(line.startswith("storage ") for line in access if "/api/v1/images" in line)
    assert not [line for line in access if any(p in line for p in ("/healthz", "/readyz", "/metrics"))]
    assert not [line for line in launcher.seen if "uvicorn.error" in line]
    assert any(" server: " in line for line in launcher.seen)
    launcher.process.send_signal(signal.SIGTERM)
    code, _ = launcher.finish(timeout_s=60)
    assert code == 0
    assert gone(services)

    second = Launcher(tmp_path)
    second.wait_for("Ctrl-C stops everything")
    services = second.children()
    second.process.send_signal(signal.SIGINT)
    second.wait_for("Ctrl-C again to kill at once", timeout_s=10)
    second.process.send_signal(signal.SIGINT)
    code, _ = second.finish(timeout_s=10)
    assert code == 130
    deadline = time.monotonic() + 10
    while not gone(services):
        assert time.monotonic() < deadline, "the second Ctrl-C did not kill the services"
        time.sleep(0.1)
