"""Pure picture helpers for the panels: sizes, hit tests, thumbnails, patches, labels (no widget code).

The colour work itself lives in :mod:`cnnviz_widgets.render`; this module decides what to draw where.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import Tensor

from .. import render

THUMBNAIL_SIDE = 64
MAP_TILE_SIDE = 56
MAP_COLUMNS = 8
GRID_PADDING = 2
BASELINES = ("black", "grey", "image mean", "blurred")
BLUR_RADIUS = 8.0


def shrink_maps(maps: Tensor, side: int = MAP_TILE_SIDE) -> Tensor:
    """Feature maps ``(N, h, w)`` no larger than ``side`` pixels: area-averaged, so a big grid stays a small PNG."""
    height, width = maps.shape[-2:]
    if max(height, width) <= side:
        return maps
    factor = side / max(height, width)
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    return F.adaptive_avg_pool2d(maps.float().unsqueeze(0), size)[0]


def map_zoom(maps: Tensor, side: int = MAP_TILE_SIDE) -> int:
    """Integer zoom that brings small maps (e.g. 7x7) up to about ``side`` pixels."""
    return max(1, side // max(maps.shape[-2:]))


def feature_grid(maps: Tensor, scaling: str, cmap: str, columns: int = MAP_COLUMNS) -> tuple[np.ndarray, int]:
    """The maps as a grid picture; returns ``(picture, zoom)``. Shared scaling uses the range of all maps shown."""
    small = shrink_maps(maps)
    zoom = map_zoom(small)
    return render.tile_maps(small, columns=min(columns, len(small)), scaling=scaling, cmap=cmap, zoom=zoom, padding=GRID_PADDING), zoom


def tile_at(x: float, y: float, count: int, columns: int) -> int | None:
    """Which tile of a grid of ``count`` tiles (row-major, ``columns`` wide) holds the point (x, y) in 0..1."""
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    column = min(int(x * columns), columns - 1)
    row = min(int(y * rows), rows - 1)
    index = row * columns + column
    return index if index < count else None


def enlarged_map(single: Tensor, cmap: str, side: int = 256, low: float | None = None, high: float | None = None) -> np.ndarray:
    """One feature map coloured and blown up to about ``side`` pixels with hard pixel edges."""
    coloured = render.apply_colormap(single, cmap, low, high)
    zoom = max(1, side // max(coloured.shape[:2]))
    return coloured.repeat(zoom, axis=0).repeat(zoom, axis=1)


def thumbnail(picture: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """A picture's thumbnail as PNG, at most ``side`` pixels on its long side."""
    small = picture.copy()
    small.thumbnail((side, side), Image.Resampling.LANCZOS if max(picture.size) > side else Image.Resampling.NEAREST)
    if max(small.size) < side // 2:
        factor = side // max(small.size)
        small = small.resize((small.width * factor, small.height * factor), Image.Resampling.NEAREST)
    return render.to_png(np.asarray(small))


def percent(probability: float) -> str:
    """A probability as a percentage that stays informative for tiny values (0.0031% rather than 0.0%)."""
    return f"{probability:.1%}" if probability >= 0.001 or probability == 0 else f"{probability * 100:.2g}%"


def probability_label(name: str, probability: float) -> str:
    return f"{name} — {percent(probability)}"


def baseline_view(view: np.ndarray, kind: str) -> np.ndarray:
    """What fills an occluding patch, as the user sees it (uint8 RGB the size of ``view``)."""
    if kind == "black":
        return np.zeros_like(view)
    if kind == "grey":
        return np.full_like(view, 128)
    if kind == "image mean":
        return np.broadcast_to(view.reshape(-1, 3).mean(axis=0).round().astype(np.uint8), view.shape).copy()
    if kind == "blurred":
        return np.asarray(Image.fromarray(view).filter(ImageFilter.GaussianBlur(BLUR_RADIUS)))
    raise ValueError(f"baseline: expected one of {BASELINES}, got {kind!r}")


def baseline_input(x: Tensor, kind: str, preprocessed_black: Tensor, preprocessed_grey: Tensor) -> Tensor:
    """The same fill in the model's input space: black and grey pass through the preprocessing, like the picture."""
    if kind == "black":
        return preprocessed_black.expand_as(x)
    if kind == "grey":
        return preprocessed_grey.expand_as(x)
    if kind == "image mean":
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    if kind == "blurred":
        return blur(x)
    raise ValueError(f"baseline: expected one of {BASELINES}, got {kind!r}")


