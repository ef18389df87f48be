"""Start, watch and stop the local stack: inference, storage (web UI), drift-monitor API, the
field worker (segments the fields queued through the web UI: the chart's field-worker Jobs), the
periodic drift run (the CronJob's role) and Prometheus when it is installed.

Each process's output is streamed line by line with its name in front. While
:meth:`Stack.wait` watches, a service that dies is restarted as a kubelet would: after 1 s,
then 2 s, 4 s ... up to a minute while it keeps dying soon after each start (a crash loop,
said so in the terminal), from 1 s again once it had run a minute. Prometheus is optional: when
its port is taken it is left out, not the stack. One stack at a time uses a data folder (a lock
file in it), so two stacks never mix their uploads or status history. Services run in their own
session, so a terminal's Ctrl-C reaches the launcher only, which stops them in order. Used by
``make up`` and by the end-to-end tests, which also kill (:meth:`Stack.kill_service`, not
restarted) and restart services through it.
"""

from __future__ import annotations

import fcntl
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
from typing import IO

from cropseg_core.processes import is_ready, stop

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
ORDER = ("inference", "drift-monitor", "storage", "field-worker", "prometheus")
WORKER = "field-worker"
"""The one process without a port: started is ready."""
LOCK_FILE = ".cropseg-stack.lock"
"""In the data folder, held by the stack that uses it."""

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
    field_worker: bool = True
    """Run the field worker, which polls the data folder for queued field segmentations."""
    field_poll_s: float = 2.0
    """How often the field worker looks for queued fields."""
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
    restart_backoff_s: float = 1.0
    """A dead service is restarted after this long, twice as long after each death in a row."""
    restart_backoff_max_s: float = 60.0
    """The longest wait between two restarts of a service in a crash loop."""
    restart_reset_after_s: float = 60.0
    """A service that ran this long before it died is restarted after ``restart_backoff_s`` again."""
    watch_interval_s: float = 0.5
    """How often :meth:`Stack.wait` looks at the services."""


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
        self.prometheus_skipped: str | None = None
        """Why Prometheus was left out although it was wanted (its port was taken)."""
        self.started_at: dict[str, float] = {}
        self.deaths_in_a_row: dict[str, int] = {}
        self.restart_at: dict[str, float] = {}
        """Dead services and when (time.monotonic()) they are started again."""
        self.restarted: set[str] = set()
        """Restarted services not ready yet (the terminal says when they are)."""
        self._spawning = threading.Lock()
        self._data_lock: IO[str] | None = None

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

    def services(self) -> list[str]:
        """What runs, in start order."""
        running = {*self.ports(), *([WORKER] if self.config.field_worker else [])}
        return [name for name in ORDER if name in running]

    @property
    def field_work(self) -> Path:
        """The field worker's checkpoints: beside the data, hidden from the store (as the chart's
        /data/.field-work), so a worker restarted with the stack resumes a field where it was."""
        return self.config.data / ".field-work"

    def command(self, name: str) -> tuple[list[str], str | None]:
        """The command line of a service and its readiness URL (None: the field worker, which has no port)."""
        data = str(self.config.data)
        python = [sys.executable, "-m"]
        if name == WORKER:
            argv = [*python, "cropseg_batch", "field-worker", "--store", data, "--work", str(self.field_work),
                    "--poll-s", f"{self.config.field_poll_s:g}"]  # fmt: skip
            return argv, None
        url = self.urls()[name]
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

    def claim_data(self) -> None:
        """Hold the data folder's lock file, or refuse: a second stack on the same data would
        mix its uploads, drift state and status history with the first one's."""
        self.config.data.mkdir(parents=True, exist_ok=True)
        lock = (self.config.data / LOCK_FILE).open("a+", encoding="utf-8")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise StackError(
                f"{self.config.data} is used by another cropseg stack ({holder}): stop it (Ctrl-C in its "
                "terminal), or give this one its own data folder: cropseg-stack up --data var/data2"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}, web UI {self.urls()['storage']}\n")
        lock.flush()
        self._data_lock = lock

    def release_data(self) -> None:
        if self._data_lock is not None:
            self._data_lock.close()  # closing the file releases the lock
            self._data_lock = None

    def check_ports(self) -> None:
        """Refuse taken ports of the services; leave Prometheus out when its port is taken."""
        if self.use_prometheus and not port_is_free(self.config.prometheus_port):
            self.use_prometheus = False
            self.prometheus_skipped = (
                f"not started: port {self.config.prometheus_port} is in use (another Prometheus?); "
                f"to run this one too: make up PROMETHEUS_PORT={self.config.prometheus_port + 100}"
            )
        taken = [f"{name} :{port}" for name, port in self.ports().items() if not port_is_free(port)]
        if taken:
            raise StackError(
                f"port in use: {', '.join(taken)}. Another cropseg (or another program) is running: stop "
                "it, or choose ports: make up INFERENCE_PORT=8101 STORAGE_PORT=8102 DRIFT_PORT=8103 "
                "PROMETHEUS_PORT=9190"
            )

    def start(self) -> None:
        self.claim_data()
        try:
            self.check_ports()
        except StackError:
            self.release_data()
            raise
        try:
            for name in self.services():
                if name == "prometheus":
                    self._start_optional(name)
                else:
                    self.start_service(name)
        except BaseException:
            self.stop()
            raise
        if self.config.drift_every_s:
            self._thread(self._drift_loop, "drift-runs")

    def _start_optional(self, name: str) -> None:
        """Prometheus: a failed start leaves it out (one line says why), never stops the stack."""
        try:
            self.start_service(name)
        except StackInterruptedError:
            raise
        except StackError as error:
            process = self.processes.pop(name, None)
            if process is not None and process.poll() is None:
                stop(process, timeout_s=5)
            self.use_prometheus = False
            self.prometheus_skipped = f"not started: {error}"

    def start_service(self, name: str) -> subprocess.Popen[bytes]:
        """Start ``name`` and wait until it is ready."""
        process = self._spawn(name)
        ready_url = self.command(name)[1]
        if ready_url is None:
            self.output("stack", f"{name} started: polling {self.config.data} for queued fields")
            return process
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
        with self._spawning:  # a restart under way has finished starting its process (and no other will)
            self.restart_at.clear()
        for name in reversed(ORDER):
            self.stop_service(name)
        for thread in self.threads:
            thread.join(timeout=5)
        self.release_data()

    def kill(self) -> None:
        """SIGKILL every service now (a second Ctrl-C)."""
        self.stopping.set()
        for process in list(self.processes.values()):
            if process.poll() is None:
                process.kill()

    def wait(self) -> None:
        """Watch the services until asked to stop, restarting those that die (:meth:`supervise`)."""
        while not self.stopping.wait(self.config.watch_interval_s):
            self.supervise()

    def supervise(self) -> None:
        """One look at the services: a dead one is reported and its restart planned with backoff
        (1 s, 2 s, 4 s ... up to ``restart_backoff_max_s`` while it dies within
        ``restart_reset_after_s`` of each start); planned restarts that are due are started; a
        restarted service is reported once ready again."""
        config, now = self.config, time.monotonic()
        for name, process in list(self.processes.items()):
            if name in self.restart_at or process.poll() is None:
                continue
            ran_s = now - self.started_at.get(name, now)
            in_a_row = 1 if ran_s >= config.restart_reset_after_s else self.deaths_in_a_row.get(name, 0) + 1
            self.deaths_in_a_row[name] = in_a_row
            delay = min(config.restart_backoff_s * 2 ** (in_a_row - 1), config.restart_backoff_max_s)
            self.restart_at[name] = now + delay
            self.restarted.discard(name)
            crash_loop = (
                f"; crash loop: died {in_a_row} times in a row, each within "
                f"{config.restart_reset_after_s:g} s of its start, see its log above"
                if in_a_row > 1
                else ""
            )
            self.output(
                "stack",
                f"{name} exited with code {process.returncode} after {ran_s:.0f} s{crash_loop}; "
                f"restarting it in {delay:g} s",
            )
        for name, due in sorted(self.restart_at.items()):
            if due > now:
                continue
            with self._spawning:
                if self.stopping.is_set():
                    return
                del self.restart_at[name]
                self._spawn(name)
            self.restarted.add(name)
            self.output("stack", f"{name} restarted")
        for name in sorted(self.restarted):
            running, ready_url = self.processes.get(name), self.command(name)[1]
            if running is None or running.poll() is not None:
                continue
            if ready_url is None:
                self.restarted.discard(name)
                self.output("stack", f"{name} running again")
            elif is_ready(ready_url, 1.0):
                self.restarted.discard(name)
                self.output("stack", f"{name} ready again at {self.urls()[name]}")

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

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        argv = self.command(name)[0]
        process = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **self.environment()},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops everything in order
        )
        self.processes[name] = process
        self.started_at[name] = time.monotonic()
        self._thread(lambda: self._pump(name, process), f"log-{name}")
        return process

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
    "field-worker": 36,
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
