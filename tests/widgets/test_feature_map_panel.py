"""FeatureMapPanel: a layer or image change repaints the grid with exactly the rendered maps."""

import numpy as np
import pytest
import torch

import cnnviz_widgets as cw
from cnnviz_widgets import render
from tests.model_state import ModelState
from panel_support import digits, panel_of, pixels, settled  # noqa: F401 - digits is a fixture


def expected_grid(model, digits, image, layer, scaling="per_map", cmap="viridis"):
    _, pictures, _, _ = digits
    maps = cw.feature_maps(model, cw.demo.digits_preprocess(pictures[image]), layer)
    return maps, render.feature_grid(maps[:64], scaling, cmap)[0]


def test_changing_layer_and_image_repaints_the_grid_with_the_layer_output(digits):
    model = digits[0]
    state = ModelState(model)
    panel = settled(panel_of(cw.FeatureMapPanel, digits))
    assert panel.layer == "features.conv1"
    assert [name for name, _ in panel.session.conv_layers()] == ["features.conv1", "features.conv2", "features.conv3"]
    assert "16 × 32 × 32" in panel.layer_chooser.options[0][0]

    panel.layer_chooser.value = "features.conv2"
    settled(panel)
    _, grid = expected_grid(model, digits, 0, "features.conv2")
    np.testing.assert_array_equal(pixels(panel.grid.value), grid)

    panel.picker.index = 3
    settled(panel)
    maps, grid = expected_grid(model, digits, 3, "features.conv2")
    np.testing.assert_array_equal(pixels(panel.grid.value), grid)
    assert "maps 0–31 of 32" in panel.grid_label.value

    panel.scaling.value = "shared"
    settled(panel)
    _, grid = expected_grid(model, digits, 3, "features.conv2", scaling="shared")
    np.testing.assert_array_equal(pixels(panel.grid.value), grid)
    state.assert_unchanged()


def test_clicking_a_map_enlarges_it(digits):
    model = digits[0]
    panel = settled(panel_of(cw.FeatureMapPanel, digits))
    # Tile 10 of a grid 8 wide sits in row 1, column 2 (of 2 rows): its centre is at (2.5/8, 1.5/2).
    panel.grid.pointer = {"x": 2.5 / 8, "y": 0.75, "kind": "press", "serial": 1}
    settled(panel)
    assert panel.channel == 10
    maps = cw.feature_maps(model, cw.demo.digits_preprocess(digits[1][0]), "features.conv1")
    np.testing.assert_array_equal(pixels(panel.zoomed.value), render.enlarged_map(maps[10], "viridis"))
    assert "map 10" in panel.zoom_label.value


def test_a_picture_the_preprocessing_rejects_shows_a_message_and_the_panel_keeps_working(digits):
    model, pictures, labels, names = digits

    def picky(picture):
        if np.asarray(picture).mean() > 250:
            raise ValueError("picture: this one is blank")
        return cw.demo.digits_preprocess(picture)

    blank = np.full((32, 32), 255, np.uint8)
    panel = settled(cw.FeatureMapPanel(model, [pictures[0], blank, pictures[1]], picky, names))
    panel.image = 1
    settled(panel)
    assert "this one is blank" in panel.error
    panel.image = 2
    settled(panel)
    assert panel.error == ""
    maps = cw.feature_maps(model, cw.demo.digits_preprocess(pictures[1]), "features.conv1")
    np.testing.assert_array_equal(pixels(panel.grid.value), render.feature_grid(maps, "per_map", "viridis")[0])


def test_a_misspelt_layer_names_the_closest_ones(digits):
    panel = settled(panel_of(cw.FeatureMapPanel, digits))
    with pytest.raises(Exception, match="features.conv2"):
        panel.layer = "features.cnv2"
    assert panel.layer == "features.conv1"


def test_save_writes_the_grid_as_png(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    panel = settled(panel_of(cw.FeatureMapPanel, digits))
    model, pictures, labels, names = digits
    maps = cw.feature_maps(model, cw.demo.digits_preprocess(pictures[0]), panel.layer)
    expected = render.feature_grid(maps[:64], "per_map", "viridis")[0]
    path = panel.save(tmp_path / "maps.png")
    np.testing.assert_array_equal(pixels(path.read_bytes()), expected)
    panel.save_button.click()
    assert "saved to" in panel.saved.value
    np.testing.assert_array_equal(pixels((tmp_path / "feature-maps-0.png").read_bytes()), expected)


def test_a_repaint_after_the_weights_changed_never_shows_maps_of_the_old_weights():
    # A model of its own: the training below must not reach the other tests' shared digits model.
    x, _, names = cw.demo.digits("test")
    model, pictures = cw.demo.digits_model(), cw.demo.digit_pictures(x[:4])
    digits = (model, pictures, None, names)
    panel = settled(panel_of(cw.FeatureMapPanel, digits))
    old = pixels(panel.grid.value)
    # A training step: the watcher has not looked yet when the panel repaints.
    with torch.no_grad():
        model.features.conv1.weight.mul_(-1.0)
    panel.refresh()
    settled(panel)
    _, grid = expected_grid(model, digits, 0, "features.conv1")
    assert not np.array_equal(grid, old)
    np.testing.assert_array_equal(pixels(panel.grid.value), grid)
    panel.close()
