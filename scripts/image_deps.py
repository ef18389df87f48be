"""Build steps of the service images (services/Dockerfile runs them; only Python's standard library).

    python image_deps.py install services/inference     # the third-party dependencies, pinned
    python image_deps.py slim                          # drop what no service runs

``install`` reads the pyproject files only (the dependency layer must not see the source, so that
editing code reuses it): the service's dependencies, those of ``cropseg-core`` with the extras it
asks for, and ``[tool.cropseg.image]`` of the service's pyproject:

    no-deps = ["alibi-detect"]   # installed without its declared dependencies ...
    requires = ["numba", ...]    # ... of which these are what it imports at run time

It installs into the runtime virtualenv with a separate pip (``/opt/pip``), so the runtime
environment never holds pip or setuptools. ``slim`` removes the packages' test suites, the
symbol tables of extension modules, ONNX Runtime's C-API library (the Python binding links the
runtime statically and never loads it) and botocore's models of AWS services other than S3 and
those its credential chain calls (STS for web identity, SSO). The dependency layer holds no
``.pyc``: the Dockerfile's last step imports what the service loads, so that exactly that bytecode
is written.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

PIP = ["/opt/pip/bin/pip", "--python", "/opt/venv/bin/python"]
BOTOCORE_SERVICES = {"s3", "sts", "sso", "sso-oidc"}
LOCAL = {"cropseg-core": "services/core"}
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?")


def _pyproject(folder: str) -> dict:
    return tomllib.loads(Path(folder, "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    match = _REQUIREMENT.match(requirement)
    if not match:
        raise SystemExit(f"image_deps: cannot read requirement {requirement!r}")
    return match.group(1).lower().replace("_", "-")


def requirements(folder: str, extras: tuple[str, ...] = ()) -> list[str]:
    """Third-party requirements of a local package and the local packages it depends on."""
    project = _pyproject(folder)["project"]
    found: list[str] = []
    optional = project.get("optional-dependencies", {})
    for requirement in [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]:
        name = _name(requirement)
        if name in LOCAL:
            wanted = _REQUIREMENT.match(requirement).group(2) or ""  # type: ignore[union-attr]
            found += requirements(LOCAL[name], tuple(e.strip() for e in wanted.split(",") if e.strip()))
        elif requirement not in found:
            found.append(requirement)
    return found


def install(folder: str) -> None:
    image = _pyproject(folder).get("tool", {}).get("cropseg", {}).get("image", {})
    no_deps = {_name(n) for n in image.get("no-deps", [])}
    wanted = requirements(folder)
    normal = [r for r in wanted if _name(r) not in no_deps] + list(image.get("requires", []))
    alone = [r for r in wanted if _name(r) in no_deps]
    pip = [*PIP, "install", "--no-compile", "-c", "constraints.txt"]
    subprocess.run([*pip, *normal], check=True)
    if alone:
        subprocess.run([*pip, "--no-deps", *alone], check=True)


def slim(venv: Path = Path("/opt/venv")) -> None:
    site = next(venv.glob("lib/python3*/site-packages"))
    before = _size(venv)
    for tests in [p for p in site.glob("*/**/tests") if p.is_dir()]:
        shutil.rmtree(tests, ignore_errors=True)
    for library in site.glob("onnxruntime/capi/libonnxruntime.so*"):
        library.unlink()
    for model in site.glob("botocore/data/*"):
        if model.is_dir() and model.name not in BOTOCORE_SERVICES:
            shutil.rmtree(model)
    # Not in auditwheel's *.libs folders (patched by patchelf: stripping those can break them).
    # The Dockerfile's last step imports what the service loads: one that no longer loads fails.
    objects = [str(p) for p in site.rglob("*.so*") if p.is_file() and not p.parent.name.endswith(".libs")]
    if objects and shutil.which("strip"):
        subprocess.run(["strip", "--strip-unneeded", *objects], check=True)
    print(f"image_deps: slimmed {venv} from {before} MB to {_size(venv)} MB")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) // 2**20


def main() -> None:
    command, *arguments = sys.argv[1:] or ["help"]
    if command == "install" and len(arguments) == 1:
        install(arguments[0])
    elif command == "slim" and not arguments:
        slim()
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
