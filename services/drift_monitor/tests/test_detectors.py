"""Each check on constructed data: quiet on the same distribution, loud on a shift; both engines agree."""

from __future__ import annotations

import numpy as np
import pytest
from cropseg_drift.detectors import (
    AlibiEngine,
    Current,
    DriftEngine,
    ScipyEngine,
    _ranges,
    check_dataset,
    check_grey_histogram,
    check_image_properties,
    check_predicted_fraction,
    check_vegetation_presence,
    overall_status,
    run_checks,
)
from cropseg_drift.extraction import ImageFeatures
from cropseg_drift.settings import DriftSettings
from drift_testing import field_image

from cropseg_core.features import PROPERTY_NAMES, ReferenceProfile, image_features

SETTINGS = DriftSettings(classifier_trees=30, min_samples=20)
ENGINES = [AlibiEngine(), ScipyEngine()]


def current_images(count: int, brightness: float = 1.0, seed: int = 7) -> ImageFeatures:
    rng = np.random.default_rng(seed)
    features = [image_features(field_image(rng, brightness)) for _ in range(count)]
    return ImageFeatures(
        ids=[str(i) for i in range(count)],
        histograms=np.stack([f[0] for f in features]),
        properties=np.stack([f[1] for f in features]),
    )


def current(
    count: int = 80, brightness: float = 1.0, fractions: tuple[float, float] = (0.05, 0.4)
) -> Current:
    rng = np.random.default_rng(11)
    return Current(current_images(count, brightness), rng.uniform(*fractions, count).astype(np.float32))


@pytest.fixture(scope="module")
def same() -> Current:
    return current()


@pytest.fixture(scope="module")
def brighter() -> Current:
    return current(brightness=1.4)


@pytest.mark.slow
@pytest.mark.parametrize("used", ENGINES, ids=lambda e: e.name)
def test_image_checks_are_quiet_on_the_same_distribution(
    used: DriftEngine, profile: ReferenceProfile, same: Current
) -> None:
    assert check_grey_histogram(used, profile, same, 0.01)["data"]["is_drift"] is False
    properties = check_image_properties(used, profile, same, 0.01)["data"]
    assert properties["is_drift"] is False
    assert properties["drifted"] == []
    assert check_dataset(used, profile, same, 0.01, SETTINGS)["data"]["is_drift"] is False


@pytest.mark.slow
@pytest.mark.parametrize("used", ENGINES, ids=lambda e: e.name)
def test_image_checks_see_a_brightness_shift(
    used: DriftEngine, profile: ReferenceProfile, brighter: Current
) -> None:
    histogram = check_grey_histogram(used, profile, brighter, 0.01)
    assert histogram["meta"] == {
        "name": "grey_histogram",
        "label": "grey-level histogram",
        "detector": "KSDrift",
        "engine": used.name,
        "samples": 80,
    }
    assert histogram["data"]["is_drift"] is True
    assert histogram["data"]["threshold"] == pytest.approx(0.01 / 256)
    properties = check_image_properties(used, profile, brighter, 0.01)["data"]
    assert "brightness" in properties["drifted"]
    assert properties["features"]["brightness"]["change"] > 0.2  # brighter by about 40 %
    dataset = check_dataset(used, profile, brighter, 0.01, SETTINGS)["data"]
    assert dataset["is_drift"] is True
    assert set(dataset["importances"]) == set(PROPERTY_NAMES)


@pytest.mark.slow
def test_the_classifier_sees_a_change_no_single_property_shows(profile: ReferenceProfile) -> None:
    """Swap brightness between images: every marginal stays, the joint distribution breaks."""
    shuffled = current_images(200, seed=3)
    rng = np.random.default_rng(0)
    index = PROPERTY_NAMES.index("brightness")
    shuffled.properties[:, index] = rng.permutation(shuffled.properties[:, index])
    data = Current(shuffled, np.full(200, 0.2, np.float32))
    used = ScipyEngine()
    assert check_image_properties(used, profile, data, 0.01)["data"]["is_drift"] is False
    dataset = check_dataset(used, profile, data, 0.01, DriftSettings(classifier_trees=100))["data"]
    assert dataset["p_val"] < dataset["threshold"]
    # significant; reported as drift only when the classifier also separates the sets clearly
    assert dataset["is_drift"] is (dataset["distance"] >= DriftSettings().classifier_min_distance)
    floorless = DriftSettings(classifier_trees=100, classifier_min_distance=0)
    assert check_dataset(used, profile, data, 0.01, floorless)["data"]["is_drift"] is True


