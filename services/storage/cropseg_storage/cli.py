"""``cropseg-storage`` (or ``python -m cropseg_storage``): run the service."""

from __future__ import annotations

import argparse
import sys

from cropseg_core.web.cli import run_server, serve_arguments, settings_from, store_opens
from cropseg_storage.main import create_app
from cropseg_storage.settings import StorageSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cropseg-storage",
        description="Serve the cropseg image store and web UI. Every setting is an environment variable "
        "prefixed STORAGE_ (see cropseg_storage/settings.py); flags override them.",
    )
    serve_arguments(parser, "STORAGE_", data=True)
    parser.add_argument("--inference-url", help="inference service base URL (STORAGE_INFERENCE_URL)")
    args = parser.parse_args(argv)
    return run_server(
        "cropseg-storage",
        lambda: settings_from(StorageSettings, args, "host", "port", "inference_url"),
        create_app,
        store_opens,  # an unusable data folder or bucket: one line saying why
    )


if __name__ == "__main__":
    sys.exit(main())
