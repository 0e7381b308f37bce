"""Occlusion: hide part of the picture and watch the class probability; the full map and a live patch."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import traitlets

from .. import render
from ..methods.occlusion import window_boxes
from . import drawing
from .base import ClassChooser, ImagePicker, Panel, shows_errors
from .heatmaps import PICTURE_LAYOUT
from .picture import ClickablePicture

LIVE_TOP_K = 5


class OcclusionPanel(Panel):
    """The occlusion sensitivity map of one class, its attribution overlay, and a patch to move by hand.

    ``result`` holds the :class:`~cnnviz_widgets.methods.occlusion.OcclusionResult` on screen once the map is
    whole (None while a coarse map is shown and refined).
    """

    title = "Occlusion"
    caption = "a patch hides part of the picture: where hiding it makes the class less likely, that part mattered"
    target = traitlets.Int(0, help="the class whose probability is watched")

    def _build(self):
        self.picker = ImagePicker(self.session)
        self.class_chooser = ClassChooser(self.session)
        size = min(self.session.input(0).shape[-2:])
        self.window = widgets.IntSlider(value=max(2, size // 7), min=2, max=max(2, size // 2), description="patch size", layout=widgets.Layout(width="320px"))
        # A step longer than the patch would leave pixels never hidden: the step slider ends at the patch size.
        self.stride = widgets.IntSlider(value=max(1, size // 8), min=1, max=self.window.value, description="step", layout=widgets.Layout(width="320px"))
        self.baseline = widgets.Dropdown(options=render.PATCH_FILLS, value="black", description="patch fill", layout=widgets.Layout(width="220px"))
        self.cmap = "viridis"
        self.scores_view = widgets.Image(format="png", layout=widgets.Layout(**PICTURE_LAYOUT))
        self.attribution_view = widgets.Image(format="png", layout=widgets.Layout(**PICTURE_LAYOUT))
        self.colour_bar = widgets.Image(value=render.to_png(render.colour_bar(self.cmap)), format="png", layout=widgets.Layout(width="280px", height="12px"))
        self.scores_label, self.attribution_label = widgets.HTML(), widgets.HTML()
        self.live_view = ClickablePicture(width=280, drag=True)
        self.live_view.on_point(self._moved)
        self.live_bars = widgets.HTML()
        self.scores_view.add_class("cnnviz-occlusion-scores")
        self.attribution_view.add_class("cnnviz-occlusion-attribution")
        self.scores_label.add_class("cnnviz-occlusion-scores-label")
        self.baseline.add_class("cnnviz-occlusion-fill")
        self.live_view.add_class("cnnviz-occluder")
        self._scores_picture: np.ndarray | None = None
        self._attribution_picture: np.ndarray | None = None
        self._live_picture: np.ndarray | None = None
        self._patch: tuple[float, float] | None = None
        self.result = None
        views = widgets.HBox(
            [
                widgets.VBox([self.scores_view, self.colour_bar, self.scores_label]),
                widgets.VBox([self.attribution_view, self.attribution_label]),
                widgets.VBox(
                    [self.live_view, widgets.HTML("<span style='font-size:12px'>click or drag to move the patch</span>"), self.live_bars],
                    layout=widgets.Layout(min_width="290px"),
                ),
            ],
            layout=widgets.Layout(grid_gap="12px", align_items="flex-start"),
        )
        return [self.picker, self.class_chooser, widgets.HBox([self.window, self.stride, self.baseline]), views]

    def _start(self) -> None:
        self.class_chooser.rank_for(self.image)
        self.target = self.class_chooser.value
        widgets.link((self.picker, "index"), (self, "image"))
        widgets.link((self.class_chooser, "value"), (self, "target"))
        widgets.dlink((self.window, "value"), (self.stride, "max"))
        self.observe(self._on_image, "image")
        self.observe(lambda _: self.refresh(), "target")
        for control in (self.window, self.stride, self.baseline):
            control.observe(lambda _: self.refresh(), "value")
        self.refresh()

    @traitlets.validate("target")
    def _check_target(self, proposal):
        return self.check_target(proposal["value"])

    @shows_errors
    def _on_image(self, change) -> None:
        self._patch = None
        with self.settling():
            self.class_chooser.rank_for(self.image)

    @shows_errors
    def refresh(self) -> None:
        """Start the full occlusion map for the current settings (stopping any older one) and redraw the live view."""
        key = (self.image, self.target, self.window.value, self.stride.value, self.baseline.value)
        self.request_long(f"occluding {self._positions(key)} patch positions…", lambda task: self._occlude(task, key), self._show_map)
        self._refresh_live()

    def _positions(self, key) -> int:
        _, _, window, stride, _ = key
        height, width = self.session.input(key[0]).shape[-2:]
        _, rows, cols = window_boxes(height, width, (min(window, height), min(window, width)), (stride, stride))
        return rows * cols

    def _occlude(self, task, key):
        image, target, window, stride, kind = key

        def sharpening(fraction, partial=None) -> None:
            task.checkpoint(fraction)
            if partial is not None:
                self._apply(self._show_map, self._drawn(key, partial, fraction))

        task.checkpoint(0.0)
        result = self.session.occlusion(image, target, window, stride, kind, sharpening)
        task.checkpoint(1.0)
        return self._drawn(key, result, 1.0)

    def _drawn(self, key, result, fraction: float):
        """The map's two pictures; ``fraction`` of its places computed (below 1: a coarse map, each place
        showing its nearest computed score)."""
        view = self.session.view(key[0])
        scores_picture = render.scores_picture(result.scores, self.cmap, side=max(view.shape[:2]))
        importance = render.scale_to_unit(np.clip(result.attribution.numpy(), 0.0, None))
        attribution_picture = render.overlay(view, importance, alpha=0.55, cmap="jet")
        return key, result, scores_picture, attribution_picture, fraction

    def _show_map(self, outcome) -> None:
        key, result, scores_picture, attribution_picture, fraction = outcome
        self.result = result if fraction == 1.0 else None
        self._scores_picture, self._attribution_picture = scores_picture, attribution_picture
        self.scores_view.value = render.to_png(scores_picture)
        self.attribution_view.value = render.to_png(attribution_picture)
        rows, cols = result.scores.shape
        name = self.session.class_names[key[1]]
        low, high = float(result.scores.min()), float(result.scores.max())
        state = "" if fraction == 1.0 else f" (coarse: {round(fraction * rows * cols)} of them computed so far, refining)"
        self.scores_label.value = (
            f"<span style='font-size:12px'>p({drawing.escape(name)}) with the patch at each of {rows}×{cols} places{state}: "
            f"from {drawing.percent(low)} (dark) to {drawing.percent(high)} (yellow); "
            f"intact picture: {drawing.percent(result.probability)}</span>"
        )
        self.attribution_label.value = (
            "<span style='font-size:12px'>red: hiding these pixels lowers the probability most "
            f"(patch {key[2]} px, step {key[3]} px, filled {drawing.escape(key[4])})</span>"
        )

    def _moved(self, x: float, y: float, kind: str) -> None:
        self._patch = (x, y)
        self._refresh_live()

    def _refresh_live(self) -> None:
        key = (self.image, self.target, self.window.value, self.baseline.value, self._patch)
        self.request(lambda: self._live(key), self._show_live)

    def _live(self, key):
        image, target, window, kind, patch = key
        view = self.session.view(image)
        x = self.session.input(image)
        if patch is None:
            picture, occluded_input = view, x
        else:
            box = drawing.patch_box(*patch, window, *x.shape[-2:])
            occluded_input = render.occluded(x, self.session.baseline(image, kind), box)
            view_box = drawing.patch_box(*patch, round(window * view.shape[0] / x.shape[-2]), *view.shape[:2])
            picture = render.outlined(render.occluded(view, render.baseline_view(view, kind), view_box), view_box)
        probabilities = self.session.predict_occluded(occluded_input)
        intact = self.session.probabilities(image)
        names = self.session.class_names
        top = np.argsort(-probabilities, kind="stable")[:LIVE_TOP_K]
        ranked = [(names[k], float(probabilities[k])) for k in top]
        if target not in top:
            ranked.append((names[target], float(probabilities[target])))
        reference = {names[k]: float(intact[k]) for k in range(len(intact))} if patch is not None else None
        return picture, render.to_png(picture), drawing.probability_bars_html(ranked, reference)

    def _show_live(self, result) -> None:
        self._live_picture, png, bars = result
        self.live_view.value = png
        self.live_bars.value = bars

    def picture(self) -> bytes:
        shown = [p for p in (self._scores_picture, self._attribution_picture, self._live_picture) if p is not None]
        return render.to_png(render.side_by_side(shown)) if shown else b""
