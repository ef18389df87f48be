"""The report's figures: every title fits inside its figure and overlaps no other text."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from cropseg_drift.report import distribution_figure, grey_histogram_figure, importance_figure
from matplotlib.figure import Figure
from matplotlib.text import Text

from cropseg_core.features import PROPERTY_NAMES

RNG = np.random.default_rng(0)


def texts_overlap(figure: Figure) -> list[str]:
    """Titles and axis labels that overlap one another or leave the figure."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    texts: list[Text] = [t for t in [figure._suptitle] if t is not None and t.get_text()]  # type: ignore[attr-defined]
    for axis in figure.axes:
        texts += [t for t in (axis.title, axis.xaxis.label, axis.yaxis.label) if t.get_text()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    frame = figure.bbox
    problems = [f"{name!r} leaves the figure" for name, box in boxes
                if box.x0 < frame.x0 - 1 or box.x1 > frame.x1 + 1 or box.y1 > frame.y1 + 1]  # fmt: skip
    for index, (name, box) in enumerate(boxes):
        problems += [
            f"{name!r} overlaps {other!r}" for other, box2 in boxes[index + 1 :] if box.overlaps(box2)
        ]
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("name", [*PROPERTY_NAMES, "predicted vegetation fraction"])
def test_distribution_figure_titles_do_not_overlap(name: str) -> None:
    figure = distribution_figure(name, RNG.normal(size=200), RNG.normal(1, size=150), 1.23e-12)
    assert texts_overlap(figure) == []


@pytest.mark.slow
def test_grey_histogram_and_importance_figures_do_not_overlap() -> None:
    histograms = RNG.random((40, 256))
    assert texts_overlap(grey_histogram_figure(histograms, histograms[::-1])) == []
    assert (
        texts_overlap(importance_figure({name: 1 / (i + 1) for i, name in enumerate(PROPERTY_NAMES)})) == []
    )
