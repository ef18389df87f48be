"""The one segmentation pipeline. Every entry point runs it: the inference API and its Open
Inference Protocol route (so storage's segment too), evaluation, pseudo-labelling, the demo
and the drift reference profile. What a user gets is what the project measures.

    decode -> band mapping -> working resolution -> tiles -> model -> stitch
           -> refine by the index (NIR layouts) -> resize back to the original size -> threshold

* **Band mapping** (:mod:`cropseg_core.bands`): the file's channels, read in the declared
  layout, become the model's red, green, blue, NIR.
* **Working resolution**: the network was trained where leaves are a few to a few dozen
  pixels wide. A phone photo at full resolution shows leaves many times wider; the network
  then sees only their outlines. So such images are segmented smaller: by a declared ground
  sampling distance (``gsd_mm``: scale = gsd_mm / the model's working GSD), a declared
  ``scale``, or by default automatically: the layout's vegetation index thresholded by Otsu
  gives a rough mask, its typical leaf width is measured at full resolution
  (:func:`cropseg_core.indices.typical_leaf_width`), and an image whose leaves are wider
  than ``auto_leaf_px`` is scaled so that they are that wide, but never below one tile
  (``tile_size`` on its longest side). Images are never enlarged.
  The probability is resized back: the mask is always the input's size.
* **Tiles**: images larger than ``tile_size`` run in overlapping tiles (:mod:`.tiling`).
* **Refine by the index**: where the layout has near-infrared and red, the network says
  where plants are and NIR - red + Otsu draws their pixels (at the working resolution): 0
  where the index says soil, at least halfway between the threshold and 1 where it says
  plant within 2 px of the network's mask. In such bands the index draws plant edges more
  sharply than a network that learnt NIR from synthetic tiles only, while the network keeps
  out what the index alone would take for plants (``refine_by_index``; the model card
  measures both).

The model runs through a callable, so the inference service can put tiles through its
micro-batcher while offline tools call ONNX Runtime directly: :meth:`Pipeline.prepare`,
then the model on each :meth:`Prepared.tile` into the :meth:`Prepared.mosaic`, then
:meth:`Pipeline.finish`. Tiles are cut when they are run and their predictions stitched as
they come back: a 40 MP image never holds all of its ~230 tiles or predictions at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from itertools import product

import numpy as np
from PIL import Image

from cropseg_core.bands import Layout, get_layout, to_model_bands
from cropseg_core.confidence import confidence_counts
from cropseg_core.indices import (
    otsu_threshold,
    refine_by_difference,
    strided_sample,
    typical_leaf_width,
    vegetation_index,
)
from cropseg_core.masks import BLACK_LEVEL
from cropseg_core.tiling import Mosaic, Tile, plan_tiles

MIN_SCALE = 1 / 16
"""Smallest working scale: below it the network sees nothing a leaf could be."""
GSD_RANGE_MM = (0.01, 1000.0)
"""Ground sampling distances accepted, in millimetres per pixel (microscope to satellite)."""
DEFAULT_MODEL_GSD_MM = 1.0
"""Working GSD when the model file does not say: leaves of the real training photos are 5-60 px."""
WINDOW = 384
"""Side of the windows in which the automatic scale measures leaf width (full resolution)."""
MAX_INDEX_COVER = 0.7
"""Above this share of "vegetation" the index mask is not trusted to measure leaves (on bare,
uniform soil Otsu splits the soil itself; the densest real canopies measured cover 0.64)."""
SAMPLE_PIXELS = 250_000
"""Pixels of the strided sample that sets the automatic scale's index threshold."""


class ScaleError(ValueError):
    """A working-resolution parameter is out of range (422)."""

    status_code = 422
    code = "invalid_scale"


