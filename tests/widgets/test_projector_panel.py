"""ProjectorPanel: the points are the projected embeddings; selecting a point selects its image."""

import numpy as np
import torch

import cnnviz_widgets as cw
from cnnviz_widgets.widgets import scatter_data
from panel_support import Snapshot, digits, panel_of, settled  # noqa: F401 - digits is a fixture


def inputs_of(pictures):
    return torch.cat([cw.demo.digits_preprocess(picture) for picture in pictures])


def test_points_are_the_projected_embeddings_and_a_point_selects_its_image(digits):
    model, pictures, labels, names = digits
    snapshot = Snapshot(model)
    panel = settled(panel_of(cw.ProjectorPanel, digits, labels=labels))
    expected = cw.project(cw.embed(model, inputs_of(pictures), progress=False), "pca", dims=3)
    assert panel.scatter.points == scatter_data.positions(expected)[0]
    assert panel.scatter.color_by == "label"

    panel.scatter.selected = [12]
    assert panel.image == 12

    panel.layer_chooser.value = "features.conv2"
    panel.dims.value = 2
    settled(panel)
    expected = cw.project(cw.embed(model, inputs_of(pictures), layer="features.conv2", progress=False), "pca", dims=2)
    assert panel.scatter.points == scatter_data.positions(expected)[0]
    assert panel.scatter.view == "2d"
    assert panel.scatter.selected == [12]
    assert "features.conv2" in panel.summary.value and "2D" in panel.summary.value
    snapshot.assert_unchanged()


def test_colour_by_correctness_and_save_as_png(digits, tmp_path):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.ProjectorPanel, digits, labels=labels))
    panel.color_by.value = "correct"
    assert panel.scatter.color_by == "correct"
    picture = panel.save(tmp_path / "points.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tsne_runs_off_the_main_thread_and_can_be_superseded(digits):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.ProjectorPanel, digits, labels=labels))
    panel.method.value = "tsne"
    panel.method.value = "pca"
    settled(panel)
    expected = cw.project(cw.embed(model, inputs_of(pictures), progress=False), "pca", dims=3)
    assert panel.scatter.points == scatter_data.positions(expected)[0]
    assert "PCA" in panel.summary.value
