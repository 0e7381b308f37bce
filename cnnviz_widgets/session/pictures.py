"""The pictures a session shows and the inputs its model reads: what the preprocessing does, measured.

Overlays are drawn on the picture the user knows, so the session must know which part of it the
preprocessing hands the model (its crop, :func:`input_crop_box`) and how it maps pixels to the model's
input (its normalisation, :func:`normalization_of`, which filter patterns invert). Both are read off the
preprocessing by feeding it pictures whose pixels say where they came from, never guessed from its type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..render import to_picture
from ..sources import PictureSource, picture_source


def tensor_picture(x: Tensor) -> Image.Image:
    """A model input (C, H, W) -> a picture, each channel min-max scaled: used when no picture was given."""
    pixels = x.detach().float().cpu()
    low = pixels.amin(dim=(1, 2), keepdim=True)
    high = pixels.amax(dim=(1, 2), keepdim=True)
    return to_picture(((pixels - low) / (high - low).clamp(min=1e-12)).numpy())


def _first_channel(output) -> np.ndarray:
    tensor = output if isinstance(output, Tensor) else torch.as_tensor(np.asarray(output))
    while tensor.ndim > 3:
        tensor = tensor[0]
    if tensor.ndim == 2:
        tensor = tensor[None]
    return tensor[0].detach().float().cpu().numpy()


def input_crop_box(preprocess: Callable, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part ``(left, top, right, bottom)`` of a picture of ``size`` that ``preprocess`` hands the model.

    Preprocessing usually resizes and centre-crops; overlays must be drawn on that crop, not on the whole
    picture. The crop is measured, not guessed: ``preprocess`` is run on black, white and two ramp pictures,
    and the ramps' values at the output's borders say which input columns and rows they came from. Whatever
    the pipeline does with colours (normalisation, inversion, greyscale) is an affine map per channel and
    cancels out. A pipeline this cannot read (random crops, non-picture outputs) gets the whole picture.
    """
    width, height = size
    whole = (0.0, 0.0, float(width), float(height))
    if width < 2 or height < 2:
        return whole
    ramp_x = np.broadcast_to(np.linspace(0, 255, width).round().astype(np.uint8)[None, :, None], (height, width, 3))
    ramp_y = np.broadcast_to(np.linspace(0, 255, height).round().astype(np.uint8)[:, None, None], (height, width, 3))
    try:
        black, white, along_x, along_y = (
            _first_channel(preprocess(Image.fromarray(np.ascontiguousarray(array))))
            for array in (np.zeros((height, width, 3), np.uint8), np.full((height, width, 3), 255, np.uint8), ramp_x, ramp_y)
        )
    except Exception:  # noqa: BLE001 - an unreadable pipeline only costs the overlay its crop
        return whole
    scale = white - black
    if black.shape != along_x.shape or np.abs(scale).min() < 1e-6:
        return whole
    fraction_x = ((along_x - black) / scale).mean(axis=0)
    fraction_y = ((along_y - black) / scale).mean(axis=1)
    left, right = _span(fraction_x, width)
    top, bottom = _span(fraction_y, height)
    if not (right > left + 1 and bottom > top + 1):
        return whole
    return (left, top, right, bottom)


def _span(fractions: np.ndarray, length: int) -> tuple[float, float]:
    """Input interval covered by an output row whose pixels read ``fractions`` of a 0..1 ramp over ``length``."""
    count = len(fractions)
    # Output pixel j samples input position start + (j + 0.5) * step; the ramp reads (position - 0.5) / (length - 1).
    first, last = fractions[0] * (length - 1) + 0.5, fractions[-1] * (length - 1) + 0.5
    step = (last - first) / max(count - 1, 1)
    start = first - 0.5 * step
    return float(np.clip(start, 0, length)), float(np.clip(start + step * count, 0, length))


def normalization_of(preprocess, size: tuple[int, int] = (32, 32)):
    """``(mean, std)`` per channel such that the model input is ``(pixels - mean) / std``, read off ``preprocess``.

    Feeding a black and a white picture gives ``-mean / std`` and ``(1 - mean) / std``; a pipeline that
    inverts the picture has a negative std. None when white and black come out the same in a channel.
    """
    try:
        black, white = (preprocess(Image.new("RGB", size, colour)) for colour in ((0, 0, 0), (255, 255, 255)))
        black, white = (torch.as_tensor(t).float().reshape(-1, *torch.as_tensor(t).shape[-3:])[0] for t in (black, white))
    except Exception:  # noqa: BLE001 - the patterns fall back to the method's default normalisation
        return None
    low, high = black.mean(dim=(1, 2)), white.mean(dim=(1, 2))
    span = high - low
    if (span.abs() <= 1e-6).any():
        return None
    std = 1.0 / span
    mean = -low * std
    return tuple(mean.tolist()), tuple(std.tolist())


def pictures_of(images, preprocess) -> tuple[Sequence, list[Tensor] | None]:
    """``(pictures, inputs)``; inputs is None unless the images were given as model inputs already."""
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1] in (1, 3) and preprocess is None:
        images = torch.from_numpy(images)
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(f"images: a tensor of images must be (N, C, H, W), got shape {tuple(images.shape)}")
        inputs = [image.unsqueeze(0) for image in images.detach().float()]
        pictures = PictureSource([str(i) for i in range(len(inputs))], lambda index: tensor_picture(inputs[index][0]))
        return pictures, inputs
    return picture_source(images), None


