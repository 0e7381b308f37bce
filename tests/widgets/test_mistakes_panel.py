"""MistakesPanel: the gallery holds exactly the evaluation's mistakes; matrix cells filter it; clicks select."""

import numpy as np
import torch

import cnnviz_widgets as cw
from cnnviz_widgets.widgets.base import TaskBar
from tests.model_state import ModelState
from panel_support import pixels, settled

IMAGES = 120


def confused_digits():
    """Digits with a few labels changed, so that the matrix has off-diagonal cells to click."""
    x, y, names = cw.demo.digits("test")
    labels = y[:IMAGES].clone()
    labels[[0, 5, 9]] = torch.tensor([7, 7, 2])
    return cw.demo.digits_model(), cw.demo.digit_pictures(x[:IMAGES]), labels, names


def test_gallery_shows_the_mistakes_most_confident_first_and_a_cell_filters_it():
    model, pictures, labels, names = confused_digits()
    state = ModelState(model)
    panel = settled(cw.MistakesPanel(model, pictures, cw.demo.digits_preprocess, names, labels=labels))
    evaluation = cw.evaluate(model, torch.cat([cw.demo.digits_preprocess(p) for p in pictures]), labels, progress=False)
    np.testing.assert_array_equal(panel.evaluation.confusion, evaluation.confusion)
    mistakes = evaluation.mistakes()
    assert len(mistakes) >= 3
    np.testing.assert_array_equal(panel._shown, mistakes)
    shown_cards = [card for card in panel.cards if card.layout.display != "none"]
    assert len(shown_cards) == len(mistakes)
    first = mistakes[0]
    assert f"true <b>{names[labels[first]]}</b>" in panel.captions[0].value
    assert f"{evaluation.confidence[first]:.0%}" in panel.captions[0].value
    assert pixels(panel.slots[0].value).std() > 10

    true, predicted = int(labels[5]), int(evaluation.predictions[5])
    drawn = []
    draw = panel._draw
    panel._draw = lambda: (drawn.append(1), draw())
    panel.matrix.selection = (true, predicted)
    assert len(drawn) == 1, "one click, one redraw of the gallery"
    np.testing.assert_array_equal(panel._shown, evaluation.mistakes(true=true, predicted=predicted))
    assert (panel.true_class.value, panel.predicted_class.value) == (true, predicted)
    assert f"of {len(panel._shown)}" in panel.summary.value

    panel.slots[0].pointer = {"x": 0.5, "y": 0.5, "kind": "press", "serial": 1}
    assert panel.image == int(panel._shown[0])
    assert panel.slots[0].highlighted
    state.assert_unchanged()


def test_without_labels_the_panel_says_what_it_needs():
    model, pictures, labels, names = confused_digits()
    panel = cw.MistakesPanel(model, pictures, cw.demo.digits_preprocess, names)
    assert "labels" in panel.error and "pass labels=" in panel.error
    panel.save_button.click()
    assert "nothing is shown yet, so there is nothing to save" in panel.error


def test_the_progress_reads_as_images_per_second_and_time_left():
    clock = iter([100.0, 100.0, 102.0])
    bar = TaskBar(clock=lambda: next(clock))
    bar.running("classifying", count=120)
    bar.advance(0.25)
    # 30 images in 2 s: 15 images/s, and the 90 left take 6 s.
    assert "classifying 30 of 120 · 15 images/s · 6 s left" in bar.status.value
