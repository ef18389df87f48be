"""The reference each layout's runs compare with: see it, choose uploads as it, go back to training."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, model_validator
from starlette.concurrency import run_in_threadpool

from cropseg_core.bands import get_layout
from cropseg_core.errors import ClientError
from cropseg_core.features import ReferenceProfile
from cropseg_core.store import BlobStore
from cropseg_core.web.auth import WRITE
from cropseg_core.web.bodies import read_json
from cropseg_core.web.errors import error_responses
from cropseg_drift import reference
from cropseg_drift.deps import Profile, Settings, Store
from cropseg_drift.reference import as_utc
from cropseg_drift.report import read_report

router = APIRouter(prefix="/api/v1/drift/reference", tags=["reference"])
CHOICE_BODY_BYTES = 4096  # a report id, or since / until / first


class ReferenceState(BaseModel):
    layout: str
    kind: Literal["training", "chosen"]
    images: int
    description: str


class ChooseReference(BaseModel):
    """Either a report whose images become the reference, or a selection of uploads."""

    report_id: str | None = Field(default=None, description="a report id: its images (and their layout)")
    since: datetime | None = Field(default=None, description="uploads created at or after this time")
    until: datetime | None = Field(default=None, description="uploads created before this time")
    first: int | None = Field(default=None, ge=1, description="only the first (oldest) this many")

    @model_validator(mode="after")
    def _one_kind(self) -> ChooseReference:
        self.since, self.until = (as_utc(value) for value in (self.since, self.until))
        selection = (self.since, self.until, self.first)
        if self.report_id is not None and any(value is not None for value in selection):
            raise ValueError(
                "give either report_id or a selection of uploads (since, until, first), not both"
            )
        if self.report_id is None and all(value is None for value in selection):
            raise ValueError("give report_id, or since / until / first to select uploads")
        return self


def _layout(name: str) -> str:
    try:
        return get_layout(name).name
    except ValueError as e:
        raise ClientError(str(e)) from e


def _state(store: BlobStore, shipped: ReferenceProfile, layout: str) -> ReferenceState:
    profile = reference.load_reference(shipped, store, layout)
    kind: Literal["training", "chosen"] = "chosen" if profile.meta.get("kind") == "chosen" else "training"
    return ReferenceState(layout=layout, kind=kind, images=len(profile.image_names),
                          description=reference.describe(profile))  # fmt: skip


@router.get("", response_model=list[ReferenceState])
def references(store: Store, shipped: Profile) -> list[ReferenceState]:
    """The reference of every layout the model's profile covers."""
    return [_state(store, shipped, layout) for layout in sorted(set(shipped.layouts.tolist()))]


@router.put(
    "/{layout}",
    response_model=ReferenceState,
    dependencies=WRITE,
    responses=error_responses(400, 401, 403, 404, 408, 409, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChooseReference.model_json_schema()}},
        }
    },
)
async def choose(
    request: Request, store: Store, shipped: Profile, settings: Settings, layout: str
) -> ReferenceState:
    """Use a report's images, or the uploads of a period, as this layout's reference (replacing a
    reference chosen before); 409 when fewer than DRIFT_MIN_SAMPLES segmented images qualify."""
    layout = _layout(layout)
    body = await read_json(request, ChooseReference, CHOICE_BODY_BYTES)  # after the token check
    if body.report_id is not None:
        report = read_report(store, body.report_id)
        if report["window"]["layout"] != layout:
            raise ClientError(
                f"report {body.report_id} checked {report['window']['layout']} images, not {layout}: "
                f"PUT it to /api/v1/drift/reference/{report['window']['layout']}"
            )
        await run_in_threadpool(reference.choose_report, store, shipped, report, settings.min_samples)
    else:
        chosen = settings.model_copy(update={"layout": layout})
        select = partial(reference.choose_uploads, since=body.since, until=body.until, first=body.first)
        await run_in_threadpool(select, store, shipped, chosen)
    return _state(store, shipped, layout)


@router.delete("/{layout}", response_model=ReferenceState, dependencies=WRITE,
               responses=error_responses(400, 401, 403))  # fmt: skip
def back_to_training(store: Store, shipped: Profile, layout: str) -> ReferenceState:
    """Compare this layout with the model's training images again."""
    layout = _layout(layout)
    reference.reset(store, layout)
    return _state(store, shipped, layout)
