"""Starting a service as a child process and waiting until it answers ready, and reading a
raw HTTP answer off a socket (what tests of slow or half-sent requests see).

Used wherever cropseg runs its own services: integration tests, benchmarks, the local
stack launcher. Only the standard library, so any package can use it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO


class ServiceStartError(RuntimeError):
    """The process exited or did not become ready in time; the message carries its output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def read_http_answer(connection: socket.socket) -> tuple[int, str]:
    """Status and body of the HTTP answer on ``connection``, read until its Content-Length has
    arrived or the server closes the connection."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
        data = connection.recv(65536)
        if not data:
            break
        answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionError("the server closed the connection without an answer")
    return int(head.split()[1]), body.decode(errors="replace")


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62  # no length: until the server closes


def is_ready(url: str, timeout_s: float = 2.0) -> bool:
    """True when ``url`` answers 200 (a readiness endpoint)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(
    process: subprocess.Popen[bytes], ready_url: str, timeout_s: float, log: IO[bytes] | None = None
) -> None:
    """Poll ``ready_url`` until it answers 200; raise if the process exits or time runs out.

    ``log`` is the file the process writes its output to; its tail goes into the error.
    """
    deadline = time.monotonic() + timeout_s
    while not is_ready(ready_url):
        if process.poll() is not None:
            raise ServiceStartError(f"{process.args!r} exited with {process.returncode}{_tail(log)}")
        if time.monotonic() > deadline:
            raise ServiceStartError(
                f"{process.args!r} was not ready at {ready_url} after {timeout_s:.0f} s{_tail(log)}"
            )
        time.sleep(0.05)


@contextlib.contextmanager
def running_service(
    argv: Sequence[str],
    ready_url: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 60.0,
    log_path: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until the block ends: SIGTERM, then SIGKILL after 30 s if it hangs.

    The child's stdout and stderr go to ``log_path`` (a temporary file when None); their
    tail is in the error when the service does not start.
    """
    with log_path.open("w+b") if log_path else tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            list(argv), env={**os.environ, **(env or {})}, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_ready(process, ready_url, timeout_s, log)
            yield process
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL if the process is still there after ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(log: IO[bytes] | None) -> str:
    if log is None:
        return ""
    log.seek(0)
    return ":\n" + log.read().decode(errors="replace")[-4000:]
