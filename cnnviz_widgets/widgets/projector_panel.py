"""Projector: every image as a point, placed by what the model makes of it, in 3D or 2D.

A t-SNE is shown as it forms: each frame the fit sends (:mod:`cnnviz_widgets.projection_process`) moves the
points, and a Stop keeps the layout reached. Scatter3D centres every set of points in the unit cube by its own
bounding box, so the cloud keeps its size on screen while t-SNE's coordinates grow tenfold. Under the scatter,
the images nearest to the current one in the embedding space (:func:`cnnviz_widgets.neighbours.nearest`).
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import ipywidgets as widgets
import numpy as np
import traitlets

from .. import render
from ..neighbours import NEIGHBOURS, nearest
from ..projection_process import TSNE_ITERATIONS, ProjectionProcess
from . import drawing, scatter_data
from .base import Panel
from .picture import ClickablePicture
from .scatter3d import Scatter3D
from .tasks import Cancelled

PENULTIMATE = "(classifier input)"
METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
# Each frame crosses to the browser as 12 bytes a point (600 KB at 50,000 points) and redraws the cloud: five a
# second show a t-SNE forming and leave the kernel's connection free for the user's clicks.
FRAME_SECONDS = 0.2
NEIGHBOUR_SIDE = 64
WRONG_COLOR = "#c62828"


class _View(NamedTuple):
    """What the scatter shows: a finished projection, or a t-SNE frame (``iteration`` set), perhaps stopped."""

    key: tuple
    points: np.ndarray
    predictions: np.ndarray
    embeddings: np.ndarray
    iteration: int | None = None
    stopped: bool = False


class _Frames:
    """The frames of one fit as they come: the newest one, and whether the browser is due for another."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._shown_at = -math.inf
        self.newest: tuple[np.ndarray, int] | None = None

    def due(self, points: np.ndarray, iteration: int) -> bool:
        self.newest = (points, iteration)
        now = self._clock()
        if now - self._shown_at < FRAME_SECONDS:
            return False
        self._shown_at = now
        return True


