"""The drift checks, each run by one of two engines that compute the same tests.

Checks (inputs from :mod:`cropseg_core.features` and the prediction records):

* ``grey_histogram``   per-image 256-bin grey histograms, feature-wise two-sample KS with
  Bonferroni correction. The seed ran one KS test over the 256 bins of the *average*
  histogram, which compares bin heights as if they were samples; here every image is a
  sample and every bin a feature, which is what the test assumes.
* ``image_properties`` brightness, RMS contrast, relative R/G/B intensity, sharpness, black
  fraction, clipped fraction, JPEG blockiness and detail: feature-wise KS + Bonferroni, with
  the shift of each property.
* ``prediction_vegetation_fraction``  KS on the predicted vegetation fraction per image.
* ``prediction_has_vegetation``       chi-square on the share of images with / without
  vegetation, with Cramér's V as effect size (the seed's "classes per image").
* ``dataset``          a domain classifier (random forest, out-of-fold probabilities, KS)
  over the property vector: multivariate drift, and which properties gave it away; drift
  only when it is also large (``classifier_min_distance``).

The run's significance ``p_value`` is split over the checks that ran (Bonferroni), so it
bounds the false alarms of a whole run; benchmarks/drift_error_rates.py measured the choice.

Results are shaped as Alibi Detect shapes them: ``{"meta": {...}, "data": {"is_drift",
"distance", "p_val", "threshold", ...}}``.

Engines: ``alibi`` runs Alibi Detect's KSDrift, ChiSquareDrift and ClassifierDrift (sklearn
backend). ``scipy`` runs ``scipy.stats.ks_2samp`` (asymptotic, as Alibi does), ``chi2_contingency``
and the same stratified folds and forest; the tests prove both give the same p-values.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.stats import chi2_contingency, ks_2samp
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold

from cropseg_core.features import PROPERTY_NAMES, ReferenceProfile
from cropseg_drift.extraction import ImageFeatures
from cropseg_drift.settings import DriftSettings, Engine

log = logging.getLogger(__name__)
# Alibi's sklearn classifier logs a warning per run about parameters it sets itself.
logging.getLogger("alibi_detect.cd.sklearn.classifier").setLevel(logging.ERROR)


@dataclass(frozen=True)
class FeatureTest:
    """A test per feature; drift when any p-value is below the Bonferroni threshold."""

    p_vals: np.ndarray
    distances: np.ndarray
    threshold: float

    @property
    def drifted(self) -> np.ndarray:
        return self.p_vals < self.threshold

    @property
    def is_drift(self) -> bool:
        return bool(self.drifted.any())


@dataclass(frozen=True)
class ClassifierTest:
    p_val: float
    distance: float
    threshold: float
    importances: np.ndarray

    @property
    def is_drift(self) -> bool:
        return self.p_val < self.threshold


class DriftEngine(Protocol):
    name: str

    def ks(self, reference: np.ndarray, current: np.ndarray, p_value: float) -> FeatureTest: ...

    def chi_square(self, reference: np.ndarray, current: np.ndarray, p_value: float) -> FeatureTest: ...

    def classifier(
        self, reference: np.ndarray, current: np.ndarray, p_value: float, settings: DriftSettings
    ) -> ClassifierTest: ...


@contextlib.contextmanager
def _exact_ks_may_fall_back() -> Iterator[None]:
    """Above a few thousand samples scipy's exact one-sided KS falls back to the asymptotic
    one and warns; both engines call it the same way, so the fallback is expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="ks_2samp: Exact calculation unsuccessful", category=RuntimeWarning
        )
        yield


def _forest(settings: DriftSettings) -> RandomForestClassifier:
    return RandomForestClassifier(
        n_estimators=settings.classifier_trees, random_state=settings.seed, n_jobs=1
    )