@dataclass(frozen=True)
class PipelineConfig:
    tile_size: int = 512
    """Images up to this many pixels a side (after scaling) run in one pass."""
    tile_overlap: int = 128
    """Pixels shared by neighbouring tiles (each keeps its centre, with overlap/2 px of context)."""
    auto_leaf_px: float = 16.0
    """Automatic working resolution: images whose typical leaf is wider than this many pixels
    are scaled down until it is this wide (0 = never scale automatically)."""
    model_gsd_mm: float = DEFAULT_MODEL_GSD_MM
    """Ground sampling distance the model works best at (from the model file's metadata)."""
    refine_by_index: bool = True
    """Where the layout has near-infrared and red, the network says where plants are and
    NIR - red + Otsu draws their pixels (:func:`cropseg_core.indices.refine_by_difference`)."""


def automatic_scale(bands: np.ndarray, layout: Layout, leaf_px: float) -> float:
    """Scale that brings the typical leaf width down to ``leaf_px``; 1 when leaves are
    narrower or absent.

    The layout's vegetation index is thresholded by Otsu (threshold from a strided sample of
    the whole image); leaf width is measured at full resolution in four windows of at most
    WINDOW pixels (a 2 x 2 grid; a small image whole), so that resizing cannot blur thin
    leaves into wide ones.
    """
    height, width = bands.shape[:2]
    sample = strided_sample(bands, SAMPLE_PIXELS)
    in_field = sample.max(axis=2) > BLACK_LEVEL
    if not in_field.any():
        return 1.0
    index = vegetation_index(sample, layout)[in_field]
    threshold = otsu_threshold(index)
    if (index > threshold).mean() > MAX_INDEX_COVER:  # Otsu split the soil, not plants from soil
        return 1.0
    if height * width <= 4 * WINDOW * WINDOW:  # small enough: measure the whole image once
        windows = [bands]
    else:
        size_y, size_x = min(WINDOW, height), min(WINDOW, width)
        windows = []
        for cy, cx in product((height // 4, 3 * height // 4), (width // 4, 3 * width // 4)):
            y = min(max(0, cy - size_y // 2), height - size_y)
            x = min(max(0, cx - size_x // 2), width - size_x)
            windows.append(bands[y : y + size_y, x : x + size_x])
    masks = []
    for window in windows:
        vegetation = (vegetation_index(window, layout) > threshold) & (window.max(axis=2) > BLACK_LEVEL)
        masks.append(np.pad(vegetation, ((0, 0), (0, 1))))  # a soil column keeps windows apart
    leaf = typical_leaf_width(np.where(np.hstack(masks), np.uint8(255), np.uint8(0)))
    if leaf is None or leaf <= leaf_px:
        return 1.0
    return max(MIN_SCALE, leaf_px / leaf)


def working_scale(
    bands: np.ndarray,
    layout: Layout,
    config: PipelineConfig,
    *,
    gsd_mm: float | None = None,
    scale: float | None = None,
) -> float:
    """The factor (MIN_SCALE to 1) the image is resized by before the model sees it."""
    if gsd_mm is not None and scale is not None:
        raise ScaleError("give either gsd_mm or scale, not both")
    if scale is not None:
        if not MIN_SCALE <= scale <= 1:
            raise ScaleError(f"scale must be between {MIN_SCALE} and 1 (got {scale})")
        return float(scale)
    if gsd_mm is not None:
        low, high = GSD_RANGE_MM
        if not low <= gsd_mm <= high:
            raise ScaleError(f"gsd_mm must be between {low} and {high} millimetres per pixel (got {gsd_mm})")
        return float(min(1.0, max(MIN_SCALE, gsd_mm / config.model_gsd_mm)))
    if config.auto_leaf_px <= 0:
        return 1.0
    # Never shrink an image below one tile automatically: a tile-sized image is what the
    # network was trained on, and an index mask fooled by greenish soil must not make a
    # small image smaller still. Larger images may shrink down to one tile.
    floor = min(1.0, config.tile_size / max(bands.shape[0], bands.shape[1]))
    return 1.0 if floor == 1.0 else max(floor, automatic_scale(bands, layout, config.auto_leaf_px))


def resize_bands(bands: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average each uint8 band to (height, width): band by band, so no band is taken for alpha."""
    out = np.empty((height, width, bands.shape[2]), np.uint8)
    for index in range(bands.shape[2]):
        band = Image.fromarray(np.ascontiguousarray(bands[..., index]))
        out[..., index] = np.asarray(band.resize((width, height), Image.Resampling.BOX))
    return out


def resize_probability(probability: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float32 probability map back to the original size."""
    image = Image.fromarray(np.ascontiguousarray(probability, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


@dataclass
class Prepared:
    """An image mapped to the model's bands at its working resolution, cut into tiles."""

    bands: np.ndarray
    plan: list[Tile]
    height: int
    width: int
    scale: float
    layout: Layout

    def tile(self, index: int) -> np.ndarray:
        """The model's input for tile ``index`` of the plan (a contiguous copy)."""
        return np.ascontiguousarray(self.plan[index].read(self.bands))

    def mosaic(self) -> Mosaic:
        """Where the tiles' predictions are stitched, at the working resolution."""
        return Mosaic(self.plan, *self.bands.shape[:2])


@dataclass
class Segmentation:
    probability: np.ndarray  # (H, W) float32 in [0, 1], the input's size
    mask: np.ndarray  # (H, W) uint8, 255 = vegetation
    threshold: float
    tiles: int
    scale: float
    layout: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @property
    def vegetation_fraction(self) -> float:
        return float(np.count_nonzero(self.mask)) / self.mask.size if self.mask.size else 0.0

    @cached_property
    def confidence(self) -> np.ndarray:
        """(2, BINS) pixel counts by predicted probability, soil then plant: what the label-free
        IoU estimate reads (:mod:`cropseg_core.confidence`)."""
        return confidence_counts(self.probability, self.threshold)


class Pipeline:
    def __init__(self, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()

    def prepare(
        self,
        channels: np.ndarray,
        layout: Layout | str | None = None,
        *,
        gsd_mm: float | None = None,
        scale: float | None = None,
    ) -> Prepared:
        """Band mapping, working resolution and the tile plan for one image as decoded."""
        layout = layout if isinstance(layout, Layout) else get_layout(layout)
        bands = to_model_bands(channels, layout)
        height, width = bands.shape[:2]
        factor = working_scale(bands, layout, self.config, gsd_mm=gsd_mm, scale=scale)
        if factor < 1:
            bands = resize_bands(bands, max(1, round(height * factor)), max(1, round(width * factor)))
        plan = plan_tiles(bands.shape[0], bands.shape[1], self.config.tile_size, self.config.tile_overlap)
        return Prepared(bands, plan, height, width, factor, layout)

    def finish(self, prepared: Prepared, mosaic: Mosaic, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """The stitched probability resized back to the input's size, and thresholded."""
        probability = mosaic.result()
        if self.config.refine_by_index and prepared.layout.has("nir") and prepared.layout.has("red"):
            refine_by_difference(probability, prepared.bands, threshold)
        if probability.shape != (prepared.height, prepared.width):
            probability = resize_probability(probability, prepared.height, prepared.width)
        return probability, np.where(probability > threshold, np.uint8(255), np.uint8(0))

    def run(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        channels: np.ndarray,
        threshold: float,
        layout: Layout | str | None = None,
        *,
        gsd_mm: float | None = None,
        scale: float | None = None,
    ) -> Segmentation:
        """The whole pipeline in this thread; ``predict`` maps one (h, w, 4) tile to (h, w)."""
        started = time.perf_counter()
        prepared = self.prepare(channels, layout, gsd_mm=gsd_mm, scale=scale)
        timings = {"preprocess": time.perf_counter() - started}
        started = time.perf_counter()
        mosaic = prepared.mosaic()
        for index in range(len(prepared.plan)):
            mosaic.put(index, predict(prepared.tile(index)))
        timings["infer"] = time.perf_counter() - started
        started = time.perf_counter()
        probability, mask = self.finish(prepared, mosaic, threshold)
        timings["postprocess"] = time.perf_counter() - started
        return Segmentation(
            probability, mask, threshold, len(prepared.plan), prepared.scale, prepared.layout.name, timings
        )
