"""The bqplot charts: confusion-matrix cell selection both ways, class-probability bars."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnviz_widgets as cw

CONFUSION = np.array([[9, 1, 0], [2, 7, 1], [0, 0, 10]])
NAMES = ["cat", "dog", "bird"]


def test_a_clicked_cell_becomes_the_selection():
    chart = cw.ConfusionMatrix(CONFUSION, NAMES)
    seen = []
    chart.observe(lambda change: seen.append(change["new"]), "selection")
    # What bqplot's front end sends when the user clicks the cell in row 1 (true dog), column 0 (predicted cat).
    click = {"event": "element_click", "data": {"rowNum": 1, "columnNum": 0, "color": 2}}
    chart.heatmap._handle_custom_msgs(None, click)
    assert chart.selection == (1, 0) and seen == [(1, 0)]
    assert np.asarray(chart.heatmap.selected).tolist() == [[1, 0]]
    chart.heatmap._handle_custom_msgs(None, {"event": "element_click", "data": None})
    assert chart.selection == (1, 0)


def test_setting_the_selection_highlights_the_cell():
    chart = cw.ConfusionMatrix(CONFUSION, NAMES)
    chart.selection = (0, 1)
    assert np.asarray(chart.heatmap.selected).tolist() == [[0, 1]]
    chart.selection = None
    assert chart.heatmap.selected is None
    with pytest.raises(Exception, match="selection"):
        chart.selection = (3, 0)


def test_heatmap_shows_the_counts_with_class_names():
    chart = cw.ConfusionMatrix(torch.from_numpy(CONFUSION))
    np.testing.assert_array_equal(chart.heatmap.color, CONFUSION)
    assert list(chart.heatmap.row) == ["0", "1", "2"] and list(chart.heatmap.column) == ["0", "1", "2"]
    assert chart.heatmap.display_format is not None
    # The largest mistake count sits where the colour turns from "mistake" to "hit".
    assert chart.heatmap.scales["color"].mid == 2


def test_an_evaluation_feeds_the_matrix():
    x, y, names = cw.demo.digits("test")
    result = cw.evaluate(cw.demo.digits_model(), x, y, progress=False)
    chart = cw.ConfusionMatrix(result.confusion, names)
    assert chart.heatmap.color.sum() == len(y)


@pytest.mark.parametrize(
    "confusion, names, error, argument",
    [
        (np.zeros((2, 3), int), None, ValueError, "confusion"),
        (np.zeros((2, 2)), None, TypeError, "confusion"),
        (CONFUSION, ["a", "b"], ValueError, "class_names"),
        (CONFUSION, ["a", "a", "b"], ValueError, "class_names"),
    ],
)
def test_confusion_bad_input(confusion, names, error, argument):
    with pytest.raises(error, match=argument):
        cw.ConfusionMatrix(confusion, names)


def test_probability_bars_show_the_top_classes_in_order():
    chart = cw.ClassProbabilities(np.array([0.05, 0.6, 0.1, 0.25]), ["a", "b", "c", "d"], top_k=3, true_class=3)
    assert list(chart.bars.x) == ["b", "d", "c"]
    np.testing.assert_allclose(chart.bars.y, [0.6, 0.25, 0.1])
    np.testing.assert_array_equal(chart.bars.color, [0, 1, 0])


def test_probability_bars_update_for_another_image():
    chart = cw.ClassProbabilities(class_names=["a", "b"], top_k=5)
    assert len(chart.bars.x) == 0
    chart.show(torch.tensor([[0.9, 0.1]]))
    assert list(chart.bars.x) == ["a", "b"]
    np.testing.assert_array_equal(chart.bars.color, [0, 0])


@pytest.mark.parametrize(
    "probabilities, kwargs, argument",
    [
        (np.array([2.0, -1.0]), {}, "probabilities"),
        (np.zeros((2, 2)), {}, "probabilities"),
        (np.array([0.5, 0.5]), {"true_class": 2}, "true_class"),
        (np.array([0.5, 0.5]), {"top_k": 0}, "top_k"),
    ],
)
def test_probability_bad_input(probabilities, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        cw.ClassProbabilities(probabilities, **kwargs)
