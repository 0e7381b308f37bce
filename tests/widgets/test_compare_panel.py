"""ComparePanel: every method's map with its deletion and insertion scores, sorting, and the sanity check."""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets import render
from cnnviz_widgets.methods import EXPLANATIONS
from cnnviz_widgets.session import Session
from cnnviz_widgets.widgets import compare, drawing
from cnnviz_widgets.widgets.compare import CARD_SIDE, CURVES_HEIGHT
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


def test_a_card_still_computing_shows_a_placeholder_at_its_size(digits):
    """Not an empty image, which a browser draws as a broken-image icon: a light grey card with dark words."""
    model, pictures, labels, names = digits
    session = Session(model, pictures, preprocess=cw.demo.digits_preprocess, class_names=names)
    release = threading.Event()
    real_explanation = session.explanation

    def held(index, method, layer, target, checkpoint=None):
        while not release.wait(0.05):
            checkpoint(0.0)
        return real_explanation(index, method, layer, target, checkpoint)

    session.explanation = held
    panel = cw.ComparePanel(session=session)
    try:
        for name, (_, picture, curves, text) in panel.cards.items():
            for png, size in ((picture.value, (CARD_SIDE, CARD_SIDE)), (curves.value, (CURVES_HEIGHT, CARD_SIDE))):
                shown = pixels(png)
                assert shown.shape == (*size, 3), f"{name}: drawn at the card's size"
                assert (shown == render.PLACEHOLDER_BACKGROUND).all(axis=-1).mean() > 0.8, f"{name}: grey"
                assert (shown.max(axis=-1) < 128).sum() > 20, f"{name}: words in dark ink"
            assert "waiting" in text.value
    finally:
        release.set()
    settled(panel)
    for name, (_, picture, curves, _) in panel.cards.items():
        assert (pixels(picture.value) == render.PLACEHOLDER_BACKGROUND).all(axis=-1).mean() < 0.2, f"{name}: its map"
    panel.close()


class WideHead(nn.Module):
    """A last conv layer of 1,024 channels: Score-CAM runs 256 passes where the other methods run 90 at most."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 1024, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(1024, 3)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_a_card_estimated_long_waits_for_a_click_and_the_others_finish_first(monkeypatch):
    """The threshold is set between Score-CAM's estimate and the largest of the others', as 10 s falls between
    them on EfficientNet-Lite0: Score-CAM shows its estimate and a button, and runs only once clicked."""
    pictures = [np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8) for seed in range(2)]
    session = Session(WideHead().eval(), pictures, class_names=["a", "b", "c"])
    layer = session.heatmap_layer()
    slow = [item.name for item in EXPLANATIONS if item.slow]
    estimates = {method: session.explanation_estimate(0, method, layer) for method in slow}
    others = max(seconds for method, seconds in estimates.items() if method != "score-cam")
    # The panel reads the same estimates: the forward times are measured once per replica.
    assert estimates["score-cam"] > others
    monkeypatch.setattr(compare, "CLICK_ABOVE_SECONDS", (estimates["score-cam"] + others) / 2)
    computed = []
    real_explanation = cw.methods.explanation

    def watched(model, x, layer, target, method, **keywords):
        computed.append(method)
        return real_explanation(model, x, layer, target, method, **keywords)

    monkeypatch.setattr(cw.methods, "explanation", watched)
    panel = settled(cw.ComparePanel(session=session), timeout=300)
    assert "score-cam" not in computed
    assert set(panel.scores) == {item.name for item in EXPLANATIONS} - {"score-cam"}, "the other cards finished"
    _, picture, curves, text = panel.cards["score-cam"]
    button = panel.compute_buttons["score-cam"]
    about = drawing.duration(estimates["score-cam"])
    assert button.layout.display != "none" and button.description == f"compute (about {about})"
    assert f"about {about}" in text.value and curves.layout.display == "none"
    assert (pixels(picture.value) == render.PLACEHOLDER_BACKGROUND).all(axis=-1).mean() > 0.8
    assert all(panel.compute_buttons[name].layout.display == "none" for name in panel.cards if name != "score-cam")
    button.click()
    settled(panel, timeout=300)
    assert computed.count("score-cam") == 1
    assert "score-cam" in panel.scores and button.layout.display == "none"
    assert "deletion AUC" in text.value and pixels(curves.value).std() > 1
    # New weights (a training step): the click was for the old ones, the card waits for another.
    with torch.no_grad():
        session.model.head.bias.add_(0.5)
    panel.recompute()
    settled(panel, timeout=300)
    assert computed.count("score-cam") == 1 and computed.count("grad-cam") == 2
    assert button.layout.display != "none" and "score-cam" not in panel.scores
    assert panel.error == ""
    panel.close()


def test_the_card_and_the_sanity_strip_show_the_same_map(digits):
    """One scaling: saliency's card and the first map of its sanity strip, the map of the intact model."""
    panel = settled(panel_of(cw.ComparePanel, digits))
    panel.check_sanity("saliency")
    settled(panel)
    key = (0, panel.layer, panel.target)
    card_map = panel.session.explanation(0, "saliency", *key[1:])
    original = panel.session.sanity(0, "saliency", *key[1:]).original
    torch.testing.assert_close(original, card_map, rtol=0, atol=0)
    card = pixels(panel.cards["saliency"][1].value)
    first_tile = render.strip([card])
    np.testing.assert_array_equal(pixels(panel.sanity_strip.value)[:, : first_tile.shape[1]], first_tile)
    panel.close()


class OnePlaceHead(nn.Module):
    """A last conv layer whose maps are 1 x 1 (its kernel covers the picture): its Grad-CAM is one value."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 16), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def test_a_sanity_check_that_cannot_tell_says_so_in_a_neutral_colour():
    """The original map is the same everywhere: no rank correlation can be read, so no verdict either way."""
    pictures = [np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8) for seed in range(2)]
    panel = cw.ComparePanel(OnePlaceHead().eval(), pictures, class_names=["a", "b", "c"])
    panel.layer = "features.2"
    settled(panel, timeout=120)
    panel.check_sanity("grad-cam")
    settled(panel, timeout=120)
    verdict = panel.sanity_verdict.value
    assert "cannot tell whether the map depends on the model's weights" in verdict
    assert "the original map is 0 everywhere" in verdict
    assert "color:#616161" in verdict and "depends on what the model learned" not in verdict
    assert panel.error == ""
    panel.close()
