"""ComparePanel: every method's map with its deletion and insertion scores, sorting, and the sanity check."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets import render
from cnnviz_widgets.methods import EXPLANATIONS
from tests.model_state import ModelState
from panel_support import digits, panel_of, pixels, settled  # noqa: F401 - digits is a fixture


def test_every_method_is_shown_with_its_scores_fast_ones_first(digits):
    model, pictures, labels, names = digits
    state = ModelState(model)
    panel = panel_of(cw.ComparePanel, digits)
    arrivals = []
    for name, (_, picture, _, text) in panel.cards.items():
        picture.observe(lambda change, name=name: arrivals.append(("map", name)), "value")
        text.observe(lambda change, name=name: arrivals.append(("scores", name)) if "AUC" in change["new"] else None, "value")
    settled(panel)
    # Every map, fast ones first, then every map's scores.
    assert arrivals[: len(EXPLANATIONS)] == [("map", item.name) for item in EXPLANATIONS]
    assert sorted(arrivals[len(EXPLANATIONS) :]) == sorted(("scores", item.name) for item in EXPLANATIONS)
    x = cw.demo.digits_preprocess(pictures[0])
    grad_cam = cw.cam(model, x, panel.layer, panel.target, method="grad-cam")
    scores = cw.deletion_insertion(model, x, panel.target, grad_cam)
    card, picture, curves, text = panel.cards["grad-cam"]
    np.testing.assert_array_equal(pixels(picture.value), render.overlay(panel.session.view(0), grad_cam, alpha=0.5, cmap="jet"))
    assert f"deletion AUC <b>{scores.deletion_auc:.3f}</b>" in text.value
    assert f"insertion AUC <b>{scores.insertion_auc:.3f}</b>" in text.value
    for name, (_, picture, curves, _) in panel.cards.items():
        assert pixels(picture.value).std() > 1, f"{name} is blank"
        assert pixels(curves.value).std() > 1, f"{name} has no curves"
    panel.order.value = "deletion"
    shown = [next(name for name, (card, *_) in panel.cards.items() if card is child) for child in panel.grid.children]
    aucs = [panel.scores[name].deletion_auc for name in shown]
    assert aucs == sorted(aucs)
    state.assert_unchanged()


def test_the_sanity_check_draws_the_cascade_and_says_what_it_means(digits):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.ComparePanel, digits))
    panel.check_sanity("grad-cam")
    settled(panel)
    result = cw.sanity_check(model, cw.demo.digits_preprocess(pictures[0]), panel.target, "grad-cam", layer=panel.layer)
    strip = pixels(panel.sanity_strip.value)
    # The original map and one map per step of the cascade, side by side.
    assert strip.shape[1] > 96 * (1 + len(result.layers))
    assert "depends on what the model learned" in panel.sanity_verdict.value
    assert result.layers[0] in panel.sanity_title.value
    assert panel.error == ""
    panel.close()
    assert not panel.threads_alive


def test_a_map_zero_everywhere_says_so_instead_of_scores():
    """A layer whose maps are all negative (a large negative bias, no activation after it): Score-CAM weighs
    them by probabilities, which are positive, so its map is zero at every place (pytorch-grad-cam's too).
    Its card says so; deletion and insertion would only follow the row order of the pixels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[0].bias.fill_(-50.0)
    pictures = [np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8) for seed in range(2)]
    panel = settled(cw.ComparePanel(model, pictures, class_names=["a", "b", "c"]), timeout=120)
    x = panel.session.input(0)
    assert not cw.cam(model, x, "0", panel.target, method="score-cam").any()
    _, picture, curves, text = panel.cards["score-cam"]
    assert "zero everywhere at 0" in text.value and "score-cam" not in panel.scores
    assert curves.layout.display == "none", "no curves, and no empty picture in their place"
    _, _, curves, text = panel.cards["saliency"]
    assert "deletion AUC" in text.value and pixels(curves.value).std() > 1
    assert panel.error == ""
