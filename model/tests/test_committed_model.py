"""The artifacts committed under model/artifacts are consistent and meet the bar."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropseg_core.bands import LAYOUTS, from_model_bands
from cropseg_core.features import PROPERTY_NAMES, load_reference_profile
from cropseg_core.files import write_json
from cropseg_core.masks import score
from cropseg_core.segmenter import OnnxSegmenter, file_sha256
from cropseg_model.baselines import BASELINES
from cropseg_model.cli import ARTIFACTS, DEFAULT_MODEL
from cropseg_model.evaluate import Evaluator, layout_table
from cropseg_model.evaluation_report import EvaluationReport
from cropseg_model.metrics import summarise
from cropseg_model.synth import _write_one, generate_tile

METRICS = json.loads((ARTIFACTS / "metrics.json").read_text())
MIN_FRESH_IOU = 0.7  # 12 tiles of another seed; the evaluation set's means are 0.78 to 0.93
SETS = METRICS["evaluation"]["sets"]
REAL = [name for name in SETS if name != METRICS["evaluation"]["synthetic_name"]]
SYNTHETIC = SETS[METRICS["evaluation"]["synthetic_name"]]


def iou(methods: dict[str, dict[str, float]], name: str) -> float:
    return float(methods[name]["iou_non_black"])


def best_baseline(methods: dict[str, dict[str, float]]) -> float:
    return max(iou(methods, name) for name in methods if name in BASELINES)


@pytest.fixture(scope="module")
def segmenter() -> OnnxSegmenter:
    model = OnnxSegmenter(DEFAULT_MODEL)
    model.load()
    return model


def test_model_is_small_and_describes_itself(segmenter: OnnxSegmenter) -> None:
    assert DEFAULT_MODEL.stat().st_size <= 20 * 1000 * 1000
    assert segmenter.info is not None
    assert segmenter.info.name == METRICS["model"]["name"] == "cropseg-unet"
    assert segmenter.info.version == METRICS["model"]["version"]
    assert segmenter.info.sha256 == METRICS["model"]["sha256"], "metrics.json is stale: rerun make model"
    assert segmenter.info.metadata["bands"] == "red,green,blue,nir"
    assert METRICS["model"]["licence"] == "CC-BY-SA-4.0"


def test_the_version_names_this_file_and_no_other(segmenter: OnnxSegmenter) -> None:
    """Stored masks are keyed by model version: each released file has a version of its own."""
    versions = json.loads((ARTIFACTS / "versions.json").read_text())
    assert segmenter.info is not None
    assert versions[segmenter.info.version] == segmenter.info.sha256
    assert len(set(versions.values())) == len(versions)


def test_unloaded_model_refuses_to_predict() -> None:
    model = OnnxSegmenter(DEFAULT_MODEL)
    model.load()
    model.unload()
    with pytest.raises(RuntimeError, match="load"):
        model.predict(np.zeros((4, 4, 4), np.uint8))


@pytest.mark.parametrize("name", REAL)
def test_real_photos_beat_every_baseline_by_five_points(name: str) -> None:
    """On the real validation splits (never trained on) the pipeline beats ExG + Otsu and the
    seed's k-means by at least 5 points of IoU."""
    methods = SETS[name]["layouts"]["rgb"]
    assert iou(methods, "unet") >= best_baseline(methods) + 0.05
    assert methods["unet"]["images"] >= 10


def test_no_layout_is_more_than_one_point_below_its_best_baseline() -> None:
    """On synthetic tiles the simple indices are strong (NDVI + Otsu reaches 0.92 there):
    the pipeline must not fall more than 1 point below the best of them in any layout."""
    for name, methods in SYNTHETIC["layouts"].items():
        assert iou(methods, "unet") >= best_baseline(methods) - 0.01, name


def test_every_layout_is_scored_against_its_own_index() -> None:
    layouts = SYNTHETIC["layouts"]
    assert set(layouts) == set(LAYOUTS)
    for name, methods in layouts.items():
        expected = {"ndvi_otsu"} if LAYOUTS[name].index == "ndvi" else set()
        assert expected <= set(methods), name
        assert methods["unet"]["images"] >= 100


def test_the_committed_evaluation_is_a_typed_report_written_back_byte_for_byte(tmp_path: Path) -> None:
    report = EvaluationReport.model_validate(METRICS["evaluation"])
    assert report.sets[REAL[0]].layouts["rgb"]["unet"].iou_non_black == iou(
        SETS[REAL[0]]["layouts"]["rgb"], "unet"
    )
    assert report.sets[REAL[0]].exposure_robustness is None
    write_json(tmp_path / "metrics.json", {**METRICS, "evaluation": report.to_json()})
    assert (tmp_path / "metrics.json").read_bytes() == (ARTIFACTS / "metrics.json").read_bytes()


