"""The segmentation workload served by BentoML 1.4.40: ``POST /segment``, PNG bytes in, PNG mask out.

A ``@bentoml.service`` class loads the model in ``__init__`` and exposes one ``@bentoml.api``, started
with ``bentoml serve module:Service`` (BentoML's docs: "Create online API Services", "Input and output
types"). The API takes a positional-only ``bytes`` parameter, BentoML's documented *root input*: the
request body is the parameter, with the ``ContentType`` validator naming image/png; it returns the PNG
as ``bytes`` with the same annotation. ``workers=1`` (one worker process under BentoML's circus
arbiter), the API is not batchable (no adaptive batching), and the per-request access log is off via
the service's ``logging.access`` config (BentoML has no warning switch short of ``--quiet``; with the
access log off it logs only at start and stop). ``GET /readyz`` answers 200 once ``__init__`` has
run. This script execs ``bentoml serve`` (usage tracking off), whose arbiter stops gracefully on
SIGTERM.

    var/peers/bentoml/bin/python benchmarks/peers/serve_bentoml.py --port 3000
"""

# No ``from __future__ import annotations``: BentoML reads the API's annotations for its IO schema.
import argparse
import os
import sys
from pathlib import Path
from typing import Annotated

import bentoml  # type: ignore[import-not-found]
from bentoml.validators import ContentType  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workload import Workload  # noqa: E402

PNG = "image/png"


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Segmenter:
    def __init__(self) -> None:
        self.workload = Workload()

    @bentoml.api(batchable=False)  # type: ignore[untyped-decorator]
    def segment(self, image: Annotated[bytes, ContentType(PNG)], /) -> Annotated[bytes, ContentType(PNG)]:
        return self.workload(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    arguments = parser.parse_args()
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"  # usage tracking: no network here, and not part of the work
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    command = ["serve", f"{Path(__file__).stem}:Segmenter", "--working-dir", str(HERE)]
    command += ["--host", arguments.host, "--port", str(arguments.port)]
    os.execv(bentoml_cli, [str(bentoml_cli), *command])


if __name__ == "__main__":
    main()
