"""Sprite atlases: every image of a dataset as a thumbnail in one grid picture, row-major.

Both the 3D scatter (hover thumbnails) and TensorBoard's Embedding Projector read a point's picture from such
an atlas: thumbnail ``i`` sits at column ``i % columns``, row ``i // columns``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from .render import to_picture
from .sources import PictureSource

BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class Atlas:
    image: Image.Image
    thumbnail_size: int
    columns: int
    count: int

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()


def pictures(images) -> Sequence[Image.Image]:
    """Images in any usual form -> RGB PIL images.

    Accepts a tensor (N, C, H, W) (values in [0, 1], or anything else, min-max scaled per image), a numpy
    array (N, H, W), (N, H, W, C) or (N, C, H, W), a sequence of PIL images / arrays, or a
    :class:`~cnnviz_widgets.sources.PictureSource`, whose pictures stay on disk until each is drawn.
    """
    if isinstance(images, PictureSource):
        return images
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images: expected a tensor (N, C, H, W), got shape {tuple(images.shape)}")
        images = list(images.detach().cpu())
    elif isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ValueError(f"images: expected an array of images (N, H, W[, C]), got shape {images.shape}")
        images = list(images)
    if not isinstance(images, (list, tuple)):
        raise TypeError(
            f"images: expected a tensor, a numpy array or a list of PIL images / arrays, got {type(images).__name__}"
        )
    converted = []
    for index, image in enumerate(images):
        try:
            converted.append(to_picture(image))
        except (TypeError, ValueError) as error:
            raise ValueError(f"images: image {index}: {error}") from None
    return converted


def build_atlas(images, thumbnail_size: int = 32, max_side: int = 8192) -> Atlas:
    """Tile every image, letterboxed to a square thumbnail, into one atlas at most ``max_side`` pixels wide.

    Thumbnails shrink below ``thumbnail_size`` when needed to fit all of them.
    """
    tiles = pictures(images)
    if not len(tiles):
        raise ValueError("images: no images given")
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    size = min(thumbnail_size, max_side // columns)
    if size < 1:
        raise ValueError(f"images: {len(tiles)} thumbnails cannot fit in a {max_side}-pixel atlas")
    atlas = Image.new("RGB", (columns * size, rows * size), BACKGROUND)
    # One picture at a time: a folder of 50,000 photos is never decoded all at once.
    for index in range(len(tiles)):
        tile = tiles[index]
        thumbnail = ImageOps.pad(tile, (size, size), method=Image.Resampling.BILINEAR, color=BACKGROUND)
        atlas.paste(thumbnail, ((index % columns) * size, (index // columns) * size))
    return Atlas(image=atlas, thumbnail_size=size, columns=columns, count=len(tiles))
