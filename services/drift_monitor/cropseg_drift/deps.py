"""FastAPI dependencies: what a route needs, taken from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from cropseg_core.features import ReferenceProfile
from cropseg_core.store import BlobStore
from cropseg_core.web.service import from_state
from cropseg_drift.runs import RunLauncher
from cropseg_drift.settings import DriftSettings

Settings = Annotated[DriftSettings, Depends(from_state("settings", DriftSettings))]
Store = Annotated[BlobStore, Depends(from_state("store", BlobStore))]
Profile = Annotated[ReferenceProfile, Depends(from_state("profile", ReferenceProfile))]
Launcher = Annotated[RunLauncher, Depends(from_state("launcher", RunLauncher))]
