"""The artifacts committed under model/artifacts are consistent and meet the bar."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropseg_core.features import PROPERTY_NAMES, load_reference_profile
from cropseg_core.masks import score
from cropseg_core.segmenter import OnnxSegmenter, file_sha256
from cropseg_model.cli import ARTIFACTS, DEFAULT_MODEL
from cropseg_model.evaluate import markdown_table
from cropseg_model.metrics import summarise
from cropseg_model.synth import generate_tile

METRICS = json.loads((ARTIFACTS / "metrics.json").read_text())


@pytest.fixture(scope="module")
def segmenter() -> OnnxSegmenter:
    model = OnnxSegmenter(DEFAULT_MODEL)
    model.load()
    return model


def test_model_is_small_and_describes_itself(segmenter: OnnxSegmenter) -> None:
    assert DEFAULT_MODEL.stat().st_size < 5 * 1024 * 1024
    assert segmenter.info is not None
    assert segmenter.info.name == METRICS["model"]["name"] == "cropseg-unet"
    assert segmenter.info.version == METRICS["model"]["version"]
    assert segmenter.info.sha256 == METRICS["model"]["sha256"], "metrics.json is stale: rerun make model"


def test_unloaded_model_refuses_to_predict() -> None:
    model = OnnxSegmenter(DEFAULT_MODEL)
    model.load()
    model.unload()
    with pytest.raises(RuntimeError, match="load"):
        model.predict(np.zeros((4, 4, 3), np.uint8))


def test_evaluation_meets_the_bar() -> None:
    methods = METRICS["evaluation"]["methods"]
    unet = methods["unet"]["iou_non_black"]
    best_baseline = max(methods["exg_otsu"]["iou_non_black"], methods["green_kmeans"]["iou_non_black"])
    assert unet >= 0.90
    assert unet >= best_baseline + 0.05
    assert methods["unet"]["images"] >= 300


@pytest.mark.parametrize("document", ["model/README.md", "README.md"])
def test_docs_show_the_measured_table(document: str) -> None:
    text = (ARTIFACTS.parent.parent / document).read_text()
    assert markdown_table(METRICS["evaluation"]) in text


@pytest.mark.parametrize("shape", [(1, 360, 480, 3), (2, 101, 67, 3), (1, 8, 8, 3)], ids=str)
def test_any_size_and_batch(segmenter: OnnxSegmenter, shape: tuple[int, ...]) -> None:
    batch = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    probability = segmenter.predict(batch)
    assert probability.shape == (shape[0], shape[1], shape[2])
    assert probability.min() >= 0.0
    assert probability.max() <= 1.0


def test_fresh_tiles_are_segmented_well(segmenter: OnnxSegmenter) -> None:
    tiles = [generate_tile(77, i)[0] for i in range(12)]
    scores = [score(segmenter.segment(t.image), t.mask, t.image) for t in tiles]
    assert summarise(scores)["iou_non_black"] > 0.85


def test_reference_profile_matches_the_model() -> None:
    profile = load_reference_profile(ARTIFACTS / "reference_profile.npz")
    count = profile.meta["images"]
    assert count >= 300
    assert profile.meta["model_sha256"] == file_sha256(DEFAULT_MODEL)
    assert profile.grey_histograms.shape == (count, 256)
    np.testing.assert_allclose(profile.grey_histograms.sum(axis=1), 1.0, atol=1e-4)
    assert profile.properties.shape == (count, len(PROPERTY_NAMES))
    truth, predicted = profile.vegetation_fraction, profile.predicted_vegetation_fraction
    assert truth.shape == predicted.shape == (count,)
    # the model's fractions track the truth on its own training distribution
    assert np.corrcoef(truth, predicted)[0, 1] > 0.95


def test_artifacts_are_committed_files() -> None:
    for name in (
        "cropseg-unet.onnx",
        "metrics.json",
        "reference_profile.npz",
        "examples.png",
        "training_curve.png",
    ):
        assert (ARTIFACTS / name).is_file(), name
    assert Path(METRICS["model"]["onnx_file"]).name == DEFAULT_MODEL.name


def test_committed_sample_tiles_are_what_the_generator_makes() -> None:
    """model/artifacts/samples (the storage gallery's seed) is ``generate --count 12 --seed 5``."""
    samples = ARTIFACTS / "samples"
    lines = (samples / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 12
    for line in lines[:3]:
        meta = json.loads(line)
        tile, encoded, ext = generate_tile(meta["seed"], meta["index"])
        assert (samples / "images" / f"{meta['name']}.{ext}").read_bytes() == encoded
        stored_mask = np.asarray(Image.open(samples / "masks" / f"{meta['name']}.png"))
        np.testing.assert_array_equal(stored_mask, tile.mask)
