"""Scatter3D: a three.js point cloud in the notebook, for embeddings projected to 2 or 3 dimensions.

The class holds traits and wiring only; the arrays become byte buffers in ``scatter_data`` and the hover
thumbnails one PNG sprite atlas in ``sprites``. Drawing, hovering, picking and the lasso live in
``js/src/scatter3d.js``, built into ``static/scatter3d.js``.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import traitlets

from ..sprites import HOVER_MAX_SIDE, HOVER_THUMBNAIL_SIZE, build_atlas
from . import scatter_data

BUNDLE = Path(__file__).resolve().parent.parent / "static" / "scatter3d.js"
# With software WebGL (no GPU) on a 2-core machine a redraw costs about a millisecond per thousand points: a
# sample of this size redraws in about 30 ms, and still shows every cluster's shape.
LOD_POINTS = 25_000


class Scatter3D(anywidget.AnyWidget):
    """Points in 3D (orbit, zoom, pan) or 2D, coloured by label, prediction, correct/wrong or a score per point.

    Hovering a point shows its label, prediction and image; a click selects it, shift-click adds or
    removes it, the lasso selects many. ``selected`` holds the selected point indices, in both directions:
    observe it to react to the user, set it to highlight points.

    points: (N, 3) or (N, 2) array; labels, predictions: N class indices; class_names: names of the
    classes; images: N images for the hover thumbnails (tensor (N, C, H, W), array or list of PIL images), or
    their :class:`~cnnviz_widgets.sprites.Atlas` made beforehand (:class:`~cnnviz_widgets.sprites.AtlasBuilder`);
    scores: N numbers in [0, 1] (e.g. the share of an image's neighbours two models agree on), and score_name what
    they measure: ``color_by="score"`` colours the points in five bins, red (low) through amber to green (high).

    Clouds above ``lod_points`` points draw that many of them, picked at random once, while the view turns (so
    each region keeps its share of the points), and every point once it has rested for 150 ms.
    """

    _esm = BUNDLE

    points = traitlets.Bytes(help="float32 x, y, z per point, centred in the unit cube").tag(sync=True)
    colors = traitlets.Bytes(help="uint8 palette index per point").tag(sync=True)
    palette = traitlets.List(traitlets.Unicode(), help="hex colour per palette index").tag(sync=True)
    legend = traitlets.List(traitlets.Unicode(), help="name per palette index").tag(sync=True)
    labels = traitlets.Bytes(help="uint16 true class per point; empty if unknown").tag(sync=True)
    predictions = traitlets.Bytes(help="uint16 predicted class per point; empty if unknown").tag(sync=True)
    class_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    scores = traitlets.Bytes(help="float32 score in [0, 1] per point; empty if none (set with set_scores)").tag(sync=True)
    score_name = traitlets.Unicode("", help="what the scores measure, shown in the colour menu and the hover").tag(
        sync=True
    )
    color_by = traitlets.Enum(scatter_data.COLOR_BY, default_value="label").tag(sync=True)
    view = traitlets.Enum(("3d", "2d"), default_value="3d").tag(sync=True)
    point_size = traitlets.Float(4.0, help="point diameter in CSS pixels").tag(sync=True)
    lod_points = traitlets.Int(
        LOD_POINTS,
        min=0,
        help="points drawn while the view turns, a fixed random subset (plus the selected points); every point is "
        "drawn once the view rests. 0 draws every point always",
    ).tag(sync=True)
    width = traitlets.Int(0, help="pixels; 0 fills the notebook's width").tag(sync=True)
    height = traitlets.Int(520, help="pixels").tag(sync=True)
    sprite = traitlets.Bytes(help="PNG atlas of thumbnails, row-major").tag(sync=True)
    sprite_size = traitlets.Int(0, help="side of one thumbnail in the atlas, pixels").tag(sync=True)
    sprite_columns = traitlets.Int(0).tag(sync=True)
    selected = traitlets.List(traitlets.Int(), help="indices of the selected points").tag(sync=True)

    def __init__(
        self,
        points,
        labels=None,
        predictions=None,
        class_names=None,
        images=None,
        color_by: str | None = None,
        point_size: float | None = None,
        view: str | None = None,
        scores=None,
        score_name: str = "",
        **kwargs,
    ):
        buffer, dims = scatter_data.positions(points)
        count = len(buffer) // 12
        state = {
            "points": buffer,
            "labels": scatter_data.classes(labels, count, "labels"),
            "predictions": scatter_data.classes(predictions, count, "predictions"),
            "scores": scatter_data.scores(scores, count),
            "score_name": _checked_name(score_name, "score_name") if scores is not None else "",
            "class_names": [str(name) for name in class_names] if class_names is not None else [],
            "view": view or ("2d" if dims == 2 else "3d"),
            "point_size": point_size if point_size is not None else scatter_data.default_point_size(count),
        }
        state["color_by"] = color_by if color_by is not None else _default_color_by(state["labels"], state["predictions"])
        state.update(
            self._coloring(
                state["color_by"], state["labels"], state["predictions"], state["class_names"], count, state["scores"]
            )
        )
        if images is not None:
            atlas = build_atlas(images, thumbnail_size=HOVER_THUMBNAIL_SIZE, max_side=HOVER_MAX_SIDE)
            if atlas.count != count:
                raise ValueError(f"images: {atlas.count} images for {count} points; give one image per point")
            state.update(sprite=atlas.png(), sprite_size=atlas.thumbnail_size, sprite_columns=atlas.columns)
        super().__init__(**state, **kwargs)

    @property
    def count(self) -> int:
        return len(self.points) // 12

    def set_points(self, points) -> None:
        """Move the same points to new positions (another projection), keeping colours, thumbnails and
        selection; 2-D points switch the view to 2D, 3-D points to 3D."""
        buffer, dims = scatter_data.positions(points)
        if len(buffer) != len(self.points):
            raise ValueError(f"points: {len(buffer) // 12} points given for a scatter of {self.count}")
        with self.hold_sync():
            self.points = buffer
            self.view = "2d" if dims == 2 else "3d"

    def set_predictions(self, predictions) -> None:
        """New predicted classes (the model changed): the colours follow when they show predictions."""
        encoded = scatter_data.classes(predictions, self.count, "predictions")
        colouring = self._coloring(self.color_by, self.labels, encoded, self.class_names, self.count, self.scores)
        with self.hold_sync():
            self.predictions = encoded
            for name, value in colouring.items():
                setattr(self, name, value)

    def set_scores(self, scores, name: str = "") -> None:
        """A score in [0, 1] per point and what it measures (None clears both). Coloured by score, the colours
        follow; cleared while coloured by score, the points go back to label (or prediction, without labels)."""
        encoded = scatter_data.scores(scores, self.count)
        name = _checked_name(name, "name") if scores is not None else ""
        with self.hold_sync():
            if scores is None and self.color_by == "score":
                self.scores, self.score_name = encoded, name
                self.color_by = _default_color_by(self.labels, self.predictions)
                return
            colouring = {}
            if self.color_by == "score":
                colouring = self._coloring("score", self.labels, self.predictions, self.class_names, self.count, encoded)
            self.scores, self.score_name = encoded, name
            for trait, value in colouring.items():
                setattr(self, trait, value)

    @staticmethod
    def _coloring(color_by, labels: bytes, predictions: bytes, class_names, count, scores: bytes) -> dict:
        colors, palette, legend = scatter_data.coloring(
            color_by,
            scatter_data.decode_classes(labels),
            scatter_data.decode_classes(predictions),
            class_names,
            count,
            scatter_data.decode_scores(scores),
        )
        return {"colors": colors, "palette": palette, "legend": legend}

    @traitlets.validate("selected")
    def _check_selected(self, proposal):
        indices = sorted(set(proposal["value"]))
        if indices and (indices[0] < 0 or indices[-1] >= self.count):
            raise traitlets.TraitError(f"selected: point indices must lie in 0..{self.count - 1}")
        return indices

    @traitlets.validate("color_by")
    def _check_color_by(self, proposal):
        # Validated here, before the change lands, so an impossible colouring leaves the old one in place.
        self._recolored = self._coloring(
            proposal["value"], self.labels, self.predictions, self.class_names, self.count, self.scores
        )
        return proposal["value"]

    @traitlets.observe("color_by")
    def _recolor(self, change):
        with self.hold_sync():
            for name, value in self._recolored.items():
                setattr(self, name, value)


def _default_color_by(labels: bytes, predictions: bytes) -> str:
    """What the points show unless told otherwise: labels, or predictions when only those are known."""
    return "prediction" if not labels and predictions else "label"


def _checked_name(name, argument: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{argument}: expected a str saying what the scores measure, got {type(name).__name__}")
    return name
