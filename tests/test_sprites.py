"""Sprite atlases from every usual form of image batch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz_widgets.sprites import AtlasBuilder, build_atlas, pictures

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


def test_an_atlas_filled_batch_by_batch_in_any_order_is_the_atlas_of_the_pictures():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)) for _ in range(7)]
    builder = AtlasBuilder(len(images), thumbnail_size=8)
    for start in (4, 0, 2):
        builder.add(start, images[start : start + 3 if start < 4 else None])
    built, expected = builder.atlas(), build_atlas(images, thumbnail_size=8)
    assert (built.count, built.columns, built.thumbnail_size) == (7, 3, 8)
    np.testing.assert_array_equal(np.asarray(built.image), np.asarray(expected.image))
    assert build_atlas(built, thumbnail_size=8) is built, "an atlas made beforehand is used as it is"


def test_an_atlas_is_given_only_once_every_picture_is_in_it():
    builder = AtlasBuilder(3, thumbnail_size=8)
    builder.add(0, [Image.new("RGB", (4, 4), RED)] * 2)
    with pytest.raises(ValueError, match="images: 1 of 3 images not tiled yet, e.g. image 2"):
        builder.atlas()
    with pytest.raises(ValueError, match="start: images 2..3 given for an atlas of 3"):
        builder.add(2, [Image.new("RGB", (4, 4), RED)] * 2)


def test_an_atlas_made_beforehand_with_larger_thumbnails_is_refused():
    atlas = build_atlas([Image.new("RGB", (4, 4), RED)] * 2, thumbnail_size=16)
    with pytest.raises(ValueError, match="images: an atlas of 16-pixel thumbnails"):
        build_atlas(atlas, thumbnail_size=8)


def test_the_png_is_encoded_once_and_decodes_to_the_atlas(monkeypatch):
    atlas = build_atlas([Image.new("RGB", (6, 4), RED), Image.new("RGB", (4, 4), (0, 0, 255))], thumbnail_size=4)
    saves = []
    save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda image, *args, **kwargs: saves.append(1) or save(image, *args, **kwargs))
    first, second = atlas.png(), atlas.png()
    assert len(saves) == 1 and second is first
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(first))), np.asarray(atlas.image))
