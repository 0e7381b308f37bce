"""Arrays -> the byte buffers and colour tables the 3D scatter sends to the browser (no widget code).

Per point the browser receives 12 bytes of float32 position, 1 byte of palette index and, when given, 2 bytes
of label and 2 of prediction (uint16 class indices) and 4 of score (float32): at most 21 bytes, whatever the
number of points.
"""

from __future__ import annotations

import colorsys

import numpy as np
from torch import Tensor

COLOR_BY = ("label", "prediction", "correct", "score")
NO_CLASS = np.iinfo(np.uint16).max
MAX_CLASSES = int(NO_CLASS)
# One byte of palette index per point; beyond 255 shown classes the least frequent share "other".
MAX_PALETTE = 256
OTHER_COLOR = "#b0b0b0"
SINGLE_COLOR = "#1f77b4"
CORRECT_COLOR = "#2ca02c"
WRONG_COLOR = "#d62728"
# Tableau 10 then the lighter half of Tableau 20: distinct hues first, for the usual 10 classes.
CATEGORICAL = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]
# Scores in [0, 1] fall into five equal bins, low to high: red where the score is low (for the agreement of
# two models' neighbourhoods: the models disagree), through amber, to green. Every step is saturated enough
# to stand out on the white background, which a light middle (ColorBrewer's RdYlGn) would not.
SCORE_EDGES = np.array([0.2, 0.4, 0.6, 0.8], dtype=np.float32)
SCORE_PALETTE = ["#d62728", "#f28e2b", "#e6b400", "#8cbf3f", "#2ca02c"]
SCORE_LEGEND = ["0–20%", "20–40%", "40–60%", "60–80%", "80–100%"]
# The golden angle spreads any number of further hues evenly around the colour wheel.
GOLDEN_ANGLE = 0.381966


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def positions(points) -> tuple[bytes, int]:
    """(N, 2) or (N, 3) points -> (float32 x, y, z bytes centred in the unit cube, original dimensions).

    Every axis is scaled by the same factor, so the cloud keeps its shape; 2-D points get z = 0.
    """
    array = _as_numpy(points).astype(np.float32, copy=False)
    if array.ndim != 2 or array.shape[1] not in (2, 3) or len(array) == 0:
        raise ValueError(f"points: expected an array of shape (N, 2) or (N, 3), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("points: contains NaN or infinite values")
    low, high = array.min(axis=0), array.max(axis=0)
    half_range = float((high - low).max()) / 2
    cube = (array - (low + high) / 2) / (half_range if half_range > 0 else 1.0)
    if array.shape[1] == 2:
        cube = np.column_stack([cube, np.zeros(len(cube), dtype=np.float32)])
    return np.ascontiguousarray(cube, dtype=np.float32).tobytes(), array.shape[1]


def classes(values, count: int, argument: str) -> bytes:
    """Per-point class indices -> uint16 bytes (empty when ``values`` is None)."""
    if values is None:
        return b""
    array = _as_numpy(values)
    if array.ndim != 1 or len(array) != count:
        raise ValueError(f"{argument}: expected {count} class indices (one per point), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{argument}: expected integer class indices, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= MAX_CLASSES):
        raise ValueError(f"{argument}: class indices must lie in 0..{MAX_CLASSES - 1}")
    return array.astype(np.uint16).tobytes()


def decode_classes(buffer: bytes) -> np.ndarray | None:
    return np.frombuffer(buffer, dtype=np.uint16) if buffer else None


def scores(values, count: int) -> bytes:
    """Per-point scores in [0, 1] -> float32 bytes (empty when ``values`` is None)."""
    if values is None:
        return b""
    array = _as_numpy(values)
    if array.ndim != 1 or len(array) != count:
        raise ValueError(f"scores: expected {count} scores (one per point), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"scores: expected numbers in [0, 1], got dtype {array.dtype}")
    finite = np.isfinite(array)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"scores: expected finite numbers in [0, 1], got {array[first]} at point {first}")
    outside = (array < 0) | (array > 1)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise ValueError(f"scores: expected numbers in [0, 1], got {array[first]} at point {first}")
    return array.astype(np.float32).tobytes()


def decode_scores(buffer: bytes) -> np.ndarray | None:
    return np.frombuffer(buffer, dtype=np.float32) if buffer else None


def score_bins(values: np.ndarray) -> np.ndarray:
    """float32 scores in [0, 1] -> bin 0..4 of the five equal bins; a score on an edge belongs to the bin above
    (0.2 to the second bin, 1.0 to the last).

    The comparison is between float32 values, so a float64 score a hair below an edge (``0.7 - 0.3``)
    counts as on it: shares like 5 of 10 neighbours land in their bin however they were computed.
    """
    return np.searchsorted(SCORE_EDGES, values.astype(np.float32), side="right").astype(np.uint8)


def categorical_palette(count: int) -> list[str]:
    """``count`` distinct colours as hex strings."""
    colours = CATEGORICAL[:count]
    for index in range(len(colours), count):
        hue = (index * GOLDEN_ANGLE) % 1.0
        lightness = 0.45 if index % 2 else 0.6
        red, green, blue = colorsys.hls_to_rgb(hue, lightness, 0.65)
        colours.append(f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}")
    return colours


def class_name(index: int, class_names: list[str]) -> str:
    return class_names[index] if index < len(class_names) else str(index)


def _by_class(values: np.ndarray, class_names: list[str]) -> tuple[bytes, list[str], list[str]]:
    """Colour each point by its class; only the classes present get a colour and a legend entry."""
    present, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(present) <= MAX_PALETTE:
        slot_of_class = np.arange(len(present))
        shown = present
    else:
        kept = np.sort(np.argsort(-counts, kind="stable")[: MAX_PALETTE - 1])
        slot_of_class = np.full(len(present), MAX_PALETTE - 1)
        slot_of_class[kept] = np.arange(len(kept))
        shown = present[kept]
    palette = categorical_palette(len(shown))
    legend = [class_name(int(index), class_names) for index in shown]
    if len(shown) < len(present):
        palette.append(OTHER_COLOR)
        legend.append("other")
    return slot_of_class[inverse].astype(np.uint8).tobytes(), palette, legend


def coloring(
    color_by: str,
    labels: np.ndarray | None,
    predictions: np.ndarray | None,
    class_names: list[str],
    count: int,
    point_scores: np.ndarray | None = None,
) -> tuple[bytes, list[str], list[str]]:
    """-> (uint8 palette index per point, palette as hex strings, legend name per palette entry).

    By score, the legend always lists the five bins, empty ones too: the key reads the same whatever the data.
    """
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by: expected one of {COLOR_BY}, got {color_by!r}")
    if color_by == "score":
        if point_scores is None:
            raise ValueError("color_by: 'score' needs scores (scores= or set_scores), which were not given")
        return score_bins(point_scores).tobytes(), list(SCORE_PALETTE), list(SCORE_LEGEND)
    if labels is None and predictions is None:
        return bytes(count), [SINGLE_COLOR], []
    if color_by == "correct":
        if labels is None or predictions is None:
            raise ValueError("color_by: 'correct' needs both labels= and predictions=")
        wrong = labels != predictions
        return wrong.astype(np.uint8).tobytes(), [CORRECT_COLOR, WRONG_COLOR], ["correct", "wrong"]
    values = labels if color_by == "label" else predictions
    if values is None:
        raise ValueError(f"color_by: {color_by!r} needs {color_by}s=, which were not given")
    return _by_class(values, class_names)


def default_point_size(count: int) -> float:
    """Points small enough that a dense cloud still shows its structure, large enough to hover."""
    if count <= 2_000:
        return 7.0
    if count <= 20_000:
        return 4.0
    if count <= 200_000:
        return 2.5
    return 1.5
