"""GradCAMPanel and GuidedBackpropPanel: every control repaints with exactly the method's output."""

import numpy as np
import pytest
import traitlets

import cnnviz_widgets as cw
from cnnviz_widgets import render
from tests.model_state import ModelState
from panel_support import digits, panel_of, pixels, settled  # noqa: F401 - digits is a fixture


def test_classes_are_offered_most_probable_first_with_percentages(digits):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.GradCAMPanel, digits))
    x = cw.demo.digits_preprocess(pictures[0])
    probabilities = model(x).softmax(dim=1)[0].detach().numpy()
    order = np.argsort(-probabilities)
    assert [value for _, value in panel.class_chooser.options] == list(order)
    assert panel.class_chooser.options[0][0] == f"{names[order[0]]} — {probabilities[order[0]]:.1%}"
    assert (panel.target, panel.second_target) == (order[0], order[1])
    assert panel.layer == "features.conv3"


def test_class_layer_and_opacity_changes_repaint_the_overlay(digits):
    model, pictures, labels, names = digits
    state = ModelState(model)
    panel = settled(panel_of(cw.GradCAMPanel, digits))
    picture = np.asarray(panel.session.view(0))
    x = cw.demo.digits_preprocess(pictures[0])

    panel.class_chooser.value = 7
    settled(panel)
    expected = render.overlay(picture, cw.grad_cam(model, x, "features.conv3", 7), alpha=0.5, cmap="jet")
    np.testing.assert_array_equal(pixels(panel.left.value), expected)
    assert names[7] in panel.left_label.value

    panel.layer_chooser.value = "features.conv2"
    panel.opacity.value = 0.8
    panel.cmap.value = "viridis"
    settled(panel)
    expected = render.overlay(picture, cw.grad_cam(model, x, "features.conv2", 7), alpha=0.8, cmap="viridis")
    np.testing.assert_array_equal(pixels(panel.left.value), expected)
    second = render.overlay(picture, cw.grad_cam(model, x, "features.conv2", panel.second_target), alpha=0.8, cmap="viridis")
    np.testing.assert_array_equal(pixels(panel.right.value), second)
    state.assert_unchanged()


def test_the_right_picture_can_show_why_the_first_class_rather_than_the_second(digits):
    model, pictures, labels, names = digits
    state = ModelState(model)
    panel = settled(panel_of(cw.GradCAMPanel, digits))
    picture = np.asarray(panel.session.view(0))
    x = cw.demo.digits_preprocess(pictures[0])
    panel.contrast_box.value = True
    settled(panel)
    contrast = cw.grad_cam(model, x, "features.conv3", panel.target, contrast=panel.second_target)
    np.testing.assert_array_equal(pixels(panel.right.value), render.overlay(picture, contrast, alpha=0.5, cmap="jet"))
    assert f"why {names[panel.target]} rather than {names[panel.second_target]}" in panel.right_label.value
    state.assert_unchanged()


def test_a_new_image_takes_its_own_most_probable_class(digits):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.GradCAMPanel, digits))
    panel.image = 5
    settled(panel)
    probabilities = model(cw.demo.digits_preprocess(pictures[5])).softmax(dim=1)[0]
    assert panel.target == int(probabilities.argmax())
    assert panel.picker.index == 5


def test_guided_backprop_panel_shows_both_gradients(digits):
    model, pictures, labels, names = digits
    state = ModelState(model)
    panel = settled(panel_of(cw.GuidedBackpropPanel, digits))
    panel.class_chooser.value = 3
    settled(panel)
    x = cw.demo.digits_preprocess(pictures[0])
    np.testing.assert_array_equal(pixels(panel.guided.value), render.gradient_image(cw.guided_backprop(model, x, 3)))
    np.testing.assert_array_equal(
        pixels(panel.guided_cam.value), render.gradient_image(cw.guided_grad_cam(model, x, "features.conv3", 3))
    )
    assert "explaining" in panel.class_label.value and names[3] in panel.class_label.value
    state.assert_unchanged()


def test_an_impossible_class_is_refused(digits):
    panel = settled(panel_of(cw.GradCAMPanel, digits))
    before = panel.target
    with pytest.raises(traitlets.TraitError, match="out of range"):
        panel.target = 99
    assert panel.target == before
