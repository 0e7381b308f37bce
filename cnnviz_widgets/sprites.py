"""Sprite atlases: every image of a dataset as a thumbnail in one grid picture, row-major.

Both the 3D scatter (hover thumbnails) and TensorBoard's Embedding Projector read a point's picture from such
an atlas: thumbnail ``i`` sits at column ``i % columns``, row ``i // columns``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

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


def _scaled_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float pixels -> uint8; [0, 1] is kept as is, anything else (e.g. normalised input) min-max scaled."""
    pixels = pixels.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 1:
        pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    return np.round(pixels * 255).astype(np.uint8)


def _picture(item, index: int, channels_first: bool) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    pixels = np.asarray(item)
    if pixels.ndim == 3 and channels_first:
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
        raise ValueError(
            f"images: image {index} has shape {np.asarray(item).shape}; expected (H, W), (H, W, C) or (C, H, W) "
            "with 1, 3 or 4 channels"
        )
    if pixels.dtype != np.uint8:
        pixels = _scaled_to_uint8(pixels)
    return Image.fromarray(pixels).convert("RGB")


def _channels_first(shape: tuple[int, ...]) -> bool:
    """Whether a 3-D image shape reads (C, H, W) rather than (H, W, C)."""
    return len(shape) == 3 and shape[0] in (1, 3) and shape[-1] not in (1, 3, 4)


def pictures(images) -> list[Image.Image]:
    """Images in any usual form -> RGB PIL images.

    Accepts a tensor (N, C, H, W) (values in [0, 1], or anything else, min-max scaled per image), a numpy
    array (N, H, W), (N, H, W, C) or (N, C, H, W), or a sequence of PIL images / arrays.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images: expected a tensor (N, C, H, W), got shape {tuple(images.shape)}")
        return [_picture(image, i, channels_first=True) for i, image in enumerate(images.detach().cpu().numpy())]
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ValueError(f"images: expected an array of images (N, H, W[, C]), got shape {images.shape}")
        channels_first = _channels_first(images.shape[1:])
        return [_picture(image, i, channels_first) for i, image in enumerate(images)]
    if isinstance(images, (list, tuple)):
        return [_picture(image, i, _channels_first(np.shape(image))) for i, image in enumerate(images)]
    raise TypeError(
        f"images: expected a tensor, a numpy array or a list of PIL images / arrays, got {type(images).__name__}"
    )


def build_atlas(images, thumbnail_size: int = 32, max_side: int = 8192) -> Atlas:
    """Tile every image, letterboxed to a square thumbnail, into one atlas at most ``max_side`` pixels wide.

    Thumbnails shrink below ``thumbnail_size`` when needed to fit all of them.
    """
    tiles = pictures(images)
    if not tiles:
        raise ValueError("images: no images given")
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    size = min(thumbnail_size, max_side // columns)
    if size < 1:
        raise ValueError(f"images: {len(tiles)} thumbnails cannot fit in a {max_side}-pixel atlas")
    atlas = Image.new("RGB", (columns * size, rows * size), BACKGROUND)
    for index, tile in enumerate(tiles):
        thumbnail = ImageOps.pad(tile, (size, size), method=Image.Resampling.BILINEAR, color=BACKGROUND)
        atlas.paste(thumbnail, ((index % columns) * size, (index // columns) * size))
    return Atlas(image=atlas, thumbnail_size=size, columns=columns, count=len(tiles))