@pytest.mark.parametrize("document", ["model/README.md", "README.md"])
def test_docs_show_the_measured_table(document: str) -> None:
    text = (ARTIFACTS.parent.parent / document).read_text()
    assert layout_table(EvaluationReport.model_validate(METRICS["evaluation"]).sets) in text


@pytest.mark.parametrize("shape", [(1, 360, 480, 4), (2, 101, 67, 4), (1, 8, 8, 4)], ids=str)
def test_any_size_and_batch(segmenter: OnnxSegmenter, shape: tuple[int, ...]) -> None:
    batch = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    probability = segmenter.predict(batch)
    assert probability.shape == (shape[0], shape[1], shape[2])
    assert probability.min() >= 0.0
    assert probability.max() <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["rgb", "cir", "nir_red"])
def test_fresh_tiles_are_segmented_well_through_the_pipeline(layout: str) -> None:
    evaluator = Evaluator(DEFAULT_MODEL)
    sensor = LAYOUTS[layout]
    tiles = [generate_tile(77, i)[0] for i in range(12)]
    scores = [
        score(evaluator.segment(from_model_bands(t.image, sensor), sensor), t.mask, t.rgb) for t in tiles
    ]
    assert summarise(scores)["iou_non_black"] > MIN_FRESH_IOU


def test_reference_profile_matches_the_model() -> None:
    profile = load_reference_profile(ARTIFACTS / "reference_profile.npz")
    assert profile.meta["model_sha256"] == file_sha256(DEFAULT_MODEL)
    assert sorted(profile.meta["layouts"]) == sorted(LAYOUTS)
    # rgb: the real photos the model learned from; the NIR layouts: synthetic reference tiles
    assert profile.for_layout("rgb").source_counts() == {"ews/train": 128, "peanut/train": 48}
    # the label-free IoU estimate ships calibrated, and tracked the truth on the validation photos
    estimate = profile.meta["iou_estimate"]
    assert estimate["calibrated_on"] == ["ews/select", "peanut/select"]
    for name in ("ews/val", "peanut/val"):
        tracked = estimate["tracking"][name]
        assert abs(tracked["estimated_iou"] - tracked["measured_iou"]) <= 0.05, (name, tracked)
    for layout in LAYOUTS:
        rows = profile.for_layout(layout)
        count = len(rows.image_names)  # all-black tiles have no NIR layouts: a few rows fewer there
        assert count >= 170
        assert rows.grey_histograms.shape == (count, 256)
        np.testing.assert_allclose(rows.grey_histograms.sum(axis=1), 1.0, atol=1e-4)
        assert rows.properties.shape == (count, len(PROPERTY_NAMES))
        # the pipeline's fractions track the truth on the training distribution, in every layout
        assert np.corrcoef(rows.vegetation_fraction, rows.predicted_vegetation_fraction)[0, 1] > 0.85, layout


def test_artifacts_are_committed_files() -> None:
    for name in (
        "cropseg-unet.onnx",
        "metrics.json",
        "reference_profile.npz",
        "examples.png",
        "scale.png",
        "training_curve.png",
    ):
        assert (ARTIFACTS / name).is_file(), name
    assert Path(METRICS["model"]["onnx_file"]).name == DEFAULT_MODEL.name


@pytest.mark.slow
def test_committed_sample_tiles_are_what_the_generator_makes(tmp_path: Path) -> None:
    """model/artifacts/samples (the storage gallery's seed) is
    ``generate --count 12 --seed 5 --layout-files``: each tile in its own layout. Pixels are
    compared, not file bytes (a PNG's compressed bytes depend on the zlib the system gives
    Pillow), and a few image values may differ by 1 (float rounding of NumPy's vectorised maths
    differs between CPUs); labels are exact."""
    samples = ARTIFACTS / "samples"
    lines = [json.loads(line) for line in (samples / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 12
    assert {"rgb", "cir"} <= {line["file_layout"] for line in lines}
    for meta in lines[:3] + [line for line in lines if line["file_layout"] != "rgb"][:2]:
        made = _write_one((tmp_path, meta["seed"], meta["index"], 360, 480, True))
        assert made == meta
        for folder in ("images", "masks"):
            (name,) = [p.name for p in (tmp_path / folder).glob(f"{meta['name']}.*")]
            with (
                Image.open(samples / folder / name) as committed,
                Image.open(tmp_path / folder / name) as new,
            ):
                assert committed.mode == new.mode, name
                difference = np.abs(np.asarray(committed, np.int16) - np.asarray(new, np.int16))
            if folder == "masks":
                assert not difference.any(), name
            else:
                assert difference.max() <= 1, name
                assert np.count_nonzero(difference) <= difference.size // 10_000, name
