"""The model as every entry point loads it: one threshold rule, the pipeline at the model's resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from cropseg_core.bands import get_layout
from cropseg_core.contracts import Threshold, check_threshold
from cropseg_core.errors import ClientError
from cropseg_core.model import LoadedModel
from cropseg_core.pipeline import PipelineConfig

MODEL = Path(__file__).resolve().parents[3] / "model" / "artifacts" / "cropseg-unet.onnx"


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return LoadedModel.load(MODEL, config=PipelineConfig(tile_size=256, tile_overlap=64), warmup_runs=1)


def test_the_pipeline_works_at_the_model_files_resolution(model: LoadedModel) -> None:
    config = model.pipeline.config
    assert (config.tile_size, config.tile_overlap) == (256, 64)
    assert config.model_gsd_mm == model.info.working_gsd_mm
    assert model.variant(auto_leaf_px=0).config.model_gsd_mm == model.info.working_gsd_mm
    assert model.variant(auto_leaf_px=0).config.auto_leaf_px == 0


def test_no_threshold_means_the_models_own(model: LoadedModel) -> None:
    assert model.threshold() == model.info.threshold
    assert model.threshold(0.3) == 0.3
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)
    rgb = get_layout("rgb")
    assert model.run(image, rgb).threshold == model.info.threshold
    everything = model.run(image, rgb, threshold=0.0)
    nothing = model.run(image, rgb, threshold=1.0)
    assert everything.mask.mean() >= model.run(image, rgb).mask.mean() >= nothing.mask.mean()


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_a_threshold_is_a_probability_from_0_to_1(value: float) -> None:
    assert TypeAdapter(Threshold).validate_python(value) == value
    assert check_threshold(value) == value


@pytest.mark.parametrize("value", [-0.1, 1.5, 50.0])
def test_a_threshold_outside_0_to_1_is_refused_with_what_to_fix(value: float) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(Threshold).validate_python(value)
    with pytest.raises(ClientError, match="probability from 0 to 1"):
        check_threshold(value)
