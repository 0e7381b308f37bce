"""bqplot charts of a classifier's outputs: the confusion matrix (click a cell to pick a kind of mistake) and the
class probabilities of one image."""

from __future__ import annotations

import math
from dataclasses import dataclass

import bqplot
import ipywidgets
import numpy as np
import traitlets
from torch import Tensor

# Mistakes (off the diagonal) run from white to orange, hits (on it) from orange on to blue: the few errors
# stay visible next to a diagonal that holds nearly every image.
MISTAKE_COLORS = ["#ffffff", "#f4a261", "#3c7dbf"]
BAR_COLOR = "#7aa6d6"
TRUE_CLASS_COLOR = "#2ca02c"
# Cells hold their count, in 34 px for ten classes (larger for fewer, the grid keeping at least 240 px); with
# more classes they shrink, the grid keeping 480 px, down to a size the pointer can still hit, and beyond that
# the grid grows: 100 classes take 700 px.
CELL_PIXELS = 34
MIN_CELL_PIXELS = 7
MIN_GRID_PIXELS = 240
GRID_PIXELS = 480
COUNT_CELL_PIXELS = 22  # smaller cells show their count in the tooltip only
# Tick labels, 11 px type: each needs 14 px across the axis and its own length along it (an average 6.5 px per
# character); names longer than LABEL_CHARACTERS are cut on the axes and shown whole in the tooltip.
LABEL_PIXELS = 14
CHARACTER_PIXELS = 6.5
LABEL_CHARACTERS = 16
TICK_PIXELS = 10  # the tick and the gap before its label
TITLE_PIXELS = 22  # an axis title ("true", "predicted") and its gap
FIGURE_MARGIN = {"top": 40, "right": 12}


def _as_numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)


def _names(class_names, count: int, argument: str = "class_names") -> list[str]:
    if class_names is None:
        return [str(index) for index in range(count)]
    names = [str(name) for name in class_names]
    if len(names) != count:
        raise ValueError(f"{argument}: {len(names)} names for {count} classes")
    if len(set(names)) != len(names):
        raise ValueError(f"{argument}: names must be distinct, so that each row and column can be told apart")
    return names


def _short(name: str) -> str:
    return name if len(name) <= LABEL_CHARACTERS else name[: LABEL_CHARACTERS - 1] + "…"


def _label_pixels(names) -> float:
    return max(len(name) for name in names) * CHARACTER_PIXELS


