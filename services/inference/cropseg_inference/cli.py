"""``cropseg-inference`` (or ``python -m cropseg_inference``): run the service."""

from __future__ import annotations

import argparse
import sys

from cropseg_core.web.cli import file_exists, run_server, serve_arguments, settings_from
from cropseg_inference.main import create_app
from cropseg_inference.settings import InferenceSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cropseg-inference",
        description="Serve the cropseg segmentation model over HTTP. Every setting is an environment "
        "variable prefixed INFERENCE_ (see cropseg_inference/settings.py); flags override them.",
    )
    serve_arguments(parser, "INFERENCE_")
    parser.add_argument("--model", dest="model_path", help="ONNX model file (INFERENCE_MODEL_PATH)")
    args = parser.parse_args(argv)
    return run_server(
        "cropseg-inference",
        lambda: settings_from(InferenceSettings, args, "host", "port", "model_path"),
        create_app,
        file_exists("model_path", "model file", "INFERENCE_MODEL_PATH"),
    )


if __name__ == "__main__":
    sys.exit(main())
