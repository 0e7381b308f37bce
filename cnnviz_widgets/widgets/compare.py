"""Compare: every explanation method on one picture and one class, each scored by deletion and insertion."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import traitlets

from .. import render
from ..methods import SANITY_METHODS
from ..methods.explanations import EXPLANATIONS
from . import drawing
from .base import ClassChooser, ImagePicker, LayerChooser, Panel, shows_errors
from .tasks import TaskRunner

ORDERS = (
    ("as computed", "computed"),
    ("deletion AUC, lowest first", "deletion"),
    ("insertion AUC, highest first", "insertion"),
)
CARD_SIDE = 150
SANITY_TOP_FRACTION = 0.5
"""The sanity verdict reads the first half of the cascade (classifier and top layers randomised): with
every layer random the comparison turns noisy (a Grad-CAM came back to a rank correlation of 0.8 there)."""
DEPENDS_BELOW = 0.5
"""A map whose rank correlation with the original falls below this once the top layers are random depends
on the weights (Adebayo et al. 2018 read their figures the same way: Grad-CAM falls to about 0.2–0.3,
guided backprop stays at 0.99–1.0)."""


class ComparePanel(Panel):
    """Every method's map side by side for one picture and class, with its deletion and insertion AUC, a small
    curve of both, and a sanity check (cascading randomisation) for each map.

    ``scores`` holds ``{method: faithfulness result}`` for the maps on screen.
    """

    title = "Compare"
    caption = (
        "every method's map of the same class; deletion AUC: how fast the class fades as the map's pixels are "
        "removed first (lower is better); insertion AUC: how fast it comes back as they are revealed (higher is better)"
    )
    layer = traitlets.Unicode()
    target = traitlets.Int(0, help="the class explained")

    def _build(self):
        self.picker = ImagePicker(self.session)
        self.class_chooser = ClassChooser(self.session)
        self.layer_chooser = LayerChooser(self.session, description="CAM layer")
        self.order = widgets.Dropdown(options=ORDERS, value="computed", description="sort by", layout=widgets.Layout(width="320px"))
        self.cards = {}
        for item in EXPLANATIONS:
            picture = widgets.Image(format="png", layout=widgets.Layout(width=f"{CARD_SIDE}px", height=f"{CARD_SIDE}px"))
            curves = widgets.Image(format="png", layout=widgets.Layout(width=f"{CARD_SIDE}px", height="52px"))
            scores = widgets.HTML("<span style='font-size:11px;color:#777'>waiting…</span>")
            sanity = widgets.Button(description="sanity check", icon="random", layout=widgets.Layout(width=f"{CARD_SIDE}px"))
            sanity.on_click(lambda _, method=item.name: self.check_sanity(method))
            if item.name not in SANITY_METHODS:
                sanity.disabled = True
                sanity.tooltip = "the randomisation cascade is run for CAM and gradient maps"
            card = widgets.VBox(
                [widgets.HTML(f"<b style='font-size:13px'>{drawing.escape(item.label)}</b>"), picture, curves, scores, sanity],
                layout=widgets.Layout(border="1px solid #ddd", padding="4px", align_items="center"),
            )
            card.add_class("cnnviz-compare-card")
            self.cards[item.name] = (card, picture, curves, scores)
        self.grid = widgets.GridBox(
            [card for card, *_ in self.cards.values()],
            layout=widgets.Layout(grid_template_columns=f"repeat(auto-fill, minmax({CARD_SIDE + 16}px, 1fr))", grid_gap="8px"),
        )
        self.grid.add_class("cnnviz-compare-grid")
        self.legend = widgets.HTML(
            "<span style='font-size:12px'>curves: <b style='color:#c62828'>deletion</b> and "
            "<b style='color:#1976d2'>insertion</b>, p(class) against the fraction of pixels removed or revealed</span>"
        )
        self.sanity_title = widgets.HTML()
        self.sanity_strip = widgets.Image(format="png", layout=widgets.Layout(max_width="100%", display="none"))
        self.sanity_curve = widgets.Image(format="png", layout=widgets.Layout(display="none"))
        self.sanity_verdict = widgets.HTML()
        self.sanity_strip.add_class("cnnviz-sanity-strip")
        self.sanity_runner = TaskRunner(on_error=self.show_error)
        self.scores = {}
        self._maps = {}
        return [
            self.picker,
            widgets.HBox([self.class_chooser, self.layer_chooser], layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self.order, self.legend], layout=widgets.Layout(flex_flow="row wrap", align_items="center")),
            self.grid,
            self.sanity_title,
            self.sanity_strip,
            self.sanity_curve,
            self.sanity_verdict,
        ]

    def _start(self) -> None:
        self.layer = self.session.heatmap_layer()
        self.class_chooser.rank_for(self.image)
        self.target = self.class_chooser.value
        widgets.link((self.picker, "index"), (self, "image"))
        widgets.link((self, "layer"), (self.layer_chooser, "value"))
        widgets.link((self.class_chooser, "value"), (self, "target"))
        self.observe(self._on_image, "image")
        self.observe(lambda _: self.refresh(), ["layer", "target"])
        self.order.observe(lambda _: self._sort(), "value")
        self.refresh()

    @traitlets.validate("layer")
    def _check_layer(self, proposal):
        return self.check_layer(proposal["value"])

    @traitlets.validate("target")
    def _check_target(self, proposal):
        return self.check_target(proposal["value"])

    @shows_errors
    def _on_image(self, change) -> None:
        with self.settling():
            self.class_chooser.rank_for(self.image)

    def refresh(self) -> None:
        """Compute every method's map and scores for the current picture, class and layer, fast ones first."""
        key = (self.image, self.layer, self.target)
        self.scores, self._maps = {}, {}
        for _, picture, curves, scores in self.cards.values():
            scores.value = "<span style='font-size:11px;color:#777'>waiting…</span>"
        self.request_long(f"explaining with {len(EXPLANATIONS)} methods…", lambda task: self._explain(task, key), lambda done: None)

    def _explain(self, task, key):
        """Every map first, fast ones first, then the scores: a map takes 0.05 to 15 s, the deletion and
        insertion curves about 1 s each, so the view fills with pictures before it waits on numbers."""
        image, layer, target = key
        view = self.session.view(image)
        steps = 2 * len(EXPLANATIONS)

        def progress(position):
            return lambda fraction, partial=None: task.checkpoint((position + fraction) / steps)

        scored = []
        for position, item in enumerate(EXPLANATIONS):
            step = progress(position)
            step(0.0)
            importance = self.session.explanation(image, item.name, layer, target, step)
            picture = render.overlay(view, importance, alpha=0.5, cmap="jet")
            self._apply(self._show_map, (key, item.name, picture))
            if bool(importance.any()):
                scored.append(item)
            else:
                # No pixel ranks above another: deletion and insertion would only follow row order.
                self._apply(self._show_flat, (key, item.name))
        for position, item in enumerate(scored, start=len(EXPLANATIONS)):
            step = progress(position)
            step(0.0)
            scores = self.session.faithfulness(image, item.name, layer, target, step)
            self._apply(self._show_scores, (key, item.name, scores))
        return key

    def _current(self, key) -> bool:
        return key == (self.image, self.layer, self.target)

    def _show_map(self, result) -> None:
        key, method, picture = result
        if not self._current(key):
            return
        self._maps[method] = picture
        self.cards[method][1].value = render.to_png(picture)

    def _show_scores(self, result) -> None:
        key, method, scores = result
        if not self._current(key):
            return
        self.scores[method] = scores
        _, _, curves, text = self.cards[method]
        curves.value = render.to_png(render.curves_picture({"deletion": scores.deletion, "insertion": scores.insertion}))
        curves.layout.display = None
        text.value = (
            f"<span style='font-size:11px'>deletion AUC <b>{scores.deletion_auc:.3f}</b> · "
            f"insertion AUC <b>{scores.insertion_auc:.3f}</b></span>"
        )
        self._sort()

    def _show_flat(self, result) -> None:
        key, method = result
        if not self._current(key):
            return
        _, _, curves, text = self.cards[method]
        curves.layout.display = "none"
        text.value = (
            f"<span style='font-size:11px;color:#c62828'>zero everywhere at {drawing.escape(key[1])}: the weighted "
            "sum of the layer's maps is negative at every place, so there is nothing to score. A layer after an "
            "activation has positive maps</span>"
        )

    def _sort(self) -> None:
        order = [item.name for item in EXPLANATIONS]
        if self.order.value != "computed":
            scored = [name for name in order if name in self.scores]
            if self.order.value == "deletion":
                scored.sort(key=lambda name: self.scores[name].deletion_auc)
            else:
                scored.sort(key=lambda name: -self.scores[name].insertion_auc)
            order = scored + [name for name in order if name not in self.scores]
        self.grid.children = [self.cards[name][0] for name in order]

    def check_sanity(self, method: str) -> None:
        """Randomise the model's layers from the top down and show how ``method``'s map changes."""
        key = (self.image, self.layer, self.target)
        label = {item.name: item.label for item in EXPLANATIONS}[method]
        self.sanity_title.value = f"<b style='font-size:13px'>sanity check of {drawing.escape(label)}</b> <span style='font-size:12px'>running…</span>"
        self.sanity_runner.submit(
            lambda task: (key, label, self.session.sanity(key[0], method, key[1], key[2], task.checkpoint)),
            lambda result: self._apply(self._show_sanity, result),
        )

    def _show_sanity(self, result) -> None:
        key, label, sanity = result
        view = self.session.view(key[0])
        maps = [render.overlay(view, single, alpha=0.5, cmap="jet") for single in (sanity.original, *sanity.maps)]
        self.sanity_strip.value = render.to_png(render.strip(maps))
        self.sanity_strip.layout.display = "block"
        correlations = np.nan_to_num(np.asarray(sanity.rank_correlations, dtype=np.float64), nan=0.0)
        self.sanity_curve.value = render.to_png(
            render.curves_picture(
                {"rank correlation": np.clip(correlations, 0, 1), "SSIM": np.clip(np.asarray(sanity.ssim), 0, 1)},
                width=max(160, 100 * len(maps)),
                height=64,
            )
        )
        self.sanity_curve.layout.display = "block"
        top = correlations[: max(1, int(len(correlations) * SANITY_TOP_FRACTION))]
        depends = float(np.min(top)) < DEPENDS_BELOW
        layers = ", ".join(sanity.layers[:3]) + (", …" if len(sanity.layers) > 3 else "")
        self.sanity_title.value = (
            f"<b style='font-size:13px'>sanity check of {drawing.escape(label)}</b> "
            f"<span style='font-size:12px'>the original map, then the map after randomising, cumulatively from the "
            f"top: {drawing.escape(layers)}</span>"
        )
        verdict = (
            "the map changes when the model's weights are randomised: it depends on what the model learned"
            if depends
            else "the map barely changes when the model's weights are randomised: it shows the picture more than the model"
        )
        colour = "#2e7d32" if depends else "#c62828"
        self.sanity_verdict.value = (
            f"<div style='font-size:13px;color:{colour}'><b>{verdict}</b> (lowest rank correlation with the original "
            f"over the top half of the cascade: {float(np.min(top)):.2f}; "
            "<span style='color:#6a1b9a'>rank correlation</span> and <span style='color:#2e7d32'>SSIM</span> above)</div>"
        )

    def picture(self) -> bytes:
        shown = [self._maps[item.name] for item in EXPLANATIONS if item.name in self._maps]
        return render.to_png(render.strip(shown, side=CARD_SIDE)) if shown else b""

    def close(self) -> None:
        if hasattr(self, "sanity_runner"):
            self.sanity_runner.close()
        super().close()

    @property
    def threads_alive(self) -> bool:
        return super().threads_alive or self.sanity_runner.alive

    def wait(self, timeout: float = 300.0) -> bool:
        return super().wait(timeout) and self.sanity_runner.wait(timeout)
