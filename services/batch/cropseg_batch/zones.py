"""Management zones: grid cells classified by vegetation cover into a few classes, 1 the lowest.

Two classifications, the ones GIS and farm-management tools offer, both weighted by each cell's
area with data (a cell cut by the field's edge counts for the little it holds, not as a whole
cell):

* ``jenks`` -- natural breaks: the partition of the sorted values into classes with the least
  within-class sum of squared deviations, found exactly (Fisher 1958; what Jenks' iterative
  method approximates, and mapclassify's ``FisherJenks`` and R's ``Ckmeans.1d.dp`` compute).
  Dynamic programming over the m distinct values, one class at a time; the best start of the
  last class never moves left as its end moves right, so each class is divide and conquer,
  O(m log m) (Grønlund et al. 2017, "Fast exact k-means, k-medians and Bregman divergence
  clustering in 1D").
* ``quantile`` -- equal area: the breaks cut the field's area with data into equal parts.

Breaks are each zone's upper bound: zone ``z`` holds the values ``v`` with
``breaks[z - 2] < v <= breaks[z - 1]``. Equal values always share a zone, so a field with fewer
distinct values than zones (or, by quantile, one value spanning a whole share) gets fewer zones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

METHODS = ("jenks", "quantile")


def breaks(values: np.ndarray, weights: np.ndarray, zones: int, method: str) -> np.ndarray:
    """Upper bounds of at most ``zones`` zones of ``values`` by ``method`` (one of METHODS)."""
    if len(values) == 0:
        return np.empty(0)
    classify = {"jenks": natural_breaks, "quantile": quantile_breaks}[method]
    return classify(np.asarray(values, np.float64), np.asarray(weights, np.float64), zones)


def assign(values: np.ndarray, upper_bounds: np.ndarray) -> np.ndarray:
    """Zone of each value (1 = lowest) for the breaks ``upper_bounds``."""
    return np.searchsorted(upper_bounds, values, side="left").astype(np.int32) + 1


def quantile_breaks(values: np.ndarray, weights: np.ndarray, zones: int) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ordered, area = values[order], np.cumsum(weights[order])
    shares = area[-1] * np.arange(1, zones) / zones
    # The value whose cell completes each share bounds that zone.
    return np.unique(np.append(ordered[np.searchsorted(area, shares, side="left")], ordered[-1]))


def natural_breaks(values: np.ndarray, weights: np.ndarray, zones: int) -> np.ndarray:
    distinct, index = np.unique(values, return_inverse=True)
    count = len(distinct)
    if count <= zones:
        return distinct
    w = np.bincount(index, weights=weights, minlength=count)
    sum_w, sum_wx, sum_wxx = (
        np.concatenate([[0.0], np.cumsum(term)]) for term in (w, w * distinct, w * distinct**2)
    )

    def spread(start: np.ndarray | int, end: np.ndarray | int) -> np.ndarray:
        """Weighted sum of squared deviations of distinct[start:end] (either may be an array)."""
        total = sum_wx[end] - sum_wx[start]
        return (sum_wxx[end] - sum_wxx[start]) - total * total / (sum_w[end] - sum_w[start])

    # cost[e]: least spread of distinct[:e] in the classes so far; starts[c][e]: where class c
    # begins in that best partition.
    cost = np.full(count + 1, np.inf)
    cost[1:] = spread(0, np.arange(1, count + 1))  # one class
    starts: list[np.ndarray] = []
    for classes in range(2, zones + 1):
        ends = range(count, count + 1) if classes == zones else range(classes, count + 1)
        cost, start = _next_class(cost, spread, classes, ends)
        starts.append(start)
    uppers, end = [count], count
    for start in reversed(starts):
        end = int(start[end])
        uppers.append(end)
    return distinct[np.array(sorted(uppers)) - 1]


def _next_class(
    previous: np.ndarray,
    spread: Callable[[np.ndarray, int], np.ndarray],
    classes: int,
    ends: range,
) -> tuple[np.ndarray, np.ndarray]:
    """Least cost of ``classes`` classes ending at each of ``ends``, and where the last begins."""
    cost = np.full(len(previous), np.inf)
    start = np.zeros(len(previous), np.int64)

    def solve(low: int, high: int, first: int, last: int) -> None:
        # ends[low:high] in order; their last classes start within [first, last].
        if low >= high:
            return
        middle = (low + high) // 2
        end = ends[middle]
        candidates = np.arange(max(first, classes - 1), min(last, end - 1) + 1)
        totals = previous[candidates] + spread(candidates, end)
        best = int(np.argmin(totals))
        cost[end], start[end] = totals[best], candidates[best]
        solve(low, middle, first, int(candidates[best]))
        solve(middle + 1, high, int(candidates[best]), last)

    solve(0, len(ends), classes - 1, ends[-1] - 1)
    return cost, start