class ScipyEngine:
    """The tests with scipy and scikit-learn only (permissive licences)."""

    name = "scipy"

    def ks(self, reference: np.ndarray, current: np.ndarray, p_value: float) -> FeatureTest:
        features = reference.shape[1]
        distances, p_vals = np.zeros(features, np.float32), np.zeros(features, np.float32)
        for f in range(features):
            distances[f], p_vals[f] = ks_2samp(reference[:, f], current[:, f], method="asymp")
        return FeatureTest(p_vals, distances, p_value / features)

    def chi_square(self, reference: np.ndarray, current: np.ndarray, p_value: float) -> FeatureTest:
        features = reference.shape[1]
        distances, p_vals = np.zeros(features, np.float32), np.ones(features, np.float32)
        for f in range(features):
            categories = np.union1d(reference[:, f], current[:, f])
            table = np.array(
                [[np.sum(sample[:, f] == c) for c in categories] for sample in (reference, current)]
            )
            distances[f], p_vals[f], _, _ = chi2_contingency(table)
        return FeatureTest(p_vals, distances, p_value / features)

    def classifier(
        self, reference: np.ndarray, current: np.ndarray, p_value: float, settings: DriftSettings
    ) -> ClassifierTest:
        # Alibi Detect's procedure: stratified shuffled folds, a fresh fit per fold,
        # out-of-fold probabilities, one-sided KS of current vs reference probabilities.
        x = np.concatenate([reference, current]).astype(np.float32)
        y = np.concatenate([np.zeros(len(reference)), np.ones(len(current))]).astype(np.int64)
        folds = StratifiedKFold(n_splits=settings.classifier_folds, shuffle=True, random_state=settings.seed)
        model = _forest(settings)
        probabilities, indices = [], []
        for train, test in folds.split(np.zeros(len(y)), y):
            model.fit(x[train], y[train])
            probabilities.append(model.predict_proba(x[test])[:, 1])
            indices.append(test)
        probability, label = np.concatenate(probabilities), y[np.concatenate(indices)]
        with _exact_ks_may_fall_back():
            distance, p_val = ks_2samp(
                probability[label == 0], probability[label == 1], alternative="greater"
            )
        return ClassifierTest(float(p_val), float(distance), p_value, model.feature_importances_)


class AlibiEngine:
    """Alibi Detect's detectors (the default; see docs/drift.md on its licence)."""

    name = "alibi"

    def ks(self, reference: np.ndarray, current: np.ndarray, p_value: float) -> FeatureTest:
        from alibi_detect.cd import KSDrift

        result = KSDrift(reference, p_val=p_value).predict(current)["data"]
        return FeatureTest(
            np.asarray(result["p_val"]), np.asarray(result["distance"]), p_value / reference.shape[1]
        )

    def chi_square(self, reference: np.ndarray, current: np.ndarray, p_value: float) -> FeatureTest:
        from alibi_detect.cd import ChiSquareDrift

        result = ChiSquareDrift(reference, p_val=p_value).predict(current)["data"]
        return FeatureTest(
            np.asarray(result["p_val"]), np.asarray(result["distance"]), p_value / reference.shape[1]
        )

    def classifier(
        self, reference: np.ndarray, current: np.ndarray, p_value: float, settings: DriftSettings
    ) -> ClassifierTest:
        from alibi_detect.cd import ClassifierDrift

        detector = ClassifierDrift(
            reference.astype(np.float32),
            model=_forest(settings),
            backend="sklearn",
            p_val=p_value,
            preds_type="probs",
            binarize_preds=False,
            train_size=None,
            n_folds=settings.classifier_folds,
            seed=settings.seed,
        )
        with _exact_ks_may_fall_back():
            result = detector.predict(current.astype(np.float32), return_model=True)["data"]
        return ClassifierTest(
            float(result["p_val"]), float(result["distance"]), p_value, result["model"].feature_importances_
        )


def engine(name: Engine) -> DriftEngine:
    return AlibiEngine() if name == "alibi" else ScipyEngine()


# The checks


