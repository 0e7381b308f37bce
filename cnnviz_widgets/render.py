"""Turn maps, gradients and weights into pictures: colormaps, overlays, grids of tiles, PNG bytes.

Pure array work (NumPy and Pillow; matplotlib only for its colormap tables). Every function returns an
``(H, W, 3)`` uint8 RGB array, except :func:`to_png`, which encodes one.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch import Tensor

SCALINGS = ("per_map", "shared")
THUMBNAIL_SIDE = 64
MAP_TILE_SIDE = 56
MAP_COLUMNS = 8
GRID_PADDING = 2
PATCH_FILLS = ("black", "grey", "image mean", "blurred")
FILL_BLUR_RADIUS = 8.0
"""Radius of the blur that shows the "blurred" patch fill on the picture (the model's input is blurred
with the same sigma, see ``methods.occlusion.BLUR_SIGMA``)."""


def _array(values) -> np.ndarray:
    """A tensor (any device) or array-like -> float64 NumPy array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


@lru_cache(maxsize=None)
def colormap(name: str = "viridis") -> np.ndarray:
    """matplotlib's colormap ``name`` as a ``(256, 3)`` uint8 table."""
    from matplotlib import colormaps

    if name not in colormaps:
        raise ValueError(f"cmap: unknown colormap {name!r}; use a matplotlib name such as 'viridis', 'jet', 'magma'")
    table = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    table = np.round(table * 255).astype(np.uint8)
    table.setflags(write=False)
    return table


