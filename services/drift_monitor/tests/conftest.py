from __future__ import annotations

from pathlib import Path

import pytest
from drift_testing import make_profile, write_profile

from cropseg_core.features import ReferenceProfile


@pytest.fixture(scope="session")
def profile() -> ReferenceProfile:
    """A reference profile of 200 small field-like images."""
    return make_profile()


@pytest.fixture
def profile_path(tmp_path: Path, profile: ReferenceProfile) -> Path:
    return write_profile(tmp_path / "reference_profile.npz", profile)
