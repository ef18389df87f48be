"""``cropseg-inference`` (or ``python -m cropseg_inference``): run the service."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from cropseg_core.web.server import serve_settings
from cropseg_inference.main import create_app
from cropseg_inference.settings import InferenceSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cropseg-inference",
        description="Serve the cropseg segmentation model over HTTP. Every setting is an environment "
        "variable prefixed INFERENCE_ (see cropseg_inference/settings.py); flags override them.",
    )
    parser.add_argument("--host", help="address to listen on (INFERENCE_HOST)")
    parser.add_argument("--port", type=int, help="TCP port (INFERENCE_PORT)")
    parser.add_argument("--model", dest="model_path", help="ONNX model file (INFERENCE_MODEL_PATH)")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = InferenceSettings(**overrides)
    except ValidationError as e:
        print(f"cropseg-inference: invalid settings:\n{e}", file=sys.stderr)
        return 2
    if not settings.model_path.is_file():
        print(
            f"cropseg-inference: model file {settings.model_path} not found: run from the repository root "
            "or set INFERENCE_MODEL_PATH",
            file=sys.stderr,
        )
        return 2
    serve_settings(create_app, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
