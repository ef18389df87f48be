"""``GET /api/v1/layouts``: the sensor layouts every service reads (one route, both services)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cropseg_core.bands import LAYOUTS

router = APIRouter(prefix="/api/v1", tags=["layouts"])


class LayoutOut(BaseModel):
    name: str
    bands: list[str | None] = Field(description="Band of each channel of the file (null: ignored)")
    channels: list[int] = Field(description="Channel counts accepted")
    description: str
    index: str = Field(description="The simple vegetation index these bands allow (exg or ndvi)")


@router.get("/layouts", response_model=list[LayoutOut], summary="Sensor layouts an image may be declared in")
def layouts() -> list[LayoutOut]:
    return [
        LayoutOut(
            name=layout.name,
            bands=list(layout.bands),
            channels=list(layout.channel_counts),
            description=layout.description,
            index=layout.index,
        )
        for layout in LAYOUTS.values()
    ]