def blur(x: Tensor, sigma: float = BLUR_RADIUS) -> Tensor:
    """Gaussian blur of ``(1, C, H, W)`` per channel, edges replicated."""
    radius = int(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x)
    channels = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def patch_box(x: float, y: float, window: int, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a ``window``-pixel patch centred at (x, y) in 0..1, kept inside the picture."""
    window_h, window_w = min(window, height), min(window, width)
    top = int(round(y * height - window_h / 2))
    left = int(round(x * width - window_w / 2))
    top = min(max(top, 0), height - window_h)
    left = min(max(left, 0), width - window_w)
    return top, top + window_h, left, left + window_w


def occluded(picture, fill, box: tuple[int, int, int, int]):
    """A copy of ``picture`` (array ``(H, W, C)`` or tensor ``(1, C, H, W)``) with ``box`` taken from ``fill``."""
    top, bottom, left, right = box
    if isinstance(picture, Tensor):
        result = picture.clone()
        result[..., top:bottom, left:right] = fill[..., top:bottom, left:right]
        return result
    result = picture.copy()
    result[top:bottom, left:right] = fill[top:bottom, left:right]
    return result


def outlined(view: np.ndarray, box: tuple[int, int, int, int], colour=(255, 255, 255), thickness: int = 2) -> np.ndarray:
    """The picture with a rectangle drawn around ``box``, so the patch shows whatever its fill."""
    result = view.copy()
    top, bottom, left, right = box
    result[top : top + thickness, left:right] = colour
    result[bottom - thickness : bottom, left:right] = colour
    result[top:bottom, left : left + thickness] = colour
    result[top:bottom, right - thickness : right] = colour
    return result


def scores_picture(scores: Tensor, cmap: str, side: int = 224) -> np.ndarray:
    """The occlusion scores grid (rows, cols) in colour, from its lowest (dark) to its highest value, blown up to ``side``."""
    coloured = render.apply_colormap(scores, cmap)
    zoom = max(1, side // max(coloured.shape[:2]))
    return coloured.repeat(zoom, axis=0).repeat(zoom, axis=1)


def colour_bar(cmap: str, width: int = 224, height: int = 12) -> np.ndarray:
    """A horizontal strip of the colormap, low values on the left."""
    ramp = np.tile(np.linspace(0.0, 1.0, width), (height, 1))
    return render.apply_colormap(ramp, cmap, 0.0, 1.0)


def probability_bars_html(ranked: list[tuple[str, float]], reference: dict[str, float] | None = None) -> str:
    """Top classes as labelled bars; with ``reference`` (the intact image's probabilities) the change is shown."""
    rows = []
    for name, probability in ranked:
        change = ""
        if reference is not None and name in reference:
            delta = probability - reference[name]
            change = f" <span style='color:{'#2e7d32' if delta >= 0 else '#c62828'}'>({delta:+.1%})</span>"
        rows.append(
            "<div style='margin:2px 0'>"
            f"<div style='font-size:12px;white-space:nowrap'>{escape(name)}: {percent(probability)}{change}</div>"
            "<div style='background:#e0e0e0;width:200px;height:8px'>"
            f"<div style='background:#1976d2;width:{probability * 200:.0f}px;height:8px'></div></div></div>"
        )
    return "".join(rows)


def escape(text) -> str:
    """Text safe to put in an HTML widget."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def normalization_of(preprocess, size: tuple[int, int] = (32, 32)):
    """``(mean, std)`` per channel such that the model input is ``(pixels - mean) / std``, read off ``preprocess``.

    Feeding a black and a white picture gives ``-mean / std`` and ``(1 - mean) / std``. None when the
    pipeline is not of that form with a positive std (e.g. it inverts the picture).
    """
    try:
        black, white = (
            preprocess(Image.new("RGB", size, colour)) for colour in ((0, 0, 0), (255, 255, 255))
        )
        black, white = (torch.as_tensor(t).float().reshape(-1, *torch.as_tensor(t).shape[-3:])[0] for t in (black, white))
    except Exception:  # noqa: BLE001 - the patterns fall back to the method's default normalisation
        return None
    low, high = black.mean(dim=(1, 2)), white.mean(dim=(1, 2))
    span = high - low
    if (span <= 1e-6).any():
        return None
    std = 1.0 / span
    mean = -low * std
    return tuple(mean.tolist()), tuple(std.tolist())


def points_picture(points: np.ndarray, colour_indices: np.ndarray, palette: list[str], side: int = 480, radius: int = 2) -> np.ndarray:
    """Projected points seen from the front (first two coordinates) as a white picture, each point a dot in its colour."""
    canvas = np.full((side, side, 3), 255, np.uint8)
    xy = points[:, :2].astype(np.float64)
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    margin = radius + 4
    pixels = np.round(margin + (xy - low) / span * (side - 1 - 2 * margin)).astype(int)
    pixels[:, 1] = side - 1 - pixels[:, 1]
    colours = np.array([[int(code[i : i + 2], 16) for i in (1, 3, 5)] for code in palette] or [[0, 0, 0]], np.uint8)
    for (column, row), colour in zip(pixels, colours[np.clip(colour_indices, 0, len(colours) - 1)]):
        canvas[row - radius : row + radius + 1, column - radius : column + radius + 1] = colour
    return canvas


def side_by_side(pictures: list[np.ndarray], gap: int = 8) -> np.ndarray:
    """Pictures of one height in a row, white between them (what Save as PNG writes)."""
    height = max(picture.shape[0] for picture in pictures)
    spacer = np.full((height, gap, 3), 255, np.uint8)
    row = []
    for picture in pictures:
        row += [render.resize(picture, height, round(picture.shape[1] * height / picture.shape[0])), spacer]
    return np.concatenate(row[:-1], axis=1)
