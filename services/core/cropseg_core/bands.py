"""Sensor band layouts: which spectral band each channel of an image file holds.

The same three channels mean different things from different cameras: a phone stores red,
green, blue; a colour-infrared (CIR) composite stores near-infrared, red, green; a ground
robot or a two-band sensor may store a red/NIR pair. Read in the wrong order, shaded soil
looks like a leaf. So the layout is declared (per request, per upload) and every image is
mapped to the model's fixed band order before anything else happens:

    MODEL_BANDS = red, green, blue, nir        (uint8; a band the layout lacks is 0)

The network sees which bands are present (a band that is 0 over a whole tile counts as
absent) and computes the vegetation index the bands allow: excess green where red, green
and blue exist, NDVI = (NIR - R) / (NIR + R) wherever NIR and red exist.

Errors are :class:`LayoutError` (unknown name, 422) and :class:`ChannelCountError` (the file
has a channel count the layout cannot hold, 422); both say what to send instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from cropseg_core.imaging import decode_channels
from cropseg_core.settings import ImageLimits

MODEL_BANDS: Final = ("red", "green", "blue", "nir")
Band = Literal["red", "green", "blue", "nir"]
DEFAULT_LAYOUT: Final = "rgb"


class LayoutError(ValueError):
    """The layout name is not one of :data:`LAYOUTS`."""

    status_code = 422
    code = "unknown_layout"


class ChannelCountError(LayoutError):
    """The image's channel count does not fit the declared layout."""

    code = "layout_channel_mismatch"


@dataclass(frozen=True)
class Layout:
    name: str
    bands: tuple[Band | None, ...]
    """The band of each channel of the file, in order (None: channel ignored)."""
    channel_counts: tuple[int, ...]
    """Channel counts accepted for this layout."""
    description: str
    index: Literal["exg", "ndvi"]
    """The simple vegetation index these bands allow (the baseline to beat)."""

    def has(self, band: Band) -> bool:
        return band in self.bands

    def present(self) -> tuple[bool, ...]:
        """Which of MODEL_BANDS the layout provides."""
        return tuple(self.has(band) for band in MODEL_BANDS)


LAYOUTS: Final[dict[str, Layout]] = {
    layout.name: layout
    for layout in (
        Layout(
            "rgb",
            ("red", "green", "blue"),
            (1, 2, 3, 4),
            "true colour: red, green, blue (phones, RGB drones); grey is read as grey, "
            "an alpha channel marks out-of-field pixels",
            "exg",
        ),
        Layout(
            "cir",
            ("nir", "red", "green"),
            (3, 4),
            "colour infrared: near-infrared, red, green (the classic false-colour composite); "
            "a 4th channel is alpha",
            "ndvi",
        ),
        Layout(
            "rgbn",
            ("red", "green", "blue", "nir"),
            (4,),
            "four-band multispectral: red, green, blue, near-infrared (4-band orthomosaic exports)",
            "ndvi",
        ),
        Layout(
            "nir_red",
            ("nir", "red", None),
            (2, 3),
            "red/NIR two-band composite: channel 1 near-infrared, channel 2 red (a 3rd channel is ignored)",
            "ndvi",
        ),
        Layout(
            "red_nir",
            ("red", "nir", None),
            (2, 3),
            "red/NIR two-band composite: channel 1 red, channel 2 near-infrared (a 3rd channel is ignored)",
            "ndvi",
        ),
    )
}


def get_layout(name: str | None) -> Layout:
    """The layout called ``name`` (None: the default, rgb); LayoutError listing the valid ones."""
    if name is None:
        return LAYOUTS[DEFAULT_LAYOUT]
    layout = LAYOUTS.get(name.strip().lower())
    if layout is None:
        raise LayoutError(f"unknown layout {name!r}: use one of {', '.join(LAYOUTS)}")
    return layout


def _composite_alpha(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    # Transparent pixels carry no data (outside an orthomosaic): black, as out-of-field is everywhere.
    return ((pixels.astype(np.uint16) * alpha[..., None] + 127) // 255).astype(np.uint8)


def check_channels(channels: np.ndarray, layout: Layout) -> int:
    """The channel count of (H, W[, C]) pixels; ChannelCountError (422) when ``layout`` cannot
    read it. Checks without converting anything (an upload's check costs no copy)."""
    count = 1 if channels.ndim == 2 else channels.shape[2]
    if count not in layout.channel_counts:
        accepted = " or ".join(str(c) for c in layout.channel_counts)
        raise ChannelCountError(
            f"layout {layout.name!r} ({layout.description}) needs {accepted} channels, "
            f"but the image has {count}: declare the layout the file was saved in"
        )
    return count


def to_model_bands(channels: np.ndarray, layout: Layout) -> np.ndarray:
    """(H, W, C) uint8 as stored in the file -> (H, W, 4) uint8 in MODEL_BANDS order."""
    count = check_channels(channels, layout)
    if channels.ndim == 2:
        channels = channels[..., None]
    height, width = channels.shape[:2]
    out = np.zeros((height, width, len(MODEL_BANDS)), np.uint8)
    if layout.name == "rgb":
        if count <= 2:  # grey, or grey + alpha
            grey = (
                channels[..., 0]
                if count == 1
                else _composite_alpha(channels[..., :1], channels[..., 1])[..., 0]
            )
            out[..., :3] = grey[..., None]
            return out
        rgb = channels[..., :3] if count == 3 else _composite_alpha(channels[..., :3], channels[..., 3])
        out[..., :3] = rgb
        return out
    stored = channels
    if count == len(layout.bands) + 1:  # a trailing alpha channel
        stored = _composite_alpha(channels[..., :3], channels[..., 3])
    for position, band in enumerate(layout.bands):
        if band is not None and position < stored.shape[2]:
            out[..., MODEL_BANDS.index(band)] = stored[..., position]
    return out


def from_model_bands(bands: np.ndarray, layout: Layout) -> np.ndarray:
    """(H, W, 4) MODEL_BANDS -> the image file's channels in ``layout`` (ignored channels: 0).

    The inverse of :func:`to_model_bands` for images made here (synthetic tiles, tests)."""
    channels = [
        bands[..., MODEL_BANDS.index(band)] if band is not None else np.zeros(bands.shape[:2], np.uint8)
        for band in layout.bands
    ]
    return np.ascontiguousarray(np.stack(channels, axis=-1))


def display_rgb(bands: np.ndarray, layout: Layout) -> np.ndarray:
    """An RGB picture of MODEL_BANDS pixels for people: true colour where the layout has it,
    else the layout's false-colour composite (NIR, red, green-or-red) as viewers show it."""
    if layout.has("blue") and layout.has("green"):
        return np.ascontiguousarray(bands[..., :3])
    third = bands[..., 1] if layout.has("green") else bands[..., 0]
    return np.ascontiguousarray(np.stack([bands[..., 3], bands[..., 0], third], axis=-1))


def picture(channels: np.ndarray, layout: Layout) -> np.ndarray:
    """Decoded channels as people see them in ``layout``, as a new array (true colour files are
    copied as they are, without the four-band detour)."""
    if layout.name == "rgb" and channels.ndim == 3 and channels.shape[2] == 3:
        return channels.copy()
    return display_rgb(to_model_bands(channels, layout), layout)


def decode_picture(data: bytes, layout: str, limits: ImageLimits | None = None) -> np.ndarray:
    """An encoded file as people (and the drift features) see it in its sensor ``layout``:
    true colour, or the layout's false-colour composite."""
    return picture(decode_channels(data, limits).pixels, get_layout(layout))
