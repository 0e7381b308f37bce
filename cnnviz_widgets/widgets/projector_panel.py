"""Projector: every image as a point, placed by what the model makes of it, in 3D or 2D."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np

from .. import render
from ..projection_process import ProjectionProcess
from . import drawing
from .base import Panel
from ..session import LRUCache
from .scatter3d import Scatter3D

PENULTIMATE = "(classifier input)"


class ProjectorPanel(Panel):
    """Embeddings of every image at a layer, projected by PCA, t-SNE or UMAP; a click on a point selects its image."""

    title = "Projector"
    caption = "each point is an image, placed by how the model sees it (drag to turn, hover to see, click to select)"

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
        self._projections = LRUCache(16)
        self._projector = ProjectionProcess()
        self._points: np.ndarray | None = None
        controls = widgets.HBox([self.method, self.dims], layout=widgets.Layout(grid_gap="12px"))
        return [self.layer_chooser, controls, self.scatter_box, self.summary]

    def _start(self) -> None:
        for control in (self.layer_chooser, self.method, self.dims):
            control.observe(lambda _: self.refresh(), "value")
        self.refresh()

    def refresh(self) -> None:
        """Embed (once per layer) and project with the chosen method, off the main thread."""
        key = (self.layer_chooser.value, self.method.value, self.dims.value)
        text = f"embedding {self.session.count} images and projecting with {dict(pca='PCA', tsne='t-SNE', umap='UMAP')[key[1]]}…"
        self.request_long(text, lambda task: self._project(task, key), self._show)

    def _project(self, task, key):
        def compute():
            layer, method, dims = key
            embeddings = self.session.embeddings(None if layer == PENULTIMATE else layer, task.checkpoint)
            predictions = self.session.predictions(task.checkpoint)
            task.checkpoint()
            points = self._projector.project(embeddings, method=method, dims=dims, checkpoint=task.checkpoint)
            return key, points, predictions

        return self._projections.get((self.session.generation, *key), compute)

    def _show(self, result) -> None:
        key, points, predictions = result
        self._points = points
        layer, method, dims = key
        if self.scatter is None:
            self.scatter = Scatter3D(
                points,
                labels=self.session.labels,
                predictions=predictions,
                class_names=self.session.class_names,
                images=[np.asarray(picture) for picture in self.session.pictures],
            )
            self.scatter.observe(self._point_chosen, "selected")
            self.scatter_box.children = [self.scatter]
        else:
            with self.scatter.hold_sync():
                self.scatter.set_points(points)
                self.scatter.set_predictions(predictions)
        name = "PCA" if method == "pca" else "t-SNE" if method == "tsne" else "UMAP"
        self.summary.value = (
            f"<span style='font-size:12px'>{self.session.count} images, embedded at "
            f"{drawing.escape(layer)}, projected to {dims}D by {name}</span>"
        )

    def _point_chosen(self, change) -> None:
        chosen = [index for index in change["new"] if index not in change["old"]] or change["new"]
        if chosen:
            self.image = int(chosen[-1])

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
        if self.scatter is None or self._points is None:
            return b""
        colours = np.frombuffer(self.scatter.colors, dtype=np.uint8)
        return render.to_png(render.points_picture(self._points, colours, list(self.scatter.palette)))