@dataclass(frozen=True)
class MatrixLayout:
    """Pixel sizes of a grid of cells, and the names labelled on each axis: as many as fit without a label
    overlapping its neighbour (every name, every other one, ...)."""

    rows: int
    columns: int
    cell: float
    row_labels: list[str]
    column_labels: list[str]
    margin: dict[str, int]

    @classmethod
    def of(cls, row_names: list[str], column_names: list[str] | None = None) -> MatrixLayout:
        column_names = row_names if column_names is None else column_names
        longest = max(len(row_names), len(column_names))
        cell = min(CELL_PIXELS, max(MIN_CELL_PIXELS, GRID_PIXELS / longest))
        cell = max(cell, MIN_GRID_PIXELS / longest)
        row_labels = row_names[:: math.ceil(LABEL_PIXELS / cell)]
        # Column labels stand side by side: the longest one sets how many cells each needs.
        column_width = _label_pixels([_short(name) for name in column_names]) + CHARACTER_PIXELS
        column_labels = column_names[:: math.ceil(column_width / cell)]
        left = math.ceil(TICK_PIXELS + _label_pixels([_short(name) for name in row_labels]) + TITLE_PIXELS)
        bottom = TICK_PIXELS + LABEL_PIXELS + TITLE_PIXELS
        return cls(len(row_names), len(column_names), cell, row_labels, column_labels, {**FIGURE_MARGIN, "left": left, "bottom": bottom})

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole figure, pixels."""
        margin = self.margin
        return (
            margin["left"] + round(self.cell * self.columns) + margin["right"],
            margin["top"] + round(self.cell * self.rows) + margin["bottom"],
        )


def _checked_confusion(confusion) -> np.ndarray:
    matrix = _as_numpy(confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"confusion: expected a square (K, K) matrix of counts, got shape {matrix.shape}")
    if not np.issubdtype(matrix.dtype, np.integer):
        raise TypeError(f"confusion: expected integer counts, got dtype {matrix.dtype}")
    return matrix


def _colour_range(matrix: np.ndarray) -> dict:
    """The colour scale's mid (the most frequent mistake, so that mistakes get the warm half of the colours)
    and max."""
    off_diagonal = matrix[~np.eye(len(matrix), dtype=bool)]
    most_mistakes = max(int(off_diagonal.max()) if off_diagonal.size else 0, 1)
    return {"mid": most_mistakes, "max": max(int(matrix.max()), most_mistakes + 1)}


class HeatGrid(ipywidgets.VBox):
    """A matrix as a grid of coloured cells, its rows and columns named; sized so that every name that fits
    is labelled (see :class:`MatrixLayout`).

    Clicking a cell sets ``selection`` to ``(row, column)`` (indices); setting it highlights the cell, None
    clears it. ``heatmap`` and ``figure`` are the bqplot mark and figure.

    color_scale: the bqplot ColorScale of the values; row_title, column_title: the axes' titles;
    tooltip: the words the tooltip gives the row, the column and the value, and the value's d3 format;
    cell_format: the d3 format of the value written in each cell, where cells are large enough (None: none).
    """

    selection = traitlets.Tuple(traitlets.Int(), traitlets.Int(), default_value=None, allow_none=True)

    def __init__(
        self, matrix: np.ndarray, row_names: list[str], column_names: list[str], color_scale: bqplot.ColorScale, *,
        row_title: str, column_title: str, title: str, tooltip: tuple[str, str, str, str], cell_format: str | None = None,
    ):
        self.matrix = matrix
        row_scale, column_scale = bqplot.OrdinalScale(reverse=True), bqplot.OrdinalScale()
        sizes = MatrixLayout.of(row_names, column_names)
        # Cells too small for their value lose it and their grey border too, which would hide their colour.
        large = sizes.cell >= COUNT_CELL_PIXELS
        *labels, value_format = tooltip
        self.heatmap = bqplot.GridHeatMap(
            color=matrix,
            row=row_names,
            column=column_names,
            scales={"row": row_scale, "column": column_scale, "color": color_scale},
            selected_style={"stroke": "#111", "stroke-width": "3" if large else "2"},
            stroke="#d0d0d0" if large else None,
            display_format=cell_format if large else None,
            font_style={"font-size": "12px", "fill": "#1a1a1a"},
            tooltip=bqplot.Tooltip(fields=["row", "column", "color"], labels=labels, formats=["", "", value_format]),
        )

        # An ordinal axis draws a tick per name whatever its tick_values: the names left out get an empty label.
        def labelled(names, shown):
            shown = set(shown)
            return {name: _short(name) if name in shown else "" for name in names}

        tick_style = {"font-size": "11px"}
        axes = [
            bqplot.Axis(
                scale=column_scale, label=column_title, side="bottom", grid_lines="none", tick_style=tick_style,
                tick_labels=labelled(column_names, sizes.column_labels),
            ),
            bqplot.Axis(
                scale=row_scale, label=row_title, side="left", grid_lines="none", tick_style=tick_style,
                tick_labels=labelled(row_names, sizes.row_labels), label_offset=f"{sizes.margin['left'] - TITLE_PIXELS / 2:.0f}px",
            ),
        ]  # fmt: skip
        width, height = sizes.size
        self.figure = bqplot.Figure(
            marks=[self.heatmap],
            axes=axes,
            title=title,
            padding_x=0,
            padding_y=0,
            fig_margin=sizes.margin,
            # bqplot's hover toolbar (pan, zoom, save) would sit over the top-right cells; Save PNG is the panel's.
            display_toolbar=False,
            layout=ipywidgets.Layout(width=f"{width}px", height=f"{height}px", flex="none"),
        )
        super().__init__([self.figure])
        # bqplot's own click selection comes back to Python as an object array it cannot send again, so
        # clicks arrive as element_click messages and the highlight is set from here, as an int array.
        self.heatmap.on_element_click(self._cell_clicked)

    def _cell_clicked(self, mark, content):
        cell = content.get("data") or {}
        if "rowNum" in cell and "columnNum" in cell:
            self.selection = (int(cell["rowNum"]), int(cell["columnNum"]))

    @traitlets.validate("selection")
    def _check_selection(self, proposal):
        cell = proposal["value"]
        rows, columns = self.matrix.shape
        if cell is not None and not (0 <= cell[0] < rows and 0 <= cell[1] < columns):
            raise traitlets.TraitError(f"selection: cells lie in rows 0..{rows - 1} and columns 0..{columns - 1}, got {cell}")
        return cell

    @traitlets.observe("selection")
    def _highlight(self, change):
        cell = change["new"]
        self.heatmap.selected = None if cell is None else np.array([cell], dtype=np.int64)


class ConfusionMatrix(HeatGrid):
    """Counts of (true class, predicted class) as a heatmap; rows are true classes, columns predictions.

    Clicking a cell sets ``selection`` to ``(true, predicted)`` (class indices); observe it to show those
    images. Setting ``selection`` highlights the cell; None clears it.
    """

    def __init__(self, confusion, class_names=None, title: str = "Confusion matrix"):
        matrix = _checked_confusion(confusion)
        names = _names(class_names, len(matrix))
        color_scale = bqplot.ColorScale(min=0, colors=MISTAKE_COLORS, **_colour_range(matrix))
        self.class_names = names
        super().__init__(
            matrix, names, names, color_scale, row_title="true", column_title="predicted", title=title,
            tooltip=("true", "predicted", "images", "d"), cell_format="d",
        )

    @property
    def confusion(self) -> np.ndarray:
        return self.matrix

    def update(self, confusion) -> None:
        """Show new counts for the same classes (a pass filling the matrix in), keeping the selected cell."""
        matrix = _checked_confusion(confusion)
        if matrix.shape != self.matrix.shape:
            raise ValueError(f"confusion: expected the shape {self.matrix.shape} of the matrix shown, got {matrix.shape}")
        self.matrix = matrix
        scale = self.heatmap.scales["color"]
        with scale.hold_sync():
            for name, value in _colour_range(matrix).items():
                setattr(scale, name, value)
        self.heatmap.color = matrix


class ClassProbabilities(ipywidgets.VBox):
    """The model's most probable classes for one image, as horizontal bars; the true class, when known, in green.

    ``show(probabilities, true_class=None)`` updates the bars for another image.
    """

    def __init__(self, probabilities=None, class_names=None, top_k: int = 10, true_class: int | None = None,
                 title: str = "Class probabilities"):
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k: expected a positive int, got {top_k!r}")
        self.top_k = top_k
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self._class_scale = bqplot.OrdinalScale(reverse=True)
        probability_scale = bqplot.LinearScale(min=0, max=1)
        self.bars = bqplot.Bars(
            x=[],
            y=[],
            color=[],
            orientation="horizontal",
            scales={
                "x": self._class_scale,
                "y": probability_scale,
                "color": bqplot.ColorScale(min=0, max=1, colors=[BAR_COLOR, TRUE_CLASS_COLOR]),
            },
            label_display=True,
            label_display_format=".1%",
            label_font_style={"font-size": "11px", "fill": "#1a1a1a"},
            padding=0.2,
        )
        axes = [
            bqplot.Axis(scale=self._class_scale, side="left", grid_lines="none"),
            bqplot.Axis(scale=probability_scale, tick_format=".0%", side="bottom", num_ticks=5),
        ]
        self.figure = bqplot.Figure(
            marks=[self.bars],
            axes=axes,
            title=title,
            fig_margin={"top": 40, "bottom": 35, "left": 130, "right": 50},
            layout=ipywidgets.Layout(width="420px", height=f"{80 + 26 * top_k}px"),
        )
        super().__init__([self.figure])
        if probabilities is not None:
            self.show(probabilities, true_class)

    def show(self, probabilities, true_class: int | None = None) -> None:
        values = _as_numpy(probabilities).astype(np.float64)
        if values.ndim == 2 and len(values) == 1:
            values = values[0]
        if values.ndim != 1 or values.size == 0:
            raise ValueError(
                f"probabilities: expected one probability per class, shape (K,) or (1, K), got {values.shape}"
            )
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1 + 1e-6:
            raise ValueError("probabilities: values must be probabilities in [0, 1] (apply softmax to logits)")
        names = _names(self.class_names, len(values))
        if true_class is not None and not 0 <= int(true_class) < len(values):
            raise ValueError(f"true_class: class index {true_class} out of range 0..{len(values) - 1}")
        top = np.argsort(-values, kind="stable")[: self.top_k]
        with self.bars.hold_sync():
            self.bars.x = [names[index] for index in top]
            self.bars.y = values[top]
            self.bars.color = (top == true_class).astype(float) if true_class is not None else np.zeros(len(top))
