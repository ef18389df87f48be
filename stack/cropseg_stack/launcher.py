"""Start, watch and stop the local stack: inference, storage (web UI), drift-monitor API, the
periodic drift run (the CronJob's role) and Prometheus when it is installed.

Each process's output is streamed line by line with its name in front. A process that dies
is reported and the others keep running (the status page then shows it down, as in a
cluster); :meth:`Stack.start_service` brings it back. When every service has died,
:meth:`Stack.wait` returns why. Services run in their own session, so a terminal's Ctrl-C
reaches the launcher only, which stops them in order. Used by ``make up`` and by the
end-to-end tests, which also kill and restart services through it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cropseg_core.processes import is_ready, stop

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
ORDER = ("inference", "drift-monitor", "storage", "prometheus")

Output = Callable[[str, str], None]


class StackError(RuntimeError):
    """The stack cannot start; the message says what to change."""


class StackInterruptedError(StackError):
    """Asked to stop (Ctrl-C, SIGTERM) while starting."""


@dataclass
class StackConfig:
    data: Path = REPO / "var" / "data"
    """Data folder shared by storage and the drift monitor (the shared volume)."""
    inference_port: int = 8001
    storage_port: int = 8002
    drift_port: int = 8003
    prometheus_port: int = 9090
    prometheus: bool | None = None
    """None: run Prometheus when it is installed."""
    drift_every_s: float | None = 300.0
    """Run the drift check this often (None: never)."""
    first_drift_after_s: float = 30.0
    """The first drift run this long after start (then every ``drift_every_s``), so a new
    user sees a report within a minute."""
    scrape_interval_s: float = 5.0
    """Prometheus scrape interval of the local stack."""
    prometheus_dir: Path = REPO / "var" / "prometheus"
    """Prometheus's generated configuration and its database."""
    environment: dict[str, str] = field(default_factory=dict)
    """Extra environment for every service (e.g. STORAGE_STATUS_INTERVAL_S)."""
    ready_timeout_s: float = 120.0


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def prometheus_config(config: StackConfig, target: Path) -> Path:
    """monitoring/prometheus.yml with this stack's ports, interval and rule file path."""
    text = (MONITORING / "prometheus.yml").read_text()
    for default, port in (
        (8001, config.inference_port),
        (8002, config.storage_port),
        (8003, config.drift_port),
    ):
        text = text.replace(f'"127.0.0.1:{default}"', f'"127.0.0.1:{port}"')
    text = text.replace("scrape_interval: 15s", f"scrape_interval: {config.scrape_interval_s:g}s")
    text = text.replace("evaluation_interval: 15s", f"evaluation_interval: {config.scrape_interval_s:g}s")
    text = text.replace("  - alerts.yml", f"  - {MONITORING / 'alerts.yml'}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


class Stack:
    def __init__(self, config: StackConfig, output: Output | None = None) -> None:
        self.config = config
        self.output = output or print_line
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.drift_runs: list[int] = []
        self.use_prometheus = (
            config.prometheus if config.prometheus is not None else bool(shutil.which("prometheus"))
        )

    # What runs

    def ports(self) -> dict[str, int]:
        ports = {
            "inference": self.config.inference_port,
            "drift-monitor": self.config.drift_port,
            "storage": self.config.storage_port,
        }
        if self.use_prometheus:
            ports["prometheus"] = self.config.prometheus_port
        return ports

    def urls(self) -> dict[str, str]:
        return {name: f"http://127.0.0.1:{port}" for name, port in self.ports().items()}

    def command(self, name: str) -> tuple[list[str], str]:
        """The command line of a service and its readiness URL."""
        url, data = self.urls()[name], str(self.config.data)
        python = [sys.executable, "-m"]
        if name == "inference":
            return [*python, "cropseg_inference", "--port", str(self.config.inference_port)], f"{url}/readyz"
        if name == "drift-monitor":
            return [
                *python,
                "cropseg_drift",
                "serve",
                "--port",
                str(self.config.drift_port),
                "--data",
                data,
            ], (f"{url}/readyz")
        if name == "storage":
            argv = [*python, "cropseg_storage", "--port", str(self.config.storage_port), "--data", data,
                    "--inference-url", self.urls()["inference"]]  # fmt: skip
            return argv, f"{url}/healthz"  # ready also needs inference: liveness is enough to go on
        config = prometheus_config(self.config, self.config.prometheus_dir / "prometheus.yml")
        argv = [
            "prometheus",
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{self.config.prometheus_port}",
            f"--storage.tsdb.path={self.config.prometheus_dir / 'data'}",
        ]
        return argv, f"{url}/-/ready"

    def environment(self) -> dict[str, str]:
        return {
            "STORAGE_DRIFT_URL": self.urls()["drift-monitor"],
            "PYTHONUNBUFFERED": "1",
            **self.config.environment,
        }

    # Lifecycle

    def check_ports(self) -> None:
        taken = [f"{name} :{port}" for name, port in self.ports().items() if not port_is_free(port)]
        if taken:
            raise StackError(
                f"port in use: {', '.join(taken)}. Another cropseg (or another program) is running: stop "
                "it, or choose ports: make up INFERENCE_PORT=8101 STORAGE_PORT=8102 DRIFT_PORT=8103 "
                "PROMETHEUS_PORT=9190"
            )

    def start(self) -> None:
        self.check_ports()
        self.config.data.mkdir(parents=True, exist_ok=True)
        try:
            for name in ORDER:
                if name in self.ports():
                    self.start_service(name)
        except BaseException:
            self.stop()
            raise
        if self.config.drift_every_s:
            self._thread(self._drift_loop, "drift-runs")

    def start_service(self, name: str) -> subprocess.Popen[bytes]:
        argv, ready_url = self.command(name)
        process = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **self.environment()},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops everything in order
        )
        self.processes[name] = process
        self._thread(lambda: self._pump(name, process), f"log-{name}")
        deadline = time.monotonic() + self.config.ready_timeout_s
        while not is_ready(ready_url):
            if self.stopping.is_set():
                raise StackInterruptedError(f"stopped while {name} was starting")
            if process.poll() is not None:
                raise StackError(
                    f"{name} exited with code {process.returncode} while starting: see its log above"
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{name} was not ready at {ready_url} after {self.config.ready_timeout_s:.0f} s"
                )
            time.sleep(0.1)
        self.output("stack", f"{name} ready at {self.urls()[name]}")
        return process

    def stop_service(self, name: str) -> None:
        process = self.processes.get(name)
        if process is not None:
            stop(process)  # still listed meanwhile, so that a second Ctrl-C (kill) reaches it
            self.processes.pop(name, None)

    def kill_service(self, name: str) -> None:
        """SIGKILL, as a crash would (the end-to-end fault tests)."""
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def stop(self) -> None:
        """Stop the drift loop, then every service in reverse start order (SIGTERM, then SIGKILL)."""
        self.stopping.set()
        for name in reversed(ORDER):
            self.stop_service(name)
        for thread in self.threads:
            thread.join(timeout=5)

    def kill(self) -> None:
        """SIGKILL every service now (a second Ctrl-C)."""
        self.stopping.set()
        for process in list(self.processes.values()):
            if process.poll() is None:
                process.kill()

    def wait(self) -> str | None:
        """Block until asked to stop (None) or until every service has exited (then: why).
        A service that dies meanwhile is reported; the others keep running."""
        reported: set[str] = set()
        while not self.stopping.wait(1.0):
            exited = {name: p.returncode for name, p in list(self.processes.items()) if p.poll() is not None}
            for name in sorted(exited.keys() - reported):
                self.output("stack", f"{name} exited with code {exited[name]}; the others keep running")
            reported |= exited.keys()
            if self.processes and len(exited) == len(self.processes):
                codes = ", ".join(f"{name} {code}" for name, code in exited.items())
                return f"every service has exited (exit codes: {codes}); see their logs above"
        return None

    def run_drift(self, **settings: str) -> int:
        """One drift run over the stack's data (the CronJob's command); its exit code.

        ``settings`` override DRIFT_ variables for this run (``window_images="25"``).
        """
        data = str(self.config.data)
        argv = [sys.executable, "-m", "cropseg_drift", "run", "--data", data, "--no-progress"]
        env = {**os.environ, **self.environment(), **{f"DRIFT_{k.upper()}": v for k, v in settings.items()}}
        result = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, check=False, start_new_session=True
        )
        for line in (result.stdout + result.stderr).decode(errors="replace").splitlines():
            self.output("drift-run", line)
        self.drift_runs.append(result.returncode)
        return result.returncode

    # Helpers

    def _drift_loop(self) -> None:
        wait = min(self.config.first_drift_after_s, self.config.drift_every_s or 0)
        while not self.stopping.wait(wait):
            self.run_drift()
            wait = self.config.drift_every_s or 0

    def _pump(self, name: str, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            self.output(name, raw.decode(errors="replace").rstrip())
        process.stdout.close()

    def _thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)


_COLOURS = {
    "inference": 34,
    "storage": 32,
    "drift-monitor": 35,
    "drift-run": 35,
    "prometheus": 33,
    "stack": 1,
}
_print_lock = threading.Lock()


def print_line(name: str, line: str) -> None:
    """``name | line``, the name coloured when writing to a terminal."""
    label = f"{name:<13}"
    if sys.stdout.isatty():
        label = f"\033[{_COLOURS.get(name, 0)}m{label}\033[0m"
    with _print_lock:
        print(f"{label}| {line}", flush=True)
