"""The import picture: cropseg's domain sits below its web toolkit."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import cropseg_core

WEB_FRAMEWORK = ("fastapi", "starlette", "uvicorn")


@pytest.mark.slow
def test_the_domain_imports_without_the_web_framework() -> None:
    domain = [
        module.name
        for module in pkgutil.walk_packages(cropseg_core.__path__, "cropseg_core.")
        if not module.name.startswith("cropseg_core.web")
    ]
    assert "cropseg_core.repository" in domain
    assert "cropseg_core.errors" in domain
    blocked = "".join(f"sys.modules[{name!r}] = None\n" for name in WEB_FRAMEWORK)  # any import of them fails
    imports = "".join(f"import {name}\n" for name in domain)
    result = subprocess.run(
        [sys.executable, "-c", f"import sys\n{blocked}{imports}"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
