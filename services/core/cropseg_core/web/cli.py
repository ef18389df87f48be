"""Starting a service from its command: flags over the environment's settings, checks that say in
one line what to fix (exit 2) instead of a start-up traceback, then serve until a signal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from fastapi import FastAPI
from pydantic import ValidationError

from cropseg_core.settings import ServiceSettings
from cropseg_core.store import StoreError, StoreSettings, open_store
from cropseg_core.web.server import Served, serve_settings

S = TypeVar("S", bound=Served)
T = TypeVar("T", bound=ServiceSettings)
Check = Callable[[S], str | None]
"""A start-up check: None when fine, else what is wrong and what to do."""


class _Stored(Protocol):
    store: StoreSettings


def serve_arguments(parser: argparse.ArgumentParser, prefix: str, *, data: bool = False) -> None:
    """``--host`` and ``--port`` (and ``--data`` for a service with a store) naming their variables."""
    parser.add_argument("--host", help=f"address to listen on ({prefix}HOST)")
    parser.add_argument("--port", type=int, help=f"TCP port ({prefix}PORT)")
    if data:
        data_argument(parser, prefix)


def data_argument(parser: argparse.ArgumentParser, prefix: str) -> None:
    parser.add_argument("--data", help=f"data folder of the filesystem backend ({prefix}STORE__PATH)")


def settings_from(settings_type: type[T], args: argparse.Namespace, *names: str) -> T:
    """Settings from the environment, with the flags ``names`` (and ``--data``) given on top.
    Raises ``ValidationError`` for invalid values."""
    overrides: dict[str, Any] = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    settings = settings_type(**overrides)
    if getattr(args, "data", None):
        stored: _Stored = settings  # type: ignore[assignment]  # only services with a store take --data
        stored.store.path = Path(args.data)
    return settings


def run_server(
    prog: str,
    settings: Callable[[], S],
    create_app: Callable[[S], FastAPI],
    *checks: Check[S],
) -> int:
    """Build the settings, run the checks and serve; 2 with one line on stderr when either fails."""
    try:
        chosen = settings()
    except ValidationError as e:
        print(f"{prog}: invalid settings:\n{e}", file=sys.stderr)
        return 2
    for check in checks:
        problem = check(chosen)
        if problem is not None:
            print(f"{prog}: {problem}", file=sys.stderr)
            return 2
    serve_settings(create_app, chosen)
    return 0


def file_exists(attribute: str, what: str, variable: str) -> Check[Any]:
    """The check that ``settings.<attribute>`` is a file (``what``, set by ``variable``)."""

    def check(settings: Any) -> str | None:
        path: Path = getattr(settings, attribute)
        if path.is_file():
            return None
        return f"{what} {path} not found: run from the repository root or set {variable}"

    return check


def store_opens(settings: Any) -> str | None:
    """The check that the data folder or bucket of ``settings.store`` can be used."""
    try:
        open_store(settings.store)
    except StoreError as e:
        return str(e)
    return None