class ProjectorPanel(Panel):
    """Embeddings of every image at a layer, projected by PCA, t-SNE or UMAP; a click on a point selects its image.

    A t-SNE moves the points as it forms; Stop keeps the layout it reached. Under the scatter, the images
    nearest to the current one by cosine similarity of their embeddings; a click on one selects it.
    :meth:`set_scores` gives each image a score in [0, 1] (e.g. ``ModelDiff.embedding_agreement``) and
    :meth:`colour_points` ``("score")`` colours the points by it.
    """

    title = "Projector"
    caption = "each point is an image, placed by how the model sees it (drag to turn, hover to see, click to select)"
    neighbours = traitlets.List(
        traitlets.Int(), help="indices of the images nearest to the current one in the embedding space, nearest first"
    )

    def _build(self):
        layers = [(f"{PENULTIMATE}", PENULTIMATE)] + [
            (f"{name}  (mean of {shape[0]} maps)", name) for name, shape in self.session.conv_layers()
        ]
        self.layer_chooser = widgets.Dropdown(options=layers, value=PENULTIMATE, description="layer", layout=widgets.Layout(width="420px"))
        self.method = widgets.ToggleButtons(
            options=[("PCA", "pca"), ("t-SNE", "tsne"), ("UMAP", "umap")], value="pca", description="projection", style={"button_width": "70px"}
        )
        self.dims = widgets.ToggleButtons(
            options=[("3D", 3), ("2D", 2)], value=3, description="dimensions", style={"button_width": "50px"}
        )
        self.scatter_box = widgets.Box(layout=widgets.Layout(width="100%", min_height="200px"))
        self.scatter: Scatter3D | None = None
        self.summary = widgets.HTML()
        self.summary.add_class("cnnviz-projector-summary")
        self.neighbour_title = widgets.HTML()
        self.neighbour_slots = [ClickablePicture(width=NEIGHBOUR_SIDE) for _ in range(NEIGHBOURS)]
        self.neighbour_captions = [
            widgets.HTML(layout=widgets.Layout(width=f"{NEIGHBOUR_SIDE + 24}px")) for _ in range(NEIGHBOURS)
        ]
        self.neighbour_cards = [
            widgets.VBox([slot, caption], layout=widgets.Layout(align_items="center", margin="2px", display="none"))
            for slot, caption in zip(self.neighbour_slots, self.neighbour_captions)
        ]
        for position, slot in enumerate(self.neighbour_slots):
            slot.on_point(lambda x, y, kind, position=position: self._neighbour_clicked(position))
        neighbour_row = widgets.HBox(self.neighbour_cards, layout=widgets.Layout(flex_flow="row wrap"))
        neighbour_row.add_class("cnnviz-neighbours")
        self._projector = ProjectionProcess()
        self._view: _View | None = None
        # Points selected by select(): kept for the scatter made later, and not taken for a click on a point.
        self._selection: list[int] = []
        # Scores and colouring asked for before the first projection: kept for the scatter made then.
        self._scores: np.ndarray | None = None
        self._score_name = ""
        self._colour_by: str | None = None
        self._stopped = False
        controls = widgets.HBox([self.method, self.dims], layout=widgets.Layout(grid_gap="12px"))
        return [self.layer_chooser, controls, self.scatter_box, self.summary, self.neighbour_title, neighbour_row]

    def _start(self) -> None:
        for control in (self.layer_chooser, self.method, self.dims):
            control.observe(lambda _: self.refresh(), "value")
        self.observe(lambda _: self._find_neighbours(), "image")
        self.refresh()

    def refresh(self) -> None:
        """Embed (once per layer) and project with the chosen method, off the main thread."""
        key = (self.layer_chooser.value, self.method.value, self.dims.value)
        self._stopped = False
        text = f"embedding {self.session.count} images and projecting with {METHOD_NAMES[key[1]]}…"
        self.request_long(text, lambda task: self._project(task, key), self._show, count=self.session.count)

    def stop(self) -> None:
        """Stop the work under way; a t-SNE stopped mid-fit leaves the layout it reached on screen."""
        self._stopped = True
        super().stop()

    def _project(self, task, key) -> _View:
        layer, method, dims = key

        def compute() -> _View:
            embeddings = self.session.embeddings(None if layer == PENULTIMATE else layer, task.checkpoint)
            predictions = self.session.predictions(task.checkpoint)
            task.checkpoint()
            if method == "tsne":
                text = f"fitting t-SNE to {len(embeddings):,} points: iteration"
                self.task_bar.running(text, TSNE_ITERATIONS, "iterations")
            elif method == "umap":
                self.task_bar.running(f"fitting UMAP to {len(embeddings):,} points (the bar counts its epochs)…")
            frames = _Frames()

            def show_frame(points: np.ndarray, iteration: int) -> None:
                if frames.due(points, iteration) and not task.cancelled:
                    self._apply(self._show, _View(key, points, predictions, embeddings, iteration))

            try:
                points = self._projector.project(
                    embeddings, method=method, dims=dims, checkpoint=task.checkpoint, on_frame=show_frame
                )
            except Cancelled:
                # A Stop keeps the newest frame, which may not have been due on screen yet; a newer request
                # (which clears _stopped) shows its own result instead.
                if self._stopped and frames.newest is not None:
                    points, iteration = frames.newest
                    self._apply(self._show, _View(key, points, predictions, embeddings, iteration, stopped=True))
                raise
            return _View(key, points, predictions, embeddings)

        return self.session.cached("projections", key, compute)

    def _show(self, view: _View) -> None:
        shown, self._view = self._view, view
        if self.scatter is None:
            self.scatter = Scatter3D(
                view.points,
                labels=self.session.labels,
                predictions=view.predictions,
                class_names=self.session.class_names,
                images=self.session.dataset_pass.thumbnails(),
                color_by=self._colour_by,
                scores=self._scores,
                score_name=self._score_name,
            )
            self.scatter.selected = self._selection
            self.scatter.observe(self._point_chosen, "selected")
            self.scatter.observe(lambda _: self._summarise(), "color_by")
            self.scatter_box.children = [self.scatter]
        else:
            with self.scatter.hold_sync():
                self.scatter.set_points(view.points)
                if shown is None or shown.predictions is not view.predictions:
                    self.scatter.set_predictions(view.predictions)
        self._summarise()
        if shown is None or shown.embeddings is not view.embeddings:
            self._find_neighbours()

    def _summarise(self) -> None:
        """One line under the scatter: the images, the layer, the projection, how far a t-SNE got, and the
        colouring when it is by score (the legend then shows only percentages)."""
        view = self._view
        if view is None:
            return
        layer, method, dims = view.key
        progress = ""
        if view.iteration is not None:
            progress = (
                f", stopped at iteration {view.iteration} of {TSNE_ITERATIONS} (the layout is not final)"
                if view.stopped
                else f", forming: iteration {view.iteration} of {TSNE_ITERATIONS}"
            )
        colouring = ""
        if self.scatter is not None and self.scatter.color_by == "score":
            colouring = f", coloured by {drawing.escape(self.scatter.score_name or 'score')}"
        self.summary.value = (
            f"<span style='font-size:12px'>{self.session.count} images, embedded at "
            f"{drawing.escape(layer)}, projected to {dims}D by {METHOD_NAMES[method]}{progress}{colouring}</span>"
        )

    def set_scores(self, scores, name: str = "") -> None:
        """A score in [0, 1] per image and what it measures (e.g. "neighbours shared with the reference model"),
        for the scatter now or, before the first projection, once it is made; None clears them, and points
        coloured by score go back to their classes."""
        encoded = scatter_data.scores(scores, self.session.count)
        if not isinstance(name, str):
            raise TypeError(f"name: expected a str saying what the scores measure, got {type(name).__name__}")
        # Under the lock that shows a projection: a scatter made meanwhile gets these scores, or is given them.
        with self._apply_lock, self.hold_sync():
            self._scores = scatter_data.decode_scores(encoded)
            self._score_name = name if scores is not None else ""
            if scores is None and self._colour_by == "score":
                self._colour_by = None
            if self.scatter is not None:
                self.scatter.set_scores(self._scores, self._score_name)
                self._summarise()

    def colour_points(self, kind: str) -> None:
        """Colour the points by ``kind`` ("label", "prediction", "correct" or "score"), now or, before the first
        projection, once the scatter is made."""
        if kind not in scatter_data.COLOR_BY:
            raise ValueError(f"kind: expected one of {scatter_data.COLOR_BY}, got {kind!r}")
        if kind in ("label", "correct") and self.session.labels is None:
            raise ValueError(f"kind: {kind!r} needs the images' labels, which were not given")
        if kind == "score" and self._scores is None:
            raise ValueError("kind: 'score' needs scores; give them with set_scores first")
        with self._apply_lock, self.hold_sync():
            self._colour_by = kind
            if self.scatter is not None:
                self.scatter.color_by = kind

    def select(self, indices) -> None:
        """Select the points of images ``indices`` (e.g. a finding's), now or, before the scatter exists, once it
        does; the current image stays what it is."""
        selection = sorted({self.session.check_index(int(index)) for index in indices})
        self._selection = selection
        if self.scatter is not None:
            self.scatter.selected = selection

    def _point_chosen(self, change) -> None:
        if change["new"] == self._selection:
            return
        chosen = [index for index in change["new"] if index not in change["old"]] or change["new"]
        if chosen:
            self.image = int(chosen[-1])

    def _find_neighbours(self) -> None:
        """The images nearest to the current one, in the embeddings of the projection on screen."""
        view, image = self._view, self.image
        count = min(NEIGHBOURS, self.session.count - 1)
        if view is None or count < 1:
            return

        def work():
            indices, similarities = nearest(view.embeddings, image, count)
            thumbnails = [render.thumbnail(self.session.pictures[int(index)], NEIGHBOUR_SIDE) for index in indices]
            return view, image, indices, similarities, thumbnails

        self.request(work, self._show_neighbours)

    def _classes(self, index: int, predictions: np.ndarray) -> str:
        """An image's true class, and the predicted one in red when it differs (only that one without labels)."""
        names, labels = self.session.class_names, self.session.labels
        predicted = drawing.escape(names[predictions[index]])
        if labels is None:
            return f"said <b>{predicted}</b>"
        true = f"<b>{drawing.escape(names[labels[index]])}</b>"
        if labels[index] == predictions[index]:
            return true
        return f"{true}<br>said <b style='color:{WRONG_COLOR}'>{predicted}</b>"

    def _show_neighbours(self, result) -> None:
        view, image, indices, similarities, thumbnails = result
        self.neighbours = [int(index) for index in indices]
        cards = zip(self.neighbour_slots, self.neighbour_captions, self.neighbour_cards)
        for position, (slot, caption, card) in enumerate(cards):
            if position >= len(indices):
                card.layout.display = "none"
                continue
            index, similarity = int(indices[position]), float(similarities[position])
            classes = self._classes(index, view.predictions)
            slot.value = thumbnails[position]
            slot.hint = f"image {self.session.names[index]} · cosine similarity {similarity:.3f}"
            caption.value = (
                f"<div style='font-size:11px;line-height:1.3;text-align:center'>{classes}<br>{similarity:.3f}</div>"
            )
            card.layout.display = "flex"
        self.neighbour_title.value = (
            f"<span style='font-size:12px'>nearest to image <b>{drawing.escape(self.session.names[image])}</b> "
            f"by cosine similarity at {drawing.escape(view.key[0])} · click one to select it</span>"
        )

    def _neighbour_clicked(self, position: int) -> None:
        if position < len(self.neighbours):
            index = self.neighbours[position]
            self.image = index
            self.scatter.selected = [index]

    def close(self) -> None:
        """Close the widget and end the process that fits t-SNE and UMAP."""
        # The fit under way is cancelled first, so that it ends as a cancellation, not as an error shown
        # in a panel that is going away.
        if hasattr(self, "long_runner"):
            self.long_runner.cancel()
        if hasattr(self, "_projector"):
            self._projector.close()
        super().close()

    def picture(self) -> bytes:
        """The projected points seen from the front (first two coordinates), coloured as on screen."""
        if self.scatter is None or self._view is None:
            return b""
        colours = np.frombuffer(self.scatter.colors, dtype=np.uint8)
        return render.to_png(render.points_picture(self._view.points, colours, list(self.scatter.palette)))
