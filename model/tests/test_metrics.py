import numpy as np
import pytest

from cropseg_core.masks import score
from cropseg_model.evaluate import edge_errors
from cropseg_model.metrics import boundary_f1, summarise


def masks(*rows: str) -> np.ndarray:
    """'#' = vegetation, '.' = soil, '?' = ignore."""
    table = {"#": 255, ".": 0, "?": 128}
    return np.array([[table[c] for c in row] for row in rows], np.uint8)


def test_hand_computed_accuracy_and_iou() -> None:
    truth = masks("##..", "##..", "....", "....")
    prediction = masks("###.", "#...", "....", "....")
    result = score(prediction, truth)
    # intersection 3 (three of the four true pixels), union 5, wrong pixels 2 of 16
    assert result.iou == pytest.approx(3 / 5)
    assert result.pixel_accuracy == pytest.approx(14 / 16)


def test_ignored_pixels_count_for_nothing() -> None:
    truth = masks("#?", "?.")
    assert score(masks("#.", "#."), truth).iou == 1.0
    assert score(masks("#.", "#."), truth).pixel_accuracy == 1.0
    assert score(masks(".#", "##"), truth).iou == 0.0


def test_both_empty_is_a_perfect_score() -> None:
    empty = masks("..", "..")
    assert score(empty, empty).iou == 1.0
    assert score(masks("#.", ".."), empty).iou == 0.0


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        score(masks("#"), masks("##"))


def test_summary_separates_black_tiles() -> None:
    black = np.zeros((2, 2, 3), np.uint8)
    field = np.full((2, 2, 3), 80, np.uint8)
    truth = masks("#.", "..")
    scores = [
        score(masks("..", ".."), masks("..", ".."), black),  # black tile: trivially perfect
        score(masks("##", ".."), truth, field),  # IoU 0.5, accuracy 0.75
    ]
    summary = summarise(scores)
    assert summary["images"] == 2
    assert summary["non_black_images"] == 1
    assert summary["iou"] == pytest.approx(0.75)
    assert summary["iou_non_black"] == pytest.approx(0.5)
    assert summary["pixel_accuracy_non_black"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no images"):
        summarise([])


def test_edge_errors_count_mistakes_next_to_true_edges() -> None:
    truth = np.zeros((7, 7), np.uint8)
    truth[2:5, 2:5] = 255
    prediction = truth.copy()
    prediction[1, 3] = 255  # one pixel too far out: next to the edge
    prediction[6, 6] = 255  # isolated false positive far from any edge
    assert edge_errors(prediction, truth) == (2, 1)


def test_boundary_f1_forgives_edges_within_the_tolerance_only() -> None:
    truth = np.zeros((40, 40), np.uint8)
    truth[10:30, 10:30] = 255
    assert boundary_f1(truth, truth) == 1.0
    wider = np.zeros_like(truth)
    wider[8:32, 10:30] = 255  # top and bottom edges 2 px out: within the tolerance
    assert boundary_f1(wider, truth) == 1.0
    much_wider = np.zeros_like(truth)
    much_wider[5:35, 5:35] = 255  # 5 px out: no edge pixel matches
    assert boundary_f1(much_wider, truth) == 0.0
    assert boundary_f1(np.zeros_like(truth), truth) == 0.0
    assert boundary_f1(np.zeros_like(truth), np.zeros_like(truth)) == 1.0


def test_boundary_f1_leaves_ignored_pixels_out() -> None:
    truth = np.zeros((20, 20), np.uint8)
    truth[5:15, 5:15] = 255
    truth[:, 17:] = 128  # ignored: whatever is predicted there counts for nothing
    prediction = truth.copy()
    prediction[prediction == 128] = 255
    assert boundary_f1(prediction, truth) == 1.0
