"""``cropseg-stack up``: run cropseg on this machine until Ctrl-C (what ``make up`` does)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from cropseg_stack.launcher import REPO, Stack, StackConfig, StackError, StackInterruptedError, print_line


def _port(variable: str, default: int) -> int:
    value = os.environ.get(variable, "")
    return int(value) if value.isdigit() else default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cropseg-stack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start everything and stream the logs; Ctrl-C stops it all")
    up.add_argument("--data", type=Path, default=REPO / "var" / "data", help="data folder (default var/data)")
    up.add_argument("--inference-port", type=int, default=_port("INFERENCE_PORT", 8001))
    up.add_argument("--storage-port", type=int, default=_port("STORAGE_PORT", 8002))
    up.add_argument("--drift-port", type=int, default=_port("DRIFT_PORT", 8003))
    up.add_argument("--prometheus-port", type=int, default=_port("PROMETHEUS_PORT", 9090))
    up.add_argument("--no-prometheus", dest="prometheus", action="store_const", const=False, default=None,
                    help="do not start Prometheus even when it is installed")  # fmt: skip
    up.add_argument(
        "--drift-every",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="run the drift check this often (the CronJob's role; 0 = never; default 300)",
    )
    args = parser.parse_args(argv)
    config = StackConfig(
        data=args.data,
        inference_port=args.inference_port,
        storage_port=args.storage_port,
        drift_port=args.drift_port,
        prometheus_port=args.prometheus_port,
        prometheus=args.prometheus,
        drift_every_s=args.drift_every or None,
    )
    stack = Stack(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Runs on the main thread between two bytecodes, possibly inside print_line: taking its
        # lock or printing here could deadlock (a second Ctrl-C once hung so), so the first signal
        # only sets the flag (the main thread says it) and the second writes straight to the fd.
        if stack.stopping.is_set():  # the second Ctrl-C: no more waiting
            os.write(sys.stdout.fileno(), f"{'stack':<13}| stopping now: killing every service\n".encode())
            stack.kill()
            os._exit(130)
        stack.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
    except StackInterruptedError:
        return 130
    except StackError as e:
        print(f"cropseg-stack: {e}", file=sys.stderr)
        return 2
    urls = stack.urls()
    lines = [
        f"web UI          {urls['storage']}",
        f"inference API   {urls['inference']}/docs",
        f"drift monitor   {urls['drift-monitor']}/docs"
        + (
            f" (first drift run in {min(config.first_drift_after_s, config.drift_every_s):g} s, "
            f"then every {config.drift_every_s:g} s)"
            if config.drift_every_s
            else ""
        ),
    ]
    if config.field_worker:
        lines.append(
            f"field worker    segments the fields queued in the web UI (checkpoints: {stack.field_work})"
        )
    if "prometheus" in urls:
        lines.append(f"prometheus      {urls['prometheus']}")
    elif stack.prometheus_skipped:
        lines.append(f"prometheus      {stack.prometheus_skipped}")
    elif config.prometheus is False:
        lines.append("prometheus      not started (--no-prometheus)")
    else:
        lines.append("prometheus      not installed (apt-get install prometheus), not started")
    lines.append("logs            requests and errors of each service below (probes and /metrics left out)")
    lines.append(f"data            {config.data}   -- Ctrl-C stops everything")
    for line in lines:
        print_line("stack", line)
    try:
        stack.wait()  # until Ctrl-C or SIGTERM; a service that dies is restarted meanwhile
    finally:
        if stack.stopping.is_set():
            print_line("stack", "stopping: finishing requests in flight (Ctrl-C again to kill at once)")
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
