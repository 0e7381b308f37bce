"""Save PNG on every panel: the file decodes to what the panel shows, checked against the methods themselves."""

from __future__ import annotations

import numpy as np
import torch

import cnnviz_widgets as cw
from cnnviz_widgets import render
from panel_support import digits, panel_of, pixels, settled  # noqa: F401 - digits is a fixture


def saved(panel, tmp_path) -> np.ndarray:
    path = panel.save(tmp_path / f"{panel.slug}.png")
    return pixels(path.read_bytes())


def test_feature_maps(digits, tmp_path):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.FeatureMapPanel, digits))
    maps = cw.feature_maps(model, cw.demo.digits_preprocess(pictures[0]), panel.layer)
    np.testing.assert_array_equal(saved(panel, tmp_path), render.feature_grid(maps[:64], "per_map", "viridis")[0])


def test_grad_cam(digits, tmp_path):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.GradCAMPanel, digits))
    view = panel.session.view(0)
    x = cw.demo.digits_preprocess(pictures[0])
    sides = [render.overlay(view, cw.grad_cam(model, x, panel.layer, k), alpha=0.5, cmap="jet") for k in (panel.target, panel.second_target)]
    np.testing.assert_array_equal(saved(panel, tmp_path), render.side_by_side(sides))


def test_guided_backprop(digits, tmp_path):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.GuidedBackpropPanel, digits))
    x = cw.demo.digits_preprocess(pictures[0])
    shown = [
        panel.session.view(0),
        render.gradient_image(cw.guided_backprop(model, x, panel.target)),
        render.gradient_image(cw.guided_grad_cam(model, x, panel.layer, panel.target)),
    ]
    np.testing.assert_array_equal(saved(panel, tmp_path), render.side_by_side(shown))


def test_occlusion(digits, tmp_path):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.OcclusionPanel, digits))
    x = cw.demo.digits_preprocess(pictures[0])
    result = cw.occlusion(model, x, panel.target, panel.window.value, panel.stride.value, baseline=panel.session.baseline(0, "black"))
    scores = render.scores_picture(result.scores, "viridis", side=32)
    picture = saved(panel, tmp_path)
    # The scores map comes first, at the height the row is drawn at.
    height = picture.shape[0]
    first = render.resize(scores, height, round(scores.shape[1] * height / scores.shape[0]))
    np.testing.assert_array_equal(picture[:, : first.shape[1]], first)


def test_filters(digits, tmp_path):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.FiltersPanel, digits))
    weights = cw.filter_weights(model, panel.layer)[:8]
    tiles = render.filter_tiles(weights.transpose(0, 1), zoom=16, padding=2)
    picture = saved(panel, tmp_path)
    np.testing.assert_array_equal(picture[: tiles.shape[0], : tiles.shape[1]], tiles)


def test_mistakes(digits, tmp_path):
    model, pictures, labels, names = digits
    labels = labels.clone()
    labels[[0, 5]] = torch.tensor([7, 2])
    panel = settled(cw.MistakesPanel(model, pictures, cw.demo.digits_preprocess, names, labels=labels))
    inputs = torch.cat([cw.demo.digits_preprocess(picture) for picture in pictures])
    first = cw.evaluate(model, inputs, labels, progress=False).mistakes()[0]
    picture = saved(panel, tmp_path)
    side = 72
    expected = render.resize(render.to_rgb(pictures[first]), side, side)
    np.testing.assert_array_equal(picture[:side, :side], expected)


def test_projector(digits, tmp_path):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.ProjectorPanel, digits, labels=labels))
    picture = saved(panel, tmp_path)
    palette = {tuple(int(code[i : i + 2], 16) for i in (1, 3, 5)) for code in panel.scatter.palette}
    present = {tuple(colour) for colour in picture.reshape(-1, 3)}
    assert len(palette & present) == len(set(labels.tolist())), "every class colour is drawn"
