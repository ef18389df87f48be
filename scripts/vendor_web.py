"""Refresh the JavaScript libraries the storage web UI ships (web/vendor/), from npm.

    python scripts/vendor_web.py          # rewrite web/vendor/ from the pinned packages
    python scripts/vendor_web.py --check  # exit 1 when web/vendor/ differs from them

The UI has no build step and works offline, so the libraries' built files are committed. Each
package is fetched with ``npm pack`` at a pinned version, its tarball checked against the
pinned npm integrity hash, and only the listed files (with the package's LICENSE) copied.
To move to a new version: change VERSION and INTEGRITY (``npm view <name>@<version>
dist.integrity``), run this, and update NOTICE.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "services/storage/cropseg_storage/web/vendor"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str
    files: dict[str, str]
    """Path in the package (under ``package/``) -> path under web/vendor/<folder>/."""

    @property
    def folder(self) -> Path:
        return VENDOR / self.name


LEAFLET_IMAGES = ("layers.png", "layers-2x.png", "marker-icon.png", "marker-icon-2x.png", "marker-shadow.png")
PACKAGES = (
    Package(
        name="leaflet",
        version="1.9.4",
        integrity="sha512-nxS1ynzJOmOlHp+iL3FyWqK89GtNL8U8rvlMOsQdTTssxZwCXh8N2NB3GDQOL+YR3XnWyZAxwQixURb+FA74PA==",
        files={
            "dist/leaflet.js": "leaflet.js",
            "dist/leaflet.css": "leaflet.css",
            "LICENSE": "LICENSE",
            **{f"dist/images/{image}": f"images/{image}" for image in LEAFLET_IMAGES},
        },
    ),
    Package(
        name="tus-js-client",
        version="4.3.1",
        integrity="sha512-ZLeYmjrkaU1fUsKbIi8JML52uAocjEZtBx4DKjRrqzrZa0O4MYwT6db+oqePlspV+FxXJAyFBc/L5gwUi2OFsg==",
        files={"dist/tus.min.js": "tus.min.js", "LICENSE": "LICENSE"},
    ),
)


def fetch(package: Package, folder: Path) -> dict[str, bytes]:
    """The package's listed files, from its npm tarball checked against the pinned hash."""
    spec = f"{package.name}@{package.version}"
    subprocess.run(["npm", "pack", "--silent", spec, "--pack-destination", str(folder)], check=True)
    tarball = next(folder.glob(f"{package.name}-{package.version}.tgz"))
    algorithm, expected = package.integrity.split("-", 1)
    digest = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if digest != expected:
        raise SystemExit(f"{spec}: the tarball's {algorithm} is {digest}, not the pinned {expected}")
    files = {}
    with tarfile.open(tarball) as archive:
        for source, target in package.files.items():
            member = archive.extractfile(f"package/{source}")
            if member is None:
                raise SystemExit(f"{spec} has no file {source}")
            files[target] = member.read()
    return files


def main() -> int:
    check = "--check" in sys.argv[1:]
    differing = []
    with tempfile.TemporaryDirectory() as temporary:
        for package in PACKAGES:
            for target, data in fetch(package, Path(temporary)).items():
                path = package.folder / target
                if path.exists() and path.read_bytes() == data:
                    continue
                differing.append(str(path.relative_to(VENDOR)))
                if not check:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
    if check and differing:
        print(f"web/vendor/ differs from the pinned packages: {', '.join(differing)}", file=sys.stderr)
        return 1
    print(f"web/vendor/: {len(differing)} files {'differ' if check else 'written'}, the rest unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
