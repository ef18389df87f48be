"""Synthetic nadir UAV field tiles with pixel-exact vegetation masks.

A tile is rendered in five spectral bands (blue, green, red, red edge, near infrared) from
a random *scene*: a textured soil (dry, wet, dark, sandy, red, greenish or straw-covered),
crop rows at a random angle and spacing, plants of one species per tile with leaves of
varied size and shape, scattered weeds, stones and straw, plant shadows cast along the sun
direction and soft cloud shadows. Leaves may be dull, dark or mottled. A camera then
records the model's four bands (red, green, blue, near-infrared; see
:mod:`cropseg_core.bands`): auto-exposure with an exposure error (visible and NIR exposed
separately, as multispectral cameras do), per-band gains, a tone curve, vignetting, defocus
or motion blur, shot and read noise, JPEG compression of the visible bands, and black
out-of-field regions (whole or partial) as at the edge of a field's orthomosaic.

Every tile has all four bands (``Tile.image`` is (H, W, 4)); training draws a sensor
layout per crop, and evaluation scores every layout on every tile. Each tile also gets a
*layout* of its own (rgb 55 %, cir 20 %, rgbn 10 %, nir_red and red_nir 7.5 % each): the
file written for it with ``layout_files`` (the sample gallery) is in that layout.

The mask is 255 exactly where a leaf was drawn (crop or weed) and 0 elsewhere, including
out-of-field regions. Everything is seeded: tile ``i`` of seed ``s`` is the same on every
machine, whatever the count or the number of worker processes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cropseg_core.bands import from_model_bands, get_layout
from cropseg_core.files import write_atomic

# Band order everywhere below: blue, green, red, red edge, near infrared.
MODEL_BAND_INDICES = (2, 1, 0, 4)  # rendered bands -> MODEL_BANDS (red, green, blue, nir)
LAYOUT_WEIGHTS = {"rgb": 0.55, "cir": 0.2, "rgbn": 0.1, "nir_red": 0.075, "red_nir": 0.075}

# Typical reflectance per band (B, G, R, RE, NIR); each tile perturbs them.
SOILS: dict[str, tuple[float, ...]] = {
    "dry": (0.14, 0.18, 0.23, 0.26, 0.29),
    "wet": (0.05, 0.07, 0.09, 0.11, 0.13),
    "dark": (0.03, 0.04, 0.05, 0.06, 0.08),
    "sandy": (0.24, 0.31, 0.38, 0.42, 0.45),
    "red": (0.07, 0.10, 0.21, 0.26, 0.29),
    # Algae or moss crust on damp dark soil: slightly green, but no NIR plateau. The
    # classic false positive of colour thresholds.
    "greenish": (0.04, 0.075, 0.05, 0.07, 0.10),
    "residue": (0.10, 0.13, 0.16, 0.19, 0.22),
}
SOIL_WEIGHTS = {
    "dry": 0.2,
    "wet": 0.15,
    "dark": 0.15,
    "sandy": 0.12,
    "red": 0.1,
    "greenish": 0.1,
    "residue": 0.18,
}
STRAW = (0.22, 0.32, 0.40, 0.46, 0.50)
STONE = (0.30, 0.32, 0.34, 0.35, 0.36)
LEAF_HEALTHY = (0.04, 0.11, 0.05, 0.30, 0.52)
LEAF_STRESSED = (0.06, 0.15, 0.11, 0.28, 0.38)
LEAF_DULL = (0.05, 0.08, 0.07, 0.22, 0.34)  # dusty, olive or senescing-but-living leaves
SPECIES = ("rosette", "grass", "broadleaf")


@dataclass(frozen=True)
class Leaf:
    """One leaf: base point, direction, length and width in pixels, tip shape and bend."""

    x: float
    y: float
    angle: float
    length: float
    width: float
    roundness: float
    bend: float
    shade: float


@dataclass
class Scene:
    """Everything needed to render one tile; sampled by :func:`sample_scene`."""

    height: int
    width: int
    soil: str
    soil_reflectance: np.ndarray
    leaves: list[Leaf] = field(default_factory=list)
    leaf_stress: list[float] = field(default_factory=list)
    species: str = "rosette"
    layout: str = "rgb"
    leaf_mottle: float = 0.08
    leaf_dullness: float = 0.0
    sun_azimuth: float = 0.0
    shadow_length: float = 0.0
    shadow_depth: float = 0.6
    texture_strength: float = 0.25
    straw_count: int = 0
    stone_count: int = 0
    cloud_shadow: float = 0.0
    exposure_ev: float = 0.0
    white_balance: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    saturation: float = 1.0
    vignetting: float = 0.0
    defocus_sigma: float = 0.0
    motion_length: int = 0
    motion_angle: float = 0.0
    noise: float = 0.0
    jpeg_quality: int | None = None
    black: str = "none"
    black_angle: float = 0.0
    black_offset: float = 0.0
    texture_seed: int = 0


@dataclass(frozen=True)
class Tile:
    """A rendered tile: bands uint8 (H, W, 4) red, green, blue, NIR; mask uint8 (H, W) in {0, 255}."""

    image: np.ndarray
    mask: np.ndarray
    meta: dict[str, object]

    @property
    def rgb(self) -> np.ndarray:
        """The true-colour picture (what a phone or an RGB drone would store)."""
        return np.ascontiguousarray(self.image[..., :3])


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _white_balance(rng: np.random.Generator) -> tuple[float, float, float, float]:
    # Mostly a colour-temperature error (red against blue), plus a small green/magenta tint;
    # the NIR band has a calibration error of its own.
    temperature = rng.normal(0, 0.08)
    tint = rng.normal(0, 0.03)
    return (1 + temperature, 1 + tint, 1 - temperature, 1 + rng.normal(0, 0.1))


def sample_scene(rng: np.random.Generator, height: int = 360, width: int = 480) -> Scene:
    """Draw a random scene. All randomness of a tile comes from ``rng``."""
    soil = _pick(rng, SOIL_WEIGHTS)
    base = np.array(SOILS[soil]) * rng.uniform(0.75, 1.3)
    # Per-band tint keeps soils of one family from sharing a single colour.
    soil_reflectance = base * rng.uniform(0.88, 1.12, size=5)
    scene = Scene(
        height=height,
        width=width,
        soil=soil,
        soil_reflectance=soil_reflectance,
        species=SPECIES[int(rng.integers(len(SPECIES)))],
        layout=_pick(rng, LAYOUT_WEIGHTS),
        leaf_mottle=rng.uniform(0.04, 0.35) if rng.random() < 0.4 else 0.08,
        leaf_dullness=rng.uniform(0.2, 0.8) if rng.random() < 0.25 else 0.0,
        sun_azimuth=rng.uniform(0, 2 * math.pi),
        shadow_length=rng.uniform(0, 9) if rng.random() < 0.7 else 0.0,
        shadow_depth=rng.uniform(0.35, 0.8),
        texture_strength=rng.uniform(0.08, 0.45),
        straw_count=int(rng.integers(150, 900)) if soil == "residue" else int(rng.integers(0, 25)),
        stone_count=int(rng.integers(0, 60)),
        cloud_shadow=rng.uniform(0.15, 0.45) if rng.random() < 0.2 else 0.0,
        exposure_ev=rng.normal(0, 0.45),
        white_balance=_white_balance(rng),
        saturation=rng.uniform(1.0, 1.9),
        vignetting=rng.uniform(0, 0.35),
        defocus_sigma=rng.uniform(0.3, 1.2) if rng.random() < 0.3 else 0.0,
        motion_length=int(rng.integers(3, 6)) if rng.random() < 0.1 else 0,
        motion_angle=rng.uniform(0, math.pi),
        noise=rng.uniform(0.0, 0.03),
        jpeg_quality=int(rng.integers(50, 96)) if rng.random() < 0.5 else None,
        texture_seed=int(rng.integers(2**31)),
    )
    _sample_plants(rng, scene)
    black_roll = rng.random()
    if black_roll < 0.025:
        scene.black = "full"
    elif black_roll < 0.15:
        scene.black = "partial"
        scene.black_angle = rng.uniform(0, 2 * math.pi)
        scene.black_offset = rng.uniform(0.15, 0.85)
    return scene


def _sample_plants(rng: np.random.Generator, scene: Scene) -> None:
    h, w = scene.height, scene.width
    # Ground sampling distance varies a lot between flights: one scale drives row spacing
    # and plant size together so that small plants in wide rows and big ones both occur.
    scale = math.exp(rng.uniform(math.log(0.7), math.log(2.2)))
    growth = rng.uniform(0.3, 1.0)  # low: seedlings, 1: canopy closing
    row_spacing = rng.uniform(28, 60) * scale
    plant_radius = max(4.0, growth * row_spacing * rng.uniform(0.3, 0.6))
    in_row_gap = plant_radius * rng.uniform(1.2, 3.0)
    missing = rng.uniform(0, 0.3)
    stress = rng.uniform(0, 0.7)
    centres: list[tuple[float, float, float]] = []
    if rng.random() < 0.85:
        angle = rng.uniform(0, math.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        reach = math.hypot(h, w) / 2 + plant_radius * 2
        centre = np.array([w / 2, h / 2])
        offset = rng.uniform(0, row_spacing)
        for k in range(-int(reach / row_spacing) - 1, int(reach / row_spacing) + 2):
            row_point = centre + normal * (k * row_spacing + offset)
            along = np.arange(-reach, reach, in_row_gap) + rng.uniform(0, in_row_gap)
            keep = rng.random(along.size) >= missing
            for t in along[keep]:
                jitter = rng.normal(0, 0.15 * in_row_gap, size=2)
                x, y = row_point + direction * t + jitter
                if -plant_radius <= x <= w + plant_radius and -plant_radius <= y <= h + plant_radius:
                    centres.append((x, y, plant_radius * rng.uniform(0.6, 1.3)))
    else:  # broadcast sowing or pasture: no rows
        density = rng.uniform(0.2, 1.2) / (in_row_gap * row_spacing)
        for _ in range(rng.poisson(density * h * w)):
            centres.append((rng.uniform(0, w), rng.uniform(0, h), plant_radius * rng.uniform(0.5, 1.3)))
    for x, y, radius in centres:
        plant_stress = float(np.clip(stress + rng.normal(0, 0.15), 0, 1))
        for leaf in _plant_leaves(rng, x, y, radius, scene.species, scene.sun_azimuth):
            scene.leaves.append(leaf)
            scene.leaf_stress.append(plant_stress)
    weed_count = int(rng.choice([0, rng.integers(1, 12), rng.integers(10, 60)], p=[0.25, 0.45, 0.3]))
    for _ in range(weed_count):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        radius = rng.uniform(4, 14) * math.sqrt(scale)
        species = SPECIES[int(rng.integers(len(SPECIES)))]
        weed_stress = float(rng.uniform(0, 0.8))
        for leaf in _plant_leaves(rng, x, y, radius, species, scene.sun_azimuth):
            scene.leaves.append(leaf)
            scene.leaf_stress.append(weed_stress)


def _plant_leaves(
    rng: np.random.Generator, x: float, y: float, radius: float, species: str, sun: float
) -> list[Leaf]:
    if species == "grass":
        count, aspect, roundness, bend = int(rng.integers(3, 8)), rng.uniform(3, 6), 0.6, 0.25
    elif species == "broadleaf":
        count, aspect, roundness, bend = int(rng.integers(3, 7)), rng.uniform(0.9, 1.5), 0.3, 0.05
    else:
        count, aspect, roundness, bend = int(rng.integers(4, 10)), rng.uniform(1.8, 3.0), 0.45, 0.08
    start = rng.uniform(0, 2 * math.pi)
    leaves = []
    for i in range(count):
        angle = start + 2 * math.pi * i / count + rng.normal(0, 0.25)
        length = radius * rng.uniform(0.7, 1.05)
        # Leaves facing the sun are brighter; the leaf's own texture is added at render.
        shade = 1.0 + 0.18 * math.cos(angle - sun) + rng.normal(0, 0.06)
        leaves.append(
            Leaf(
                x=x,
                y=y,
                angle=angle,
                length=length,
                width=max(3.0, length / aspect),
                roundness=roundness,
                bend=bend * rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0),
                shade=float(np.clip(shade, 0.6, 1.4)),
            )
        )
    return leaves


def leaf_polygon(leaf: Leaf, points: int = 10) -> np.ndarray:
    """Outline of a leaf as an int32 (N, 2) polygon in pixel coordinates."""
    t = np.linspace(0.0, 1.0, points)
    half_width = leaf.width / 2 * np.sin(np.pi * t**leaf.roundness) ** 0.8
    along = t * leaf.length
    centre_line = leaf.bend * leaf.length * t**2
    upper = np.stack([along, centre_line + half_width], axis=1)
    lower = np.stack([along, centre_line - half_width], axis=1)[::-1]
    outline = np.concatenate([upper, lower])
    c, s = math.cos(leaf.angle), math.sin(leaf.angle)
    rotated = outline @ np.array([[c, s], [-s, c]])
    return np.round(rotated + np.array([leaf.x, leaf.y])).astype(np.int32)


def value_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[int, ...]) -> np.ndarray:
    """Smooth multi-octave noise in roughly [-1, 1]; ``cells`` are octave sizes in pixels."""
    total = np.zeros((height, width), np.float32)
    weight = 0.0
    for cell in cells:
        grid = rng.standard_normal((height // cell + 3, width // cell + 3)).astype(np.float32)
        up = cv2.resize(
            grid, ((width // cell + 3) * cell, (height // cell + 3) * cell), interpolation=cv2.INTER_CUBIC
        )
        total += up[cell : cell + height, cell : cell + width] * math.sqrt(cell)
        weight += cell
    return total / math.sqrt(weight)


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene into (uint8 bands (H, W, 4) red, green, blue, NIR; uint8 mask). JPEG is
    applied by the caller."""
    h, w = scene.height, scene.width
    rng = np.random.default_rng(scene.texture_seed)

    # Vegetation: painter's algorithm, each leaf with its own shade and stress level.
    leaf_shade = np.zeros((h, w), np.float32)
    leaf_stress = np.zeros((h, w), np.float32)
    for leaf, stress in zip(scene.leaves, scene.leaf_stress, strict=True):
        polygon = leaf_polygon(leaf)
        cv2.fillPoly(leaf_shade, [polygon], (leaf.shade,))
        cv2.fillPoly(leaf_stress, [polygon], (stress,))
        if leaf.length > 10:  # midrib, slightly lighter, only on leaves big enough to show it
            tip = polygon[len(polygon) // 2 - 1]
            base = (round(leaf.x), round(leaf.y))
            cv2.line(leaf_shade, base, (int(tip[0]), int(tip[1])), (leaf.shade * 1.12,), 1)
    vegetation = leaf_shade > 0

    # Soil: reflectance times a multi-scale texture (clods, moisture patches, tracks).
    texture = value_noise(rng, h, w, (2, 6, 24, 96))
    grain = 1.0 + scene.texture_strength * texture
    tint = 1.0 + 0.05 * value_noise(rng, h, w, (48,))[..., None] * rng.uniform(-1, 1, 5)
    soil = scene.soil_reflectance[None, None, :] * grain[..., None] * tint
    material = np.ascontiguousarray(soil, dtype=np.float32)
    overlay = np.zeros((h, w), np.uint8)
    for _ in range(scene.straw_count):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        length, angle = rng.uniform(4, 25), rng.uniform(0, math.pi)
        end = (int(x + length * math.cos(angle)), int(y + length * math.sin(angle)))
        cv2.line(overlay, (int(x), int(y)), end, (1,), int(rng.integers(1, 3)))
    for _ in range(scene.stone_count):
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        axes = (int(rng.integers(1, 5)), int(rng.integers(1, 4)))
        cv2.ellipse(overlay, centre, axes, rng.uniform(0, 180), 0, 360, (2,), -1)
    straw_brightness = rng.uniform(0.7, 1.2, size=(h, w)).astype(np.float32)[..., None]
    material = np.where((overlay == 1)[..., None], np.array(STRAW) * straw_brightness, material)
    material = np.where((overlay == 2)[..., None], np.array(STONE) * straw_brightness, material)

    # Leaves: stress mixes healthy and stressed spectra; fine texture inside leaves.
    leaf_texture = 1.0 + scene.leaf_mottle * value_noise(rng, h, w, (2, 5))
    healthy = (1 - scene.leaf_dullness) * np.array(LEAF_HEALTHY) + scene.leaf_dullness * np.array(LEAF_DULL)
    spectrum = (
        healthy[None, None, :] * (1 - leaf_stress[..., None])
        + np.array(LEAF_STRESSED)[None, None, :] * leaf_stress[..., None]
    ) * (leaf_shade * leaf_texture)[..., None]
    material = np.where(vegetation[..., None], spectrum, material).astype(np.float32)

    # Illumination: plants cast shadows on the soil; clouds darken broad patches.
    light = np.ones((h, w), np.float32)
    if scene.shadow_length > 0 and vegetation.any():
        dx = scene.shadow_length * math.cos(scene.sun_azimuth + math.pi)
        dy = scene.shadow_length * math.sin(scene.sun_azimuth + math.pi)
        shift = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
        cast = cv2.warpAffine(vegetation.astype(np.float32), shift, (w, h))
        cast = cv2.GaussianBlur(cast, (0, 0), 1.0 + scene.shadow_length / 6)
        light -= (1 - scene.shadow_depth) * np.clip(cast, 0, 1) * ~vegetation
    if scene.cloud_shadow > 0:
        light *= 1 - scene.cloud_shadow * np.clip(value_noise(rng, h, w, (120,)) + 0.3, 0, 1)
    radiance = material * light[..., None]

    # Camera: visible bands and NIR are exposed separately.
    channels = radiance[..., list(MODEL_BAND_INDICES)]
    exposure = np.empty(4, np.float32)
    exposure[:3] = 0.18 / max(float(channels[..., :3].mean()), 1e-4)
    exposure[3] = 0.18 / max(float(channels[..., 3].mean()), 1e-4)
    exposure *= 2.0**scene.exposure_ev
    linear: np.ndarray = channels * exposure * np.array(scene.white_balance, np.float32)
    if scene.vignetting > 0:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
        linear *= (1 - scene.vignetting * r2)[..., None]
    if scene.defocus_sigma > 0:
        linear = cv2.GaussianBlur(linear, (0, 0), scene.defocus_sigma)
    if scene.motion_length > 0:
        kernel: np.ndarray = np.zeros((scene.motion_length, scene.motion_length), np.float32)
        kernel[scene.motion_length // 2, :] = 1.0 / scene.motion_length
        middle = (scene.motion_length - 1) / 2
        rotation = cv2.getRotationMatrix2D((middle, middle), math.degrees(scene.motion_angle), 1.0)
        kernel = cv2.warpAffine(kernel, rotation, kernel.shape[::-1])
        linear = cv2.filter2D(linear, -1, kernel / max(float(kernel.sum()), 1e-6))
    linear = np.clip(linear, 0, None)
    if scene.noise > 0:
        shot = np.sqrt(linear * scene.noise * 0.05)
        linear = linear + rng.standard_normal(linear.shape).astype(np.float32) * (shot + scene.noise * 0.1)
    # Cameras boost saturation in their colour matrix (visible bands).
    grey = linear[..., :3].mean(axis=2, keepdims=True)
    linear[..., :3] = np.clip(grey + (linear[..., :3] - grey) * scene.saturation, 0, None)
    encoded = np.clip(linear, 0, 1) ** (1 / 2.2)
    image = np.round(encoded * 255).astype(np.uint8)
    mask = np.where(vegetation, 255, 0).astype(np.uint8)

    if scene.black != "none":
        field_mask = out_of_field(scene)
        image[field_mask] = 0
        mask[field_mask] = 0
    return image, mask


def out_of_field(scene: Scene) -> np.ndarray:
    """Boolean (H, W) map of the black region outside the field."""
    h, w = scene.height, scene.width
    if scene.black == "full":
        return np.ones((h, w), bool)
    if scene.black == "none":
        return np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w]
    nx, ny = math.cos(scene.black_angle), math.sin(scene.black_angle)
    projection = (xx - w / 2) * nx + (yy - h / 2) * ny
    half_extent = abs(nx) * w / 2 + abs(ny) * h / 2
    return projection > half_extent * (2 * scene.black_offset - 1)


def encode_tile(image: np.ndarray, jpeg_quality: int | None) -> tuple[bytes, str]:
    """Encode a tile's file (1-4 channels) as PNG, or as JPEG at ``jpeg_quality`` (1 or 3
    channels); returns (bytes, extension)."""
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 and image.shape[2] == 3 else image
    if image.ndim == 3 and image.shape[2] == 4:
        pixels = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    if jpeg_quality is None:
        ok, buffer = cv2.imencode(".png", pixels)
        ext = "png"
    else:
        ok, buffer = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        ext = "jpg"
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise RuntimeError("could not encode tile")
    return buffer.tobytes(), ext


def _jpeg_round_trip(bands: np.ndarray, quality: int) -> tuple[np.ndarray, bytes]:
    """What a camera writing JPEG keeps: visible bands as one colour JPEG, NIR as a grey one."""
    rgb_bytes, _ = encode_tile(np.ascontiguousarray(bands[..., :3]), quality)
    nir_bytes, _ = encode_tile(np.ascontiguousarray(bands[..., 3]), quality)
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(rgb_bytes, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    nir = cv2.imdecode(np.frombuffer(nir_bytes, np.uint8), cv2.IMREAD_GRAYSCALE)
    return np.ascontiguousarray(np.dstack([rgb, nir])), rgb_bytes


def generate_tile(seed: int, index: int, height: int = 360, width: int = 480) -> tuple[Tile, bytes, str]:
    """Tile ``index`` of dataset ``seed``: the tile (after JPEG), the encoded bytes of its
    true-colour picture (``tile.rgb``) and their extension."""
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, height, width)
    bands, mask = render(scene)
    if scene.jpeg_quality is not None:
        bands, encoded = _jpeg_round_trip(bands, scene.jpeg_quality)
        ext = "jpg"
    else:
        encoded, ext = encode_tile(np.ascontiguousarray(bands[..., :3]), None)
    meta: dict[str, object] = {
        "seed": seed,
        "index": index,
        "layout": scene.layout,
        "soil": scene.soil,
        "species": scene.species,
        "black": scene.black,
        "jpeg_quality": scene.jpeg_quality,
        "vegetation_fraction": round(float((mask > 0).mean()), 5),
    }
    return Tile(image=bands, mask=mask, meta=meta), encoded, ext


def _write_one(job: tuple[Path, int, int, int, int, bool]) -> dict[str, object]:
    out, seed, index, height, width, layout_files = job
    tile, encoded, ext = generate_tile(seed, index, height, width)
    stem = f"tile_{seed}_{index:06d}"
    layout = str(tile.meta["layout"]) if layout_files else "rgbn"
    if layout != "rgb":  # rgb keeps the camera's own JPEG; other layouts are PNG
        encoded, ext = encode_tile(from_model_bands(tile.image, get_layout(layout)), None)
    ok, mask_png = cv2.imencode(".png", tile.mask)
    if not ok:  # pragma: no cover
        raise RuntimeError("could not encode mask")
    write_atomic(out / "images" / f"{stem}.{ext}", encoded)
    write_atomic(out / "masks" / f"{stem}.png", mask_png.tobytes())
    return {"name": stem, **tile.meta, "file_layout": layout}


def write_dataset(
    out: Path,
    count: int,
    seed: int,
    *,
    height: int = 360,
    width: int = 480,
    workers: int | None = None,
    progress: bool = True,
    layout_files: bool = False,
) -> list[dict[str, object]]:
    """Write ``count`` tiles as images/ + masks/ and a metadata.jsonl; returns the metadata.

    Images hold all four bands (4-channel PNG: red, green, blue, NIR; layout ``rgbn``), or
    with ``layout_files`` each tile in its own layout (the sample gallery: what users send).
    ``file_layout`` in the metadata says which.
    """
    jobs = [(out, seed, i, height, width, layout_files) for i in range(count)]
    workers = workers or min(os.cpu_count() or 1, 8)
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else nullcontext() as pool:
        results = pool.imap(_write_one, jobs, chunksize=4) if pool else map(_write_one, jobs)
        meta = list(
            tqdm(results, total=count, desc=f"generating {out.name}", unit="tile", disable=not progress)
        )
    lines = "".join(json.dumps(m, sort_keys=True) + "\n" for m in meta)
    write_atomic(out / "metadata.jsonl", lines.encode())
    return meta
