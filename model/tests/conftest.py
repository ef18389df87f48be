from pathlib import Path

import numpy as np
import pytest

from cropseg_model.synth import write_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight generated tiles of 96x128 in the paired layout (shared, read-only)."""
    out = tmp_path_factory.mktemp("tiny") / "tiles"
    write_dataset(out, 8, seed=11, height=96, width=128, workers=1, progress=False)
    return out


def disc_image(height: int = 64, width: int = 80, radius: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Brown soil with one green disc in the middle, and its exact mask."""
    yy, xx = np.mgrid[0:height, 0:width]
    inside = (yy - height // 2) ** 2 + (xx - width // 2) ** 2 <= radius**2
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (120, 90, 60)
    image[inside] = (60, 150, 50)
    return image, np.where(inside, 255, 0).astype(np.uint8)