@dataclass(frozen=True)
class Current:
    """What a run compares with the reference: image features and predicted fractions."""

    images: ImageFeatures
    predicted_fractions: np.ndarray


CHECK_LABELS = {
    "grey_histogram": "grey-level histogram",
    "image_properties": "image properties",
    "dataset": "all properties together",
    "prediction_vegetation_fraction": "predicted vegetation cover",
    "prediction_has_vegetation": "images with vegetation",
}
"""How reports name each check (``meta.label``; the JSON keys stay as they are)."""


def _result(
    name: str, method: str, used: DriftEngine, data: dict[str, Any], samples: dict[str, int]
) -> dict[str, Any]:
    meta = {"name": name, "label": CHECK_LABELS[name], "detector": method, "engine": used.name, **samples}
    return {"meta": meta, "data": data}


def _insufficient(name: str, method: str, used: DriftEngine, have: int, need: int) -> dict[str, Any]:
    data = {
        "is_drift": None,
        "status": "insufficient_data",
        "reason": f"{have} samples, at least {need} needed",
        "samples_needed": need,
    }
    return _result(name, method, used, data, {"samples": have})


def _ranges(indices: Sequence[int]) -> list[str]:
    """[3, 4, 5, 9] -> ["3-5", "9"]: drifted histogram bins, readable."""
    ranges: list[list[int]] = []
    for index in indices:
        if ranges and index == ranges[-1][1] + 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    return [f"{a}-{b}" if a != b else str(a) for a, b in ranges]


def _feature_data(test: FeatureTest) -> dict[str, Any]:
    return {
        "is_drift": test.is_drift,
        "status": "drift" if test.is_drift else "no_drift",
        "p_val": float(test.p_vals.min()),
        "distance": float(test.distances.max()),
        "threshold": test.threshold,
    }


def check_grey_histogram(
    used: DriftEngine, profile: ReferenceProfile, current: Current, p_value: float
) -> dict[str, Any]:
    test = used.ks(profile.grey_histograms, current.images.histograms, p_value)
    data = {**_feature_data(test), "drifted": _ranges(np.flatnonzero(test.drifted).tolist())}
    data["drifted_bins"] = int(test.drifted.sum())
    return _result("grey_histogram", "KSDrift", used, data, {"samples": len(current.images.ids)})


def check_image_properties(
    used: DriftEngine, profile: ReferenceProfile, current: Current, p_value: float
) -> dict[str, Any]:
    test = used.ks(profile.properties, current.images.properties, p_value)
    features = {}
    for index, name in enumerate(PROPERTY_NAMES):
        reference_mean = float(profile.properties[:, index].mean())
        current_mean = float(current.images.properties[:, index].mean())
        features[name] = {
            "is_drift": bool(test.drifted[index]),
            "p_val": float(test.p_vals[index]),
            "distance": float(test.distances[index]),
            "reference_mean": reference_mean,
            "current_mean": current_mean,
            "change": (current_mean - reference_mean) / abs(reference_mean) if reference_mean else None,
        }
    data = {
        **_feature_data(test),
        "drifted": [n for n, f in features.items() if f["is_drift"]],
        "features": features,
    }
    return _result("image_properties", "KSDrift", used, data, {"samples": len(current.images.ids)})


def check_predicted_fraction(
    used: DriftEngine, profile: ReferenceProfile, current: Current, p_value: float
) -> dict[str, Any]:
    reference = profile.predicted_vegetation_fraction.reshape(-1, 1)
    test = used.ks(reference, current.predicted_fractions.reshape(-1, 1), p_value)
    data = {
        **_feature_data(test),
        "reference_mean": float(reference.mean()),
        "current_mean": float(current.predicted_fractions.mean()),
    }
    return _result(
        "prediction_vegetation_fraction", "KSDrift", used, data, {"samples": len(current.predicted_fractions)}
    )


