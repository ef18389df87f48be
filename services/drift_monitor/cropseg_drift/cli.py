"""``cropseg-drift``: the drift monitor's commands.

    cropseg-drift run          one drift run (the CronJob); exit 0 no drift, 1 drift, 2 error
    cropseg-drift serve        the API (reports, on-demand runs, metrics)
    cropseg-drift reference    what runs compare with: show it, use uploads as it, reset it

Settings are environment variables prefixed DRIFT_ (cropseg_drift/settings.py); flags override them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

from pydantic import ValidationError

from cropseg_core.log import configure_logging
from cropseg_core.web.cli import data_argument, serve_arguments, settings_from
from cropseg_drift.settings import DriftSettings


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """A Job's pod (or compose's stop) ends a run with SIGTERM: unwind, so the run lock is released
    and no half report is left, and exit 143 at once instead of being killed later."""
    print("cropseg-drift run: stopped by SIGTERM before it finished; no report written", file=sys.stderr)
    raise SystemExit(128 + signum)


def cmd_run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    from cropseg_drift.runner import run, summary_table

    settings = settings_from(DriftSettings, args, "engine", "fail_on_drift", "window_images", "source")
    configure_logging(settings.log_level, settings.log_format)
    result = run(
        settings, progress=args.progress and sys.stderr.isatty(), report_id=os.environ.get("DRIFT_REPORT_ID")
    )
    print(summary_table(result), end="")
    if result.status == "error":
        print(f"cropseg-drift run: {result.message}", file=sys.stderr)
    return result.exit_code


def cmd_serve(args: argparse.Namespace) -> int:
    from cropseg_core.web.cli import file_exists, run_server, store_opens
    from cropseg_drift.main import create_app

    return run_server(
        "cropseg-drift serve",
        lambda: settings_from(DriftSettings, args, "host", "port", "engine"),
        create_app,
        file_exists("reference_path", "reference profile", "DRIFT_REFERENCE_PATH"),
        store_opens,  # an unusable data folder or bucket: one line saying why
    )


def cmd_reference(args: argparse.Namespace) -> int:
    from datetime import datetime

    from cropseg_core.errors import ClientError
    from cropseg_core.features import load_reference_profile
    from cropseg_core.store import StoreError, open_store
    from cropseg_drift import reference
    from cropseg_drift.report import read_report

    settings = settings_from(DriftSettings, args, "layout", "min_samples")
    shipped = load_reference_profile(settings.reference_path)
    try:
        store = open_store(settings.store)
        if args.action == "use":
            if args.report:
                report = read_report(store, args.report)
                reference.choose_report(store, shipped, report, settings.min_samples)
            elif args.since or args.until or args.first:
                since, until = (reference.as_utc(datetime.fromisoformat(t)) if t else None
                                for t in (args.since, args.until))  # fmt: skip
                reference.choose_uploads(store, shipped, settings, since=since, until=until, first=args.first)
            else:
                raise ValueError("use needs --report ID, or --since / --until / --first to select uploads")
        elif args.action == "reset":
            reference.reset(store, settings.layout)
        for layout in sorted(set(shipped.layouts.tolist())):
            print(f"{layout:<8} {reference.describe(reference.load_reference(shipped, store, layout))}")
    except (StoreError, ClientError) as e:  # a missing report, too few images: what to do
        print(f"cropseg-drift reference: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cropseg-drift", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="one drift run (the CronJob's command)")
    data_argument(run, "DRIFT_")
    run.add_argument("--engine", choices=("alibi", "scipy"), help="DRIFT_ENGINE")
    run.add_argument("--window-images", type=int, help="DRIFT_WINDOW_IMAGES")
    run.add_argument("--source", choices=("upload", "sample"), help="DRIFT_SOURCE")
    run.add_argument(
        "--fail-on-drift",
        dest="fail_on_drift",
        action="store_const",
        const=True,
        help="exit 1 when drift is found: a Job shows failed (DRIFT_FAIL_ON_DRIFT=true)",
    )
    run.add_argument("--no-fail-on-drift", dest="fail_on_drift", action="store_const", const=False,
                     help="exit 0 when the run worked (DRIFT_FAIL_ON_DRIFT=false)")  # fmt: skip
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    run.set_defaults(handler=cmd_run)

    serve = commands.add_parser("serve", help="the API: reports, on-demand runs, metrics")
    serve_arguments(serve, "DRIFT_", data=True)
    serve.add_argument("--engine", choices=("alibi", "scipy"), help="engine of on-demand runs (DRIFT_ENGINE)")
    serve.set_defaults(handler=cmd_serve)

    chosen = commands.add_parser(
        "reference", help="what runs compare with, per layout: show it, use uploads as it, or reset it"
    )
    chosen.add_argument("action", choices=("show", "use", "reset"))
    data_argument(chosen, "DRIFT_")
    chosen.add_argument("--layout", help="the layout whose reference to set or reset (DRIFT_LAYOUT)")
    chosen.add_argument("--report", help="use: the images of this report")
    chosen.add_argument("--since", help="use: uploads created at or after this ISO time (UTC unless given)")
    chosen.add_argument("--until", help="use: uploads created before this ISO time")
    chosen.add_argument("--first", type=int, help="use: only the first (oldest) this many of them")
    chosen.add_argument(
        "--min-samples", type=int, help="DRIFT_MIN_SAMPLES: the fewest images a reference takes"
    )
    chosen.set_defaults(handler=cmd_reference)

    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ValidationError as e:
        print(f"cropseg-drift: invalid settings:\n{e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"cropseg-drift {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
