"""What ships as a service never imports the training package: cropseg_model (torch, data
generation, training) is a development install, not a dependency of any service image."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

SHIPPED = ["cropseg_core", "cropseg_inference", "cropseg_storage", "cropseg_drift", "cropseg_batch"]


def modules(package: str) -> list[str]:
    root = importlib.import_module(package)
    found = [m.name for m in pkgutil.walk_packages(root.__path__, f"{package}.")]
    return [package, *(name for name in found if not name.endswith(".__main__"))]  # those start a service


def imported(source: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (lazy ones in functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.slow
@pytest.mark.parametrize("package", SHIPPED)
def test_no_shipped_source_imports_the_training_package(package: str) -> None:
    root = Path(importlib.import_module(package).__file__ or "").parent
    sources = sorted(root.rglob("*.py"))
    assert sources
    offenders = {
        str(source.relative_to(root.parent)): sorted(
            n for n in imported(source) if n.split(".")[0] == "cropseg_model"
        )
        for source in sources
    }
    assert {path: names for path, names in offenders.items() if names} == {}


@pytest.mark.slow
def test_every_shipped_module_imports_with_the_training_package_blocked() -> None:
    names = [name for package in SHIPPED for name in modules(package)]
    assert "cropseg_drift.cli" in names
    program = "import sys\nsys.modules['cropseg_model'] = None\n" + "".join(f"import {n}\n" for n in names)
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("package", ["cropseg_storage", "cropseg_drift"])
def test_services_without_the_onnx_extra_import_without_onnx_runtime(package: str) -> None:
    """Storage and drift-monitor images install cropseg-core without [onnx]: none of their modules
    may reach ONNX Runtime (the storage image failed to build when a route imported the model class)."""
    names = modules(package)
    program = "import sys\nsys.modules['onnxruntime'] = None\n" + "".join(f"import {n}\n" for n in names)
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
