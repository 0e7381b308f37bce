"""Sprite atlases: every image of a dataset as a thumbnail in one grid picture, row-major.

Both the 3D scatter (hover thumbnails) and TensorBoard's Embedding Projector read a point's picture from such
an atlas: thumbnail ``i`` sits at column ``i % columns``, row ``i // columns``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from PIL import Image, ImageOps

from .render import to_picture
from .sources import PictureSource

BACKGROUND = (255, 255, 255)
HOVER_THUMBNAIL_SIZE = 48
"""Side of a hover thumbnail in the 3D scatter, pixels (smaller when that many do not fit)."""
HOVER_MAX_SIDE = 4096
"""The 3D scatter's atlas stays below this side, so that one PNG carries tens of thousands of thumbnails."""


@dataclass(frozen=True)
class Atlas:
    image: Image.Image
    thumbnail_size: int
    columns: int
    count: int

    def png(self) -> bytes:
        """The atlas as PNG, encoded on the first call: photos barely compress, and 3,000 thumbnails of 48
        pixels (12 MB of PNG) took 1.2 to 3 s to encode, which a pass can spend before anyone asks."""
        return self._png

    @cached_property
    def _png(self) -> bytes:
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


class AtlasBuilder:
    """An atlas filled as the pictures come, in batches: a pass over a folder decodes every picture for the
    model anyway, and tiling them then spares reading the whole folder again for the thumbnails.

    ``add(start, pictures)`` tiles pictures ``start``, ``start + 1``, ...; ``atlas()`` gives the atlas once
    all ``count`` are in. Thumbnails shrink below ``thumbnail_size`` when needed to fit all of them in an
    atlas at most ``max_side`` pixels wide.
    """

    def __init__(self, count: int, thumbnail_size: int = 32, max_side: int = 8192):
        if count < 1:
            raise ValueError("images: no images given")
        self.count = count
        self.columns = math.ceil(math.sqrt(count))
        self.thumbnail_size = min(thumbnail_size, max_side // self.columns)
        if self.thumbnail_size < 1:
            raise ValueError(f"images: {count} thumbnails cannot fit in a {max_side}-pixel atlas")
        rows = math.ceil(count / self.columns)
        self._image = Image.new("RGB", (self.columns * self.thumbnail_size, rows * self.thumbnail_size), BACKGROUND)
        self._tiled = np.zeros(count, dtype=bool)

    def add(self, start: int, pictures) -> None:
        """Tile ``pictures`` (RGB PIL images) as images ``start``, ``start + 1``, ..."""
        if not 0 <= start <= self.count - len(pictures):
            raise ValueError(f"start: images {start}..{start + len(pictures) - 1} given for an atlas of {self.count}")
        size = self.thumbnail_size
        for index, picture in enumerate(pictures, start):
            thumbnail = ImageOps.pad(picture, (size, size), method=Image.Resampling.BILINEAR, color=BACKGROUND)
            self._image.paste(thumbnail, ((index % self.columns) * size, (index // self.columns) * size))
        self._tiled[start : start + len(pictures)] = True

    def atlas(self) -> Atlas:
        missing = np.flatnonzero(~self._tiled)
        if len(missing):
            raise ValueError(f"images: {len(missing)} of {self.count} images not tiled yet, e.g. image {missing[0]}")
        return Atlas(image=self._image, thumbnail_size=self.thumbnail_size, columns=self.columns, count=self.count)


def build_atlas(images, thumbnail_size: int = 32, max_side: int = 8192) -> Atlas:
    """Tile every image, letterboxed to a square thumbnail, into one atlas at most ``max_side`` pixels wide.

    Thumbnails shrink below ``thumbnail_size`` when needed to fit all of them. ``images`` may also be an
    :class:`Atlas` already made (by an :class:`AtlasBuilder` during a pass) within those sizes: it is used as
    it is.
    """
    if isinstance(images, Atlas):
        if images.thumbnail_size > thumbnail_size or images.image.width > max_side:
            raise ValueError(
                f"images: an atlas of {images.thumbnail_size}-pixel thumbnails, {images.image.width} pixels wide; "
                f"expected thumbnails of at most {thumbnail_size} pixels in at most {max_side}"
            )
        return images
    tiles = pictures(images)
    if not len(tiles):
        raise ValueError("images: no images given")
    builder = AtlasBuilder(len(tiles), thumbnail_size, max_side)
    # One picture at a time: a folder of 50,000 photos is never decoded all at once.
    for index in range(len(tiles)):
        builder.add(index, [tiles[index]])
    return builder.atlas()