def scale_to_unit(values, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Min-max scale to [0, 1] (``low``/``high`` default to the values' own range); a constant map gives zeros."""
    values = _array(values)
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    if not high > low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def apply_colormap(values, cmap: str = "viridis", low: float | None = None, high: float | None = None) -> np.ndarray:
    """An ``(h, w)`` map -> ``(h, w, 3)`` uint8 colours, scaled between ``low`` and ``high`` (default: its range)."""
    values = _array(values)
    if values.ndim != 2:
        raise ValueError(f"values: expected an (h, w) map, got shape {values.shape}")
    index = np.round(scale_to_unit(values, low, high) * 255).astype(np.intp)
    return colormap(cmap)[index]


def to_picture(item) -> Image.Image:
    """Any picture a user may hold -> an RGB PIL image; the one converter of the package.

    A PIL image; or an array or tensor ``(H, W)``, ``(H, W, 1|3|4)`` or ``(1|3, H, W)``: uint8 as it is,
    floats in [0, 1] as they are, any other floats (e.g. a normalised input) min-max scaled to [0, 1].
    """
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    # Tensors are channels-first by torch's convention; arrays only when their last axis cannot be channels.
    channels_first = isinstance(item, Tensor) and item.ndim == 3 and item.shape[0] in (1, 3)
    if isinstance(item, Tensor):
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray):
        raise TypeError(f"picture: expected a PIL image, an array or a tensor, got {type(item).__name__}")
    array = item
    if array.ndim == 3 and array.shape[0] in (1, 3) and (channels_first or array.shape[-1] not in (1, 3, 4)):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(
            f"picture: expected (H, W), (H, W, 1|3|4) or (1|3, H, W), got an array of shape {item.shape}"
        )
    if array.dtype != np.uint8:
        values = np.nan_to_num(array.astype(np.float64))
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        array = np.round(values * 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def to_rgb(picture) -> np.ndarray:
    """A picture (see :func:`to_picture`) as an ``(H, W, 3)`` uint8 array."""
    if isinstance(picture, np.ndarray) and picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3:
        return picture
    return np.asarray(to_picture(picture))


def resize(picture: np.ndarray, height: int, width: int, smooth: bool = True) -> np.ndarray:
    """Resize an ``(h, w, 3)`` uint8 picture; ``smooth=False`` keeps hard pixel edges (for small maps)."""
    if picture.shape[:2] == (height, width):
        return picture
    method = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(picture).resize((width, height), method))


def overlay(picture, heatmap, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """The heatmap (values in [0, 1], any size) coloured and laid over the picture with opacity ``alpha``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    base = to_rgb(picture)
    heat = _array(heatmap)
    if heat.ndim != 2:
        raise ValueError(f"heatmap: expected an (h, w) map, got shape {heat.shape}")
    coloured = resize(apply_colormap(heat, cmap, 0.0, 1.0), *base.shape[:2])
    blended = (1.0 - alpha) * base + alpha * coloured.astype(np.float64)
    return np.round(blended).astype(np.uint8)


def gradient_image(gradients, percentile: float = 99.0) -> np.ndarray:
    """A ``(C, H, W)`` input gradient (guided backprop) as a picture: zero is mid-grey, signs go bright or dark.

    Scaled by the ``percentile`` of the absolute values, so a few extreme pixels do not flatten the rest.
    """
    values = _array(gradients)
    if values.ndim != 3:
        raise ValueError(f"gradients: expected (C, H, W), got shape {values.shape}")
    values = values.transpose(1, 2, 0)
    if values.shape[2] != 3:
        values = values.mean(axis=2)
    bound = float(np.percentile(np.abs(values), percentile))
    if bound == 0.0:
        return to_rgb(np.full(values.shape[:2], 0.5))
    return to_rgb(0.5 + 0.5 * np.clip(values / bound, -1.0, 1.0))


def grid_shape(count: int, columns: int | None = None) -> tuple[int, int]:
    """``(rows, columns)`` for ``count`` tiles; about square when ``columns`` is None."""
    if columns is None:
        columns = max(1, math.ceil(math.sqrt(count)))
    if columns < 1:
        raise ValueError(f"columns: expected a positive int, got {columns}")
    return max(1, math.ceil(count / columns)), columns


def arrange(tiles: np.ndarray, columns: int | None = None, padding: int = 1, background: int = 255) -> np.ndarray:
    """Lay ``(N, h, w, 3)`` uint8 tiles out row by row, ``padding`` pixels apart."""
    count, height, width, _ = tiles.shape
    rows, columns = grid_shape(count, columns)
    canvas = np.full(
        (rows * height + (rows - 1) * padding, columns * width + (columns - 1) * padding, 3), background, np.uint8
    )
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        top, left = row * (height + padding), column * (width + padding)
        canvas[top : top + height, left : left + width] = tile
    return canvas


def tile_maps(
    maps,
    columns: int | None = None,
    scaling: str = "per_map",
    cmap: str = "viridis",
    zoom: int = 1,
    padding: int = 1,
) -> np.ndarray:
    """A grid of feature maps ``(N, h, w)``, each coloured with ``cmap``.

    scaling: "per_map" stretches each map over the full colour range (shows every map's structure);
        "shared" uses one range for all (shows which maps are strong).
    zoom: each map pixel becomes a ``zoom x zoom`` block, so small maps stay readable.
    """
    values = _array(maps)
    if values.ndim != 3:
        raise ValueError(f"maps: expected (N, h, w), got shape {values.shape}")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling: expected one of {SCALINGS}, got {scaling!r}")
    low, high = (float(values.min()), float(values.max())) if scaling == "shared" else (None, None)
    tiles = np.stack([apply_colormap(single, cmap, low, high) for single in values])
    tiles = tiles.repeat(zoom, axis=1).repeat(zoom, axis=2)
    return arrange(tiles, columns, padding)


def filter_tiles(weights, zoom: int = 8, padding: int = 1, cmap: str = "RdBu_r") -> np.ndarray:
    """Conv weights ``(out, in, kh, kw)`` as tiles.

    Three input channels: one colour tile per filter (the weights of the R, G, B inputs as the tile's
    R, G, B), scaled together so filters compare. Otherwise: one row per filter, one tile per input
    channel, in a diverging colormap centred on zero.
    """
    values = _array(weights)
    if values.ndim != 4:
        raise ValueError(f"weights: expected (out, in, kh, kw), got shape {values.shape}")
    # One symmetric range for all filters, so that zero weights sit mid-range and filters compare.
    bound = float(np.abs(values).max()) or 1.0
    if values.shape[1] == 3:
        unit = 0.5 + 0.5 * values / bound
        tiles = np.stack([to_rgb(single.transpose(1, 2, 0)) for single in unit])
        tiles = tiles.repeat(zoom, axis=1).repeat(zoom, axis=2)
        return arrange(tiles, None, padding)
    count, inputs = values.shape[:2]
    flat = values.reshape(count * inputs, *values.shape[2:])
    tiles = np.stack([apply_colormap(single, cmap, -bound, bound) for single in flat])
    tiles = tiles.repeat(zoom, axis=1).repeat(zoom, axis=2)
    return arrange(tiles, inputs, padding)


def to_png(picture) -> bytes:
    """Encode a picture (see :func:`to_rgb`) as PNG bytes, ready for ``ipywidgets.Image(value=...)``."""
    stream = io.BytesIO()
    Image.fromarray(to_rgb(picture)).save(stream, format="PNG")
    return stream.getvalue()


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
    return tile_maps(small, columns=min(columns, len(small)), scaling=scaling, cmap=cmap, zoom=zoom, padding=GRID_PADDING), zoom


def enlarged_map(single: Tensor, cmap: str, side: int = 256, low: float | None = None, high: float | None = None) -> np.ndarray:
    """One feature map coloured and blown up to about ``side`` pixels with hard pixel edges."""
    coloured = apply_colormap(single, cmap, low, high)
    zoom = max(1, side // max(coloured.shape[:2]))
    return coloured.repeat(zoom, axis=0).repeat(zoom, axis=1)


def thumbnail(picture: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """A picture's thumbnail as PNG, at most ``side`` pixels on its long side."""
    small = picture.copy()
    small.thumbnail((side, side), Image.Resampling.LANCZOS if max(picture.size) > side else Image.Resampling.NEAREST)
    if max(small.size) < side // 2:
        factor = side // max(small.size)
        small = small.resize((small.width * factor, small.height * factor), Image.Resampling.NEAREST)
    return to_png(np.asarray(small))


def baseline_view(view: np.ndarray, kind: str) -> np.ndarray:
    """What fills an occluding patch, as the user sees it (uint8 RGB the size of ``view``)."""
    if kind == "black":
        return np.zeros_like(view)
    if kind == "grey":
        return np.full_like(view, 128)
    if kind == "image mean":
        return np.broadcast_to(view.reshape(-1, 3).mean(axis=0).round().astype(np.uint8), view.shape).copy()
    if kind == "blurred":
        return np.asarray(Image.fromarray(view).filter(ImageFilter.GaussianBlur(FILL_BLUR_RADIUS)))
    raise ValueError(f"baseline: expected one of {PATCH_FILLS}, got {kind!r}")


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
    coloured = apply_colormap(scores, cmap)
    zoom = max(1, side // max(coloured.shape[:2]))
    return coloured.repeat(zoom, axis=0).repeat(zoom, axis=1)


def colour_bar(cmap: str, width: int = 224, height: int = 12) -> np.ndarray:
    """A horizontal strip of the colormap, low values on the left."""
    ramp = np.tile(np.linspace(0.0, 1.0, width), (height, 1))
    return apply_colormap(ramp, cmap, 0.0, 1.0)


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
        row += [resize(picture, height, round(picture.shape[1] * height / picture.shape[0])), spacer]
    return np.concatenate(row[:-1], axis=1)


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


CURVE_COLORS = {
    "deletion": (198, 40, 40),
    "insertion": (25, 118, 210),
    "rank correlation": (106, 27, 154),
    "SSIM": (46, 125, 50),
}


def curves_picture(curves: dict, width: int = 160, height: int = 56, padding: int = 3) -> np.ndarray:
    """Small line plots of curves in [0, 1] over [0, 1] (e.g. ``{"deletion": p, "insertion": q}``) on white,
    each in its ``CURVE_COLORS`` colour, with a grey frame: a sparkline, labelled by the caption under it."""
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[[0, -1], :] = canvas[:, [0, -1]] = 200
    inner_w, inner_h = width - 2 * padding, height - 2 * padding
    for name, values in curves.items():
        values = np.clip(_array(values).reshape(-1), 0.0, 1.0)
        xs = padding + np.linspace(0, inner_w - 1, len(values))
        ys = padding + (1.0 - values) * (inner_h - 1)
        # Dense samples along each segment draw the line without a plotting library.
        for (x0, y0), (x1, y1) in zip(zip(xs[:-1], ys[:-1]), zip(xs[1:], ys[1:])):
            steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 2
            columns = np.round(np.linspace(x0, x1, steps)).astype(int)
            rows = np.round(np.linspace(y0, y1, steps)).astype(int)
            for offset in (0, 1):
                canvas[np.clip(rows + offset, 0, height - 1), columns] = CURVE_COLORS.get(name, (0, 0, 0))
    return canvas


PLACEHOLDER_BACKGROUND = (236, 236, 236)
PLACEHOLDER_INK = (80, 80, 80)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        # Pillow before 10.1 has only its small bitmap font, which takes no size.
        return ImageFont.load_default()


def placeholder(width: int, height: int, text: str, font_size: int = 13) -> np.ndarray:
    """A light grey ``(height, width, 3)`` picture with ``text`` centred on it in dark grey, one line per
    ``\n``: what a view shows, at its picture's size, where that picture is still being computed."""
    canvas = Image.new("RGB", (width, height), PLACEHOLDER_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, spacing=4, align="center")
    origin = ((width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top)
    draw.multiline_text(origin, text, fill=PLACEHOLDER_INK, font=font, spacing=4, align="center")
    return np.asarray(canvas)


def strip(pictures: list[np.ndarray], side: int = 96, gap: int = 4) -> np.ndarray:
    """Pictures in a row, each fitted into a ``side``-pixel square, white between them."""
    tiles = np.stack([resize(to_rgb(picture), side, side) for picture in pictures])
    return arrange(tiles, columns=len(tiles), padding=gap)


def enlarged(picture: np.ndarray, side: int) -> np.ndarray:
    """A picture smaller than ``side`` blown up by a whole factor with hard pixel edges (an 8 x 8 digit stays
    sharp), before it is fitted into ``side``."""
    factor = side // max(picture.shape[:2])
    return picture.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else picture


def fitted_size(shape: tuple[int, ...], side: int) -> tuple[int, int]:
    """``(height, width)`` of a picture of ``shape`` ``(H, W, ...)`` scaled so that its long side is ``side``."""
    height, width = shape[:2]
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))
