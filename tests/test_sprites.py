"""Sprite atlases from every usual form of image batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz_widgets.sprites import build_atlas, pictures

RED = (255, 0, 0)


def tile(atlas, index: int) -> np.ndarray:
    size, columns = atlas.thumbnail_size, atlas.columns
    left, top = (index % columns) * size, (index // columns) * size
    return np.asarray(atlas.image.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize(
    "images",
    [
        [Image.new("RGB", (10, 10), RED)] * 3,
        np.tile(np.array(RED, np.uint8), (3, 10, 10, 1)),  # (N, H, W, C) uint8
        torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1).expand(3, 3, 10, 10),  # (N, C, H, W) in [0, 1]
    ],
    ids=["pil", "uint8-hwc", "tensor-chw"],
)
def test_every_form_gives_the_same_red_tiles(images):
    atlas = build_atlas(images, thumbnail_size=8)
    assert (atlas.count, atlas.columns, atlas.thumbnail_size) == (3, 2, 8)
    assert atlas.image.size == (16, 16)
    np.testing.assert_array_equal(tile(atlas, 2), np.broadcast_to(RED, (8, 8, 3)))
    assert (tile(atlas, 3) == 255).all(), "the unused cell stays background"


def test_normalised_tensors_are_min_max_scaled_per_image():
    images = torch.stack([torch.linspace(-2, 2, 16).reshape(1, 4, 4), torch.full((1, 4, 4), 0.5)])
    first, second = (np.asarray(picture.convert("L")) for picture in pictures(images))
    assert first.min() == 0 and first.max() == 255
    assert (second == 128).all()


def test_grey_arrays_without_channel_axis():
    first = pictures(np.zeros((2, 5, 7), np.uint8))[0]
    assert first.size == (7, 5) and first.mode == "RGB"


def test_non_square_images_are_letterboxed():
    atlas = build_atlas([Image.new("RGB", (20, 10), RED)], thumbnail_size=10)
    square = tile(atlas, 0)
    assert (square[5] == RED).all() and (square[0] == 255).all()


def test_thumbnails_shrink_to_fit_the_atlas():
    atlas = build_atlas(np.zeros((100, 32, 32), np.uint8), thumbnail_size=32, max_side=50)
    assert atlas.columns == 10 and atlas.thumbnail_size == 5


@pytest.mark.parametrize(
    "images, error",
    [("pictures", TypeError), (np.zeros((2, 4, 4, 5)), ValueError), (torch.zeros(4, 4), ValueError), ([], ValueError)],
)
def test_bad_images(images, error):
    with pytest.raises(error, match="images"):
        build_atlas(images)