def check_vegetation_presence(
    used: DriftEngine, profile: ReferenceProfile, current: Current, p_value: float, presence: float
) -> dict[str, Any]:
    reference = (profile.predicted_vegetation_fraction > presence).astype(np.int64).reshape(-1, 1)
    now = (current.predicted_fractions > presence).astype(np.int64).reshape(-1, 1)
    shares = {
        "reference_share_with_vegetation": float(reference.mean()),
        "current_share_with_vegetation": float(now.mean()),
    }
    if len(np.union1d(reference, now)) < 2:  # one category everywhere: nothing can have shifted
        data = {"is_drift": False, "status": "no_drift", "p_val": 1.0, "distance": 0.0, "threshold": p_value,
                "cramers_v": 0.0, **shares}  # fmt: skip
    else:
        test = used.chi_square(reference, now, p_value)
        chi2 = float(test.distances[0])
        data = {
            **_feature_data(test),
            "cramers_v": float(np.sqrt(chi2 / (len(reference) + len(now)))),
            **shares,
        }
    return _result("prediction_has_vegetation", "ChiSquareDrift", used, data, {"samples": len(now)})


def check_dataset(
    used: DriftEngine, profile: ReferenceProfile, current: Current, p_value: float, settings: DriftSettings
) -> dict[str, Any]:
    properties = current.images.properties
    if len(properties) > settings.classifier_max_samples:
        chosen = np.random.default_rng(settings.seed).choice(
            len(properties), settings.classifier_max_samples, replace=False
        )
        properties = properties[np.sort(chosen)]
    test = used.classifier(profile.properties, properties, p_value, settings)
    ranked = sorted(zip(PROPERTY_NAMES, test.importances.tolist(), strict=True), key=lambda item: -item[1])
    drift = test.is_drift and test.distance >= settings.classifier_min_distance  # significant and large
    data = {
        "is_drift": drift,
        "status": "drift" if drift else "no_drift",
        "p_val": test.p_val,
        "distance": test.distance,
        "threshold": test.threshold,
        "min_distance": settings.classifier_min_distance,
        "importances": dict(ranked),
        "drifted": [name for name, _ in ranked[:3]] if drift else [],
    }
    return _result("dataset", "ClassifierDrift", used, data, {"samples": len(properties)})


def run_checks(
    profile: ReferenceProfile, current: Current, settings: DriftSettings
) -> dict[str, dict[str, Any]]:
    """Every check whose input has at least ``min_samples`` samples; the others say why not."""
    used = engine(settings.engine)
    need = settings.min_samples
    images, predictions = len(current.images.ids), len(current.predicted_fractions)
    checks = 3 * (images >= need) + 2 * (predictions >= need)
    p = settings.p_value / max(checks, 1) if settings.split_p_value_over_checks else settings.p_value
    results: dict[str, dict[str, Any]] = {}
    if images >= need:
        results["grey_histogram"] = check_grey_histogram(used, profile, current, p)
        results["image_properties"] = check_image_properties(used, profile, current, p)
        results["dataset"] = check_dataset(used, profile, current, p, settings)
    else:
        for name, method in (
            ("grey_histogram", "KSDrift"),
            ("image_properties", "KSDrift"),
            ("dataset", "ClassifierDrift"),
        ):
            results[name] = _insufficient(name, method, used, images, need)
    if predictions >= need:
        results["prediction_vegetation_fraction"] = check_predicted_fraction(used, profile, current, p)
        results["prediction_has_vegetation"] = check_vegetation_presence(
            used, profile, current, p, settings.vegetation_presence
        )
    else:
        for name, method in (
            ("prediction_vegetation_fraction", "KSDrift"),
            ("prediction_has_vegetation", "ChiSquareDrift"),
        ):
            results[name] = _insufficient(name, method, used, predictions, need)
    return results


def overall_status(results: dict[str, dict[str, Any]]) -> str:
    verdicts = [r["data"]["is_drift"] for r in results.values()]
    if any(v is True for v in verdicts):
        return "drift"
    return "no_drift" if any(v is False for v in verdicts) else "insufficient_data"
