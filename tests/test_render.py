from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from cnnviz_widgets import render


def test_colormap_is_matplotlibs_table():
    table = render.colormap("viridis")
    assert table.shape == (256, 3) and table.dtype == np.uint8
    np.testing.assert_array_equal(table[[0, 255]], np.round(colormaps["viridis"]([0.0, 1.0])[:, :3] * 255))
    with pytest.raises(ValueError, match="cmap: unknown colormap 'viridiss'"):
        render.colormap("viridiss")


def test_apply_colormap_spans_the_table():
    values = torch.tensor([[0.0, 5.0], [10.0, 2.5]])
    colours = render.apply_colormap(values, "gray")
    assert colours.shape == (2, 2, 3)
    np.testing.assert_array_equal(colours[:, :, 0], [[0, 128], [255, 64]])
    fixed = render.apply_colormap(values, "gray", low=0.0, high=20.0)
    assert fixed[1, 0, 0] == 128
    assert (render.apply_colormap(np.ones((2, 2)), "gray") == 0).all()


def test_overlay_blends_with_alpha():
    picture = np.full((4, 6, 3), 100, np.uint8)
    heat = np.zeros((2, 3))
    heat[0, 0] = 1.0
    assert np.array_equal(render.overlay(picture, heat, alpha=0.0), picture)
    full = render.overlay(picture, heat, alpha=1.0, cmap="gray")
    assert full.shape == (4, 6, 3)
    assert full[0, 0, 0] > 128 and full[3, 5, 0] == 0
    half = render.overlay(Image.fromarray(picture), np.zeros((4, 6)), alpha=0.5, cmap="gray")
    assert (half == 50).all()
    with pytest.raises(ValueError, match="alpha: expected a number in"):
        render.overlay(picture, heat, alpha=2)


def test_to_rgb_accepts_pictures_of_every_kind():
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert render.to_rgb(grey).shape == (2, 3, 3)
    rgba = np.zeros((2, 3, 4), np.uint8)
    assert render.to_rgb(rgba).shape == (2, 3, 3)
    assert render.to_rgb(np.full((1, 1, 3), 0.5))[0, 0, 0] == 128
    with pytest.raises(ValueError, match="picture: expected"):
        render.to_rgb(np.zeros((2, 3, 5)))


def test_tile_maps_per_map_and_shared_scaling():
    maps = torch.stack([torch.tensor([[0.0, 1.0], [1.0, 1.0]]), torch.tensor([[0.0, 10.0], [10.0, 10.0]])])
    per_map = render.tile_maps(maps, columns=2, cmap="gray", padding=1)
    assert per_map.shape == (2, 5, 3)
    # per map: both maps reach white; shared: the first map stays dark next to the second
    assert per_map[0, 1, 0] == 255 and per_map[0, 4, 0] == 255
    shared = render.tile_maps(maps, columns=2, scaling="shared", cmap="gray", padding=1)
    assert shared[0, 1, 0] == 26 and shared[0, 4, 0] == 255
    assert (per_map[:, 2] == 255).all(), "the padding column is the white background"
    zoomed = render.tile_maps(maps, scaling="shared", zoom=3, padding=0, columns=1)
    assert zoomed.shape == (12, 6, 3)
    with pytest.raises(ValueError, match="scaling: expected one of"):
        render.tile_maps(maps, scaling="global")


def test_grid_is_about_square():
    assert render.grid_shape(10) == (3, 4)
    assert render.grid_shape(1) == (1, 1)
    assert render.tile_maps(np.zeros((10, 2, 2)), padding=0).shape == (6, 8, 3)


def test_first_layer_filters_as_colour_tiles():
    weights = torch.zeros(2, 3, 2, 2)
    weights[0, 0] = 1.0  # a red filter
    weights[1, 2] = -1.0  # a filter against blue
    tiles = render.filter_tiles(weights, zoom=1, padding=0)
    assert tiles.shape == (2, 4, 3)
    np.testing.assert_array_equal(tiles[0, 0], [255, 128, 128])
    np.testing.assert_array_equal(tiles[0, 2], [128, 128, 0])


def test_deeper_filters_one_tile_per_input_channel():
    weights = torch.randn(4, 5, 3, 3)
    tiles = render.filter_tiles(weights, zoom=2, padding=1)
    assert tiles.shape == (4 * 6 + 3, 5 * 6 + 4, 3)


def test_gradient_image_is_grey_at_zero():
    gradients = torch.zeros(3, 4, 4)
    assert (render.gradient_image(gradients) == 128).all()
    gradients[0, 0, 0] = 2.0
    gradients[0, 0, 1] = -2.0
    image = render.gradient_image(gradients, percentile=100)
    assert image[0, 0, 0] == 255 and image[0, 1, 0] == 0 and image[2, 2, 0] == 128
    assert render.gradient_image(torch.ones(1, 2, 2)).shape == (2, 2, 3)


def test_png_round_trip():
    picture = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = render.to_png(picture)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), picture)
