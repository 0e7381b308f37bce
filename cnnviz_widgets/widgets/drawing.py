"""What the panels write around their pictures: labels, percentages, bars, hit tests (no widget code).

The pictures themselves come from :mod:`cnnviz_widgets.render`.
"""

from __future__ import annotations

import math


def tile_at(x: float, y: float, count: int, columns: int) -> int | None:
    """Which tile of a grid of ``count`` tiles (row-major, ``columns`` wide) holds the point (x, y) in 0..1."""
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    column = min(int(x * columns), columns - 1)
    row = min(int(y * rows), rows - 1)
    index = row * columns + column
    return index if index < count else None


def percent(probability: float) -> str:
    """A probability as a percentage that stays informative for tiny values (0.0031% rather than 0.0%)."""
    return f"{probability:.1%}" if probability >= 0.001 or probability == 0 else f"{probability * 100:.2g}%"


def duration(seconds: float) -> str:
    """A time left as people say it: 8 s, 2 min 05 s, 1 h 12 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def probability_label(name: str, probability: float) -> str:
    return f"{name} — {percent(probability)}"


def patch_box(x: float, y: float, window: int, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a ``window``-pixel patch centred at (x, y) in 0..1, kept inside the picture."""
    window_h, window_w = min(window, height), min(window, width)
    top = int(round(y * height - window_h / 2))
    left = int(round(x * width - window_w / 2))
    top = min(max(top, 0), height - window_h)
    left = min(max(left, 0), width - window_w)
    return top, top + window_h, left, left + window_w


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