@pytest.mark.slow
@pytest.mark.parametrize("used", ENGINES, ids=lambda e: e.name)
def test_prediction_checks(used: DriftEngine, profile: ReferenceProfile, same: Current) -> None:
    assert check_predicted_fraction(used, profile, same, 0.01)["data"]["is_drift"] is False
    bare = current(fractions=(0.0, 0.005))  # the model sees no vegetation any more
    fraction = check_predicted_fraction(used, profile, bare, 0.01)["data"]
    assert fraction["is_drift"] is True
    assert fraction["current_mean"] < 0.01
    presence = check_vegetation_presence(used, profile, bare, 0.01, 0.01)["data"]
    assert presence["is_drift"] is True
    assert presence["current_share_with_vegetation"] == 0.0
    assert 0.5 < presence["cramers_v"] <= 1.0
    unchanged = check_vegetation_presence(used, profile, same, 0.01, 0.01)["data"]
    assert unchanged == {**unchanged, "is_drift": False, "p_val": 1.0}  # one category everywhere


@pytest.mark.slow
def test_engines_give_the_same_p_values_and_verdicts(
    profile: ReferenceProfile, same: Current, brighter: Current
) -> None:
    alibi, scipy = AlibiEngine(), ScipyEngine()
    for data in (same, brighter):
        for reference, now in (
            (profile.grey_histograms, data.images.histograms),
            (profile.properties, data.images.properties),
        ):
            a, s = alibi.ks(reference, now, 0.01), scipy.ks(reference, now, 0.01)
            np.testing.assert_allclose(a.p_vals, s.p_vals, rtol=1e-6)
            np.testing.assert_allclose(a.distances, s.distances, rtol=1e-6)
            assert a.is_drift == s.is_drift
        a_clf = alibi.classifier(profile.properties, data.images.properties, 0.01, SETTINGS)
        s_clf = scipy.classifier(profile.properties, data.images.properties, 0.01, SETTINGS)
        assert (a_clf.p_val, a_clf.distance, a_clf.is_drift) == pytest.approx(
            (s_clf.p_val, s_clf.distance, s_clf.is_drift)
        )
        np.testing.assert_allclose(a_clf.importances, s_clf.importances)
    categories = np.random.default_rng(0).integers(0, 2, (100, 1))
    shifted = (np.random.default_rng(1).random((60, 1)) < 0.8).astype(np.int64)
    a_chi, s_chi = alibi.chi_square(categories, shifted, 0.01), scipy.chi_square(categories, shifted, 0.01)
    np.testing.assert_allclose(a_chi.p_vals, s_chi.p_vals, rtol=1e-6)
    assert a_chi.is_drift == s_chi.is_drift


@pytest.mark.slow
def test_too_few_samples_give_no_verdict(profile: ReferenceProfile) -> None:
    few = current(count=5)
    results = run_checks(profile, few, DriftSettings(min_samples=30, engine="scipy"))
    assert {r["data"]["status"] for r in results.values()} == {"insufficient_data"}
    assert results["dataset"]["data"]["reason"] == "5 samples, at least 30 needed"
    assert overall_status(results) == "insufficient_data"
    partial = Current(current_images(40), np.zeros(3, np.float32))
    mixed = run_checks(profile, partial, DriftSettings(min_samples=30, engine="scipy", classifier_trees=20))
    assert mixed["prediction_vegetation_fraction"]["data"]["is_drift"] is None
    assert overall_status(mixed) == "no_drift"


def test_drifted_bins_read_as_ranges() -> None:
    assert _ranges([3, 4, 5, 9, 11, 12]) == ["3-5", "9", "11-12"]
    assert _ranges([]) == []
