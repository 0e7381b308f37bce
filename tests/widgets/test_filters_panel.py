"""FiltersPanel: the weights tiles are the layer's weights; patterns emerge step by step and can be stopped."""

import threading

import numpy as np

import cnnviz_widgets as cw
from cnnviz_widgets import render
from cnnviz_widgets.widgets.filters import pattern_grid
from tests.model_state import ModelState
from panel_support import digits, panel_of, pixels, settled  # noqa: F401 - digits is a fixture


def test_weights_of_the_chosen_filters_are_drawn(digits):
    model = digits[0]
    panel = settled(panel_of(cw.FiltersPanel, digits))
    weights = cw.filter_weights(model, "features.conv1")
    np.testing.assert_array_equal(pixels(panel.weights_view.value), render.filter_tiles(weights[:8].transpose(0, 1), zoom=16, padding=2))
    panel.layer = "features.conv2"
    panel.first.value = 4
    panel.count.value = 3
    settled(panel)
    weights = cw.filter_weights(model, "features.conv2")[4:7]
    np.testing.assert_array_equal(pixels(panel.weights_view.value), render.filter_tiles(weights[:, :24], zoom=8, padding=2))
    assert "filters 4–6" in panel.weights_label.value and "24 of 16" not in panel.weights_label.value


def test_patterns_are_shown_while_they_grow_and_equal_the_method_at_the_end(digits):
    model = digits[0]
    state = ModelState(model)
    panel = settled(panel_of(cw.FiltersPanel, digits))
    panel.layer = "features.conv2"
    panel.count.value = 2
    panel.steps.value = 24
    settled(panel)
    labels = []
    panel.patterns_label.observe(lambda change: labels.append(change["new"]), "value")
    panel.find.click()
    settled(panel)
    assert any("step 10 of 24" in label for label in labels)
    assert "done" in labels[-1]
    # digits_preprocess feeds the model 1 - pixel: mean 1, std -1, so patterns show as the pictures look.
    expected = cw.filter_patterns(model, "features.conv2", [0, 1], size=96, steps=24, normalize=((1.0,), (-1.0,)))
    np.testing.assert_array_equal(pixels(panel.patterns_view.value), pattern_grid(expected))
    state.assert_unchanged()


def test_stop_ends_a_pattern_search(digits):
    panel = settled(panel_of(cw.FiltersPanel, digits))
    panel.steps.value = 512
    running = threading.Event()
    panel.task_bar.progress.observe(lambda change: change["new"] > 0 and running.set(), "value")
    panel.find.click()
    assert running.wait(60), "the search started"
    panel.task_bar.stop.click()
    assert panel.long_runner.wait(10)
    assert "done" not in panel.patterns_label.value
    assert panel.error == ""
