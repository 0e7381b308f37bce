"""OcclusionPanel: the map equals the method's, a long run can be stopped, the live patch answers at once."""

import threading

import numpy as np
import torch

import cnnviz_widgets as cw
from cnnviz_widgets import render
from cnnviz_widgets.widgets import drawing
from tests.model_state import ModelState
from panel_support import digits, panel_of, pixels, settled  # noqa: F401 - digits is a fixture


def test_the_map_is_the_methods_scores_for_the_chosen_settings(digits):
    model, pictures, labels, names = digits
    state = ModelState(model)
    panel = settled(panel_of(cw.OcclusionPanel, digits))
    panel.window.value = 8
    panel.stride.value = 4
    panel.baseline.value = "grey"
    settled(panel)
    x = cw.demo.digits_preprocess(pictures[0])
    grey = cw.demo.digits_preprocess(np.full((32, 32), 128, np.uint8))
    expected = cw.occlusion(model, x, panel.target, window=8, stride=4, baseline=grey)
    view = panel.session.view(0)
    np.testing.assert_array_equal(
        pixels(panel.scores_view.value), render.scores_picture(expected.scores, "viridis", side=max(view.shape[:2]))
    )
    importance = render.scale_to_unit(np.clip(expected.attribution.numpy(), 0.0, None))
    np.testing.assert_array_equal(pixels(panel.attribution_view.value), render.overlay(view, importance, alpha=0.55, cmap="jet"))
    assert "7×7 places" in panel.scores_label.value
    state.assert_unchanged()


def test_a_long_run_can_be_stopped_and_the_panel_then_answers_a_new_request(digits, monkeypatch):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.OcclusionPanel, digits))
    panel.window.value = 8
    settled(panel)
    shown_before = panel.scores_view.value
    # The run is held at its first batch until Stop is pressed: however fast the machine, Stop lands mid-run.
    running, pressed = threading.Event(), threading.Event()
    occlusion = panel.session.occlusion

    def held(index, target, window, stride, fill, checkpoint=None):
        def hold(fraction, partial=None):
            if fraction > 0:
                running.set()
                pressed.wait(60)
            checkpoint(fraction, partial)

        return occlusion(index, target, window, stride, fill, hold)

    monkeypatch.setattr(panel.session, "occlusion", held)
    panel.stride.value = 1
    assert running.wait(60), "the long run started"
    assert panel.task_bar.layout.display == "flex", "the progress bar shows while the map is computed"
    panel.task_bar.stop.click()
    pressed.set()
    assert panel.long_runner.wait(60), "stopping takes effect"
    assert panel.scores_view.value == shown_before, "the stopped run shows nothing"
    assert panel.task_bar.layout.display == "none"
    monkeypatch.undo()

    panel.stride.value = 8
    settled(panel)
    assert "4×4 places" in panel.scores_label.value
    assert panel.error == ""


def test_moving_the_patch_updates_the_probabilities_at_once(digits):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.OcclusionPanel, digits))
    panel.window.value = 12
    settled(panel)
    panel.live_view.pointer = {"x": 0.5, "y": 0.5, "kind": "drag", "serial": 3}
    settled(panel)
    x = cw.demo.digits_preprocess(pictures[0])
    box = drawing.patch_box(0.5, 0.5, 12, 32, 32)
    occluded = x.clone()
    occluded[..., box[0] : box[1], box[2] : box[3]] = cw.demo.digits_preprocess(np.zeros((32, 32), np.uint8))[..., box[0] : box[1], box[2] : box[3]]
    probabilities = torch.softmax(model(occluded).double(), dim=1)[0]
    top = int(probabilities.argmax())
    assert f"{names[top]}: {float(probabilities[top]):.1%}" in panel.live_bars.value
    picture = pixels(panel.live_view.value)
    assert (picture[box[0] + 3 : box[1] - 3, box[2] + 3 : box[3] - 3] == 0).all(), "the black patch is drawn where it was put"


def test_a_coarse_map_is_drawn_first_then_sharpened_to_the_chosen_step(digits):
    """25×25 places: the first picture shows 4×4 of them computed (every 8th row and column), each place
    drawn with the score of the computed place at or before it; then 7×7 and 13×13; then the whole map."""
    panel = settled(panel_of(cw.OcclusionPanel, digits))
    panel.window.value = 8
    settled(panel)
    shown = []
    # The caption is set after the picture: each caption comes with the picture drawn just before it.
    panel.scores_label.observe(lambda change: shown.append((change["new"], panel.scores_view.value)), "value")
    panel.stride.value = 1
    settled(panel)
    x = cw.demo.digits_preprocess(digits[1][0])
    black = cw.demo.digits_preprocess(np.zeros((32, 32), np.uint8))
    expected = cw.occlusion(digits[0], x, panel.target, window=8, stride=1, baseline=black, incremental=False)
    side = max(panel.session.view(0).shape[:2])
    assert [label.split("places")[1].split(": from")[0] for label, _ in shown] == [
        " (coarse: 16 of them computed so far, refining)",
        " (coarse: 49 of them computed so far, refining)",
        " (coarse: 169 of them computed so far, refining)",
        "",
    ]
    for (_, png), step in zip(shown, (8, 4, 2, 1)):
        lattice = torch.arange(25) // step * step
        coarse = expected.scores[lattice][:, lattice]
        np.testing.assert_allclose(pixels(png), render.scores_picture(coarse, "viridis", side=side), atol=1)
    assert panel.result is not None and torch.allclose(panel.result.scores, expected.scores, atol=1e-6)
