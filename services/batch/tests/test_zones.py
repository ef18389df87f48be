"""Zones by cover: natural breaks are the optimal partition, quantiles split the area evenly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from cropseg_batch.zones import assign, breaks, natural_breaks, quantile_breaks


def weighted_spread(values: np.ndarray, weights: np.ndarray) -> float:
    mean = np.average(values, weights=weights)
    return float((weights * (values - mean) ** 2).sum())


def best_partition(values: np.ndarray, weights: np.ndarray, zones: int) -> tuple[float, np.ndarray]:
    """Least within-zone spread over every way to cut the distinct values into ``zones`` runs."""
    distinct, index = np.unique(values, return_inverse=True)
    w = np.bincount(index, weights=weights)
    best: tuple[float, np.ndarray] | None = None
    for cuts in itertools.combinations(range(1, len(distinct)), zones - 1):
        edges = [0, *cuts, len(distinct)]
        spread = sum(weighted_spread(distinct[a:b], w[a:b]) for a, b in itertools.pairwise(edges))
        if best is None or spread < best[0] - 1e-12:
            best = (spread, distinct[np.array(edges[1:]) - 1])
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(40))
def test_natural_breaks_are_the_least_spread_partition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.round(rng.beta(2, 5, rng.integers(6, 14)), 2)
    weights = rng.uniform(0.05, 1, len(values))  # edge cells hold less area
    zones = int(rng.integers(2, 5))
    if len(np.unique(values)) <= zones:
        pytest.skip("fewer distinct values than zones")
    found = natural_breaks(values, weights, zones)
    spread, expected = best_partition(values, weights, zones)
    labels = assign(values, found)
    assert sum(weighted_spread(values[labels == z], weights[labels == z]) for z in range(1, zones + 1)) == (
        pytest.approx(spread, abs=1e-12)
    )
    assert found == pytest.approx(expected)


def test_natural_breaks_find_clear_groups_whatever_their_size() -> None:
    values = np.array([0.02] * 50 + [0.03] * 30 + [0.40] * 5 + [0.42] * 5 + [0.81] * 2)
    weights = np.ones(len(values))
    assert natural_breaks(values, weights, 3).tolist() == [0.03, 0.42, 0.81]
    assert quantile_breaks(values, weights, 3).tolist() == [0.02, 0.03, 0.81]  # equal shares, not groups


def test_quantile_zones_hold_equal_area() -> None:
    rng = np.random.default_rng(0)
    values, weights = rng.random(10_000), rng.uniform(0.5, 1.5, 10_000)
    labels = assign(values, quantile_breaks(values, weights, 4))
    shares = np.bincount(labels, weights=weights)[1:] / weights.sum()
    assert shares == pytest.approx([0.25] * 4, abs=1e-3)


@pytest.mark.parametrize("method", ["jenks", "quantile"])
def test_equal_values_share_a_zone_and_zones_rise_with_cover(method: str) -> None:
    values = np.array([0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.9])
    found = breaks(values, np.ones(len(values)), 5, method)
    labels = assign(values, found)
    assert len(found) <= 3
    assert labels[0] == labels[3] == 1
    assert labels[-1] == len(found)
    assert np.all(np.diff(labels) >= 0)
    assert breaks(np.array([0.2, 0.2]), np.ones(2), 3, method).tolist() == [0.2]
    assert len(breaks(np.empty(0), np.empty(0), 3, method)) == 0


def test_a_value_on_a_break_belongs_to_the_zone_below() -> None:
    values = np.array([0.0, 0.1, 0.1001, 0.3, 0.31])
    assert assign(values, np.array([0.1, 0.3, 0.5])).tolist() == [1, 1, 2, 2, 3]


def test_natural_breaks_of_thousands_of_distinct_values_split_the_top_optimally() -> None:
    """Over ~6 500 distinct values (5 m cells of a 500 m field have up to 10 000), the last break
    is the best of all ~3 400 possible cuts of the values above the break before it."""
    rng = np.random.default_rng(3)
    values = np.round(rng.beta(2, 5, 30_000), 4)
    weights = rng.uniform(0.5, 1, len(values))
    found = natural_breaks(values, weights, 4)
    above = values > found[1]
    distinct, index = np.unique(values[above], return_inverse=True)
    w = np.bincount(index, weights=weights[above])
    sums = [np.cumsum(term) for term in (w, w * distinct, w * distinct**2)]
    totals = [term[-1] for term in sums]
    low = [term[:-1] for term in sums]  # the lower class ends at each distinct value but the last
    high = [total - part for total, part in zip(totals, low, strict=True)]
    cost = sum(q - s * s / n for n, s, q in (low, high))
    assert found[2] == distinct[int(np.argmin(cost))]
    assert len(np.unique(values)) > 6000
    assert len(distinct) > 3000
