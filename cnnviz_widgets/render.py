"""Turn maps, gradients and weights into pictures: colormaps, overlays, grids of tiles, PNG bytes.

Pure array work (NumPy and Pillow; matplotlib only for its colormap tables). Every function returns an
``(H, W, 3)`` uint8 RGB array, except :func:`to_png`, which encodes one.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
from PIL import Image

SCALINGS = ("per_map", "shared")


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


def to_rgb(picture) -> np.ndarray:
    """A PIL image, an ``(H, W)`` / ``(H, W, 3|4)`` uint8 array or an ``(H, W, 3)`` float array in [0, 1]
    -> ``(H, W, 3)`` uint8."""
    if isinstance(picture, Image.Image):
        return np.asarray(picture.convert("RGB"))
    array = np.asarray(picture)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"picture: expected (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    return array


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
