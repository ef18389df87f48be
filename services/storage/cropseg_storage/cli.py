"""``cropseg-storage`` (or ``python -m cropseg_storage``): run the service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from cropseg_core.store import StoreError, open_store
from cropseg_core.web.server import serve_settings
from cropseg_storage.main import create_app
from cropseg_storage.settings import StorageSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cropseg-storage",
        description="Serve the cropseg image store and web UI. Every setting is an environment variable "
        "prefixed STORAGE_ (see cropseg_storage/settings.py); flags override them.",
    )
    parser.add_argument("--host", help="address to listen on (STORAGE_HOST)")
    parser.add_argument("--port", type=int, help="TCP port (STORAGE_PORT)")
    parser.add_argument("--data", help="data folder of the filesystem backend (STORAGE_STORE__PATH)")
    parser.add_argument("--inference-url", help="inference service base URL (STORAGE_INFERENCE_URL)")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None and key != "data"}
    try:
        settings = StorageSettings(**overrides)
    except ValidationError as e:
        print(f"cropseg-storage: invalid settings:\n{e}", file=sys.stderr)
        return 2
    if args.data:
        settings.store.path = Path(args.data)
    try:  # an unusable data folder or bucket: one line saying why, not a start-up traceback
        open_store(settings.store)
    except StoreError as e:
        print(f"cropseg-storage: {e}", file=sys.stderr)
        return 2
    serve_settings(create_app, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
