"""Compare: every explanation method on one picture and one class, each scored by deletion and insertion.

Everything the panel computes (the maps, their curves, a sanity check) is one long work on the panel's
long runner: one progress bar, one Stop. What the user clicked runs first (a sanity check, a card that
waited for a click), then whatever the view still lacks; what was computed before comes from the session's
cache at once. A card whose work is estimated above ``CLICK_ABOVE_SECONDS`` waits for a click, so that the
others are not held up by it.
"""

from __future__ import annotations

from functools import lru_cache

import ipywidgets as widgets
import numpy as np
import traitlets

from .. import render
from ..checkpoint import check, scaled
from ..methods import SANITY_METHODS, sanity_verdict
from ..methods.explanations import ATTENTION_EXPLANATIONS, EXPLANATIONS, explanations_for
from . import drawing
from .base import ClassChooser, ImagePicker, LayerChooser, Panel, shows_errors

ORDERS = (
    ("as computed", "computed"),
    ("deletion AUC, lowest first", "deletion"),
    ("insertion AUC, highest first", "insertion"),
)
CARD_SIDE = 150
CURVES_HEIGHT = 52
CLICK_ABOVE_SECONDS = 10.0
"""A card whose map and curves are estimated to take longer than this (``methods.estimated_seconds``: the
model's measured forward time times the passes the method needs) waits for a click. Score-CAM at
EfficientNet-Lite0's last conv layer, 1,280 channels, takes longer on two cores; on Inception-v3's 2,048
channels at 299 px it took minutes."""
LABELS = {item.name: item.label for item in EXPLANATIONS + ATTENTION_EXPLANATIONS}
VERDICTS = {
    "depends": ("#2e7d32", "the map changes when the model's weights are randomised: it depends on what the model learned"),
    "independent": (
        "#c62828",
        "the map barely changes when the model's weights are randomised: it shows the picture more than the model",
    ),
    "undetermined": ("#616161", "cannot tell whether the map depends on the model's weights"),
}
"""Each outcome of ``methods.sanity_verdict``: its colour (a neutral grey when the cascade cannot tell) and words."""


@lru_cache(maxsize=64)
def placeholder_png(width: int, height: int, text: str) -> bytes:
    """What a picture of the card shows until it is computed: no empty image (a browser draws a broken icon)."""
    return render.to_png(render.placeholder(width, height, text))


class ComparePanel(Panel):
    """Every method's map side by side for one picture and class, with its deletion and insertion AUC, a small
    curve of both, and a sanity check (cascading randomisation) for each map.

    ``scores`` holds ``{method: faithfulness result}`` for the maps on screen. A card whose work is estimated
    above ``CLICK_ABOVE_SECONDS`` shows the estimate and a compute button (``compute_buttons[method]``), as
    does every card left unfinished by Stop.
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
        self.compute_buttons = {}
        # The attention maps only for the models whose attention they read.
        self.methods = explanations_for(self.session.model)
        for item in self.methods:
            picture = widgets.Image(format="png", layout=widgets.Layout(width=f"{CARD_SIDE}px", height=f"{CARD_SIDE}px"))
            curves = widgets.Image(format="png", layout=widgets.Layout(width=f"{CARD_SIDE}px", height=f"{CURVES_HEIGHT}px"))
            scores = widgets.HTML()
            compute = widgets.Button(
                description="compute", icon="play", layout=widgets.Layout(width=f"{CARD_SIDE}px", display="none")
            )
            compute.on_click(lambda _, method=item.name: self.compute(method))
            sanity = widgets.Button(description="sanity check", icon="random", layout=widgets.Layout(width=f"{CARD_SIDE}px"))
            sanity.on_click(lambda _, method=item.name: self.check_sanity(method))
            if item.name not in SANITY_METHODS:
                sanity.disabled = True
                sanity.tooltip = "the randomisation cascade is run for CAM, gradient and attention maps"
            card = widgets.VBox(
                [widgets.HTML(f"<b style='font-size:13px'>{drawing.escape(item.label)}</b>"), picture, curves, scores, compute, sanity],
                layout=widgets.Layout(border="1px solid #ddd", padding="4px", align_items="center"),
            )
            card.add_class("cnnviz-compare-card")
            self.cards[item.name] = (card, picture, curves, scores)
            self.compute_buttons[item.name] = compute
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
        self.scores = {}
        self._maps = {}
        self._gated: dict[str, float] = {}
        self._flat: set[str] = set()
        # What is on screen: (image, layer, target, the refresh it belongs to). Results of another are dropped.
        self._view = None
        self._refreshes = 0
        self._confirmed: set[str] = set()
        self._sanity_pending: str | None = None
        self._stopped = False
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

    # -- requests ----------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Compute every method's map and scores for the current picture, class and layer, fast ones first."""
        settings = (self.image, self.layer, self.target)
        # A card computed on a click was for the weights and settings of then: with new ones it shows its
        # estimate again rather than take minutes after every pause of a training loop.
        self._confirmed = set()
        if self._view is None or self._view[:3] != settings:
            # A sanity check asked for and not shown yet runs again on new weights, not for other settings.
            self._sanity_pending = None
        self._refreshes += 1
        with self._apply_lock:
            self._view = (*settings, self._refreshes)
            self.scores, self._maps, self._gated, self._flat = {}, {}, {}, set()
        for name, (_, picture, curves, scores) in self.cards.items():
            picture.value = placeholder_png(CARD_SIDE, CARD_SIDE, "computing…")
            curves.value = placeholder_png(CARD_SIDE, CURVES_HEIGHT, "curves: computing…")
            curves.layout.display = None
            scores.value = "<span style='font-size:11px;color:#777'>waiting…</span>"
            self.compute_buttons[name].layout.display = "none"
        # A sanity check shown was of other settings or of the weights before: it is no longer the model's.
        self.sanity_strip.layout.display = self.sanity_curve.layout.display = "none"
        self.sanity_title.value = self.sanity_verdict.value = ""
        if self._sanity_pending is not None:
            self._sanity_running(self._sanity_pending)
        self._run()

    def compute(self, method: str) -> None:
        """Compute ``method``'s card (one that waits for a click, or that Stop left unfinished) before the
        rest of what the view lacks."""
        if method not in self.cards:
            raise ValueError(f"method: expected one of {', '.join(self.cards)}; got {method!r}")
        self._confirmed.add(method)
        with self._apply_lock:
            self._gated.pop(method, None)
            unfinished = [name for name in self.cards if name not in self._gated and not self._finished(name)]
        for name in unfinished:
            _, picture, curves, scores = self.cards[name]
            if name not in self._maps:
                picture.value = placeholder_png(CARD_SIDE, CARD_SIDE, "computing…")
                scores.value = "<span style='font-size:11px;color:#777'>waiting…</span>"
            curves.value = placeholder_png(CARD_SIDE, CURVES_HEIGHT, "curves: computing…")
            curves.layout.display = None
            self.compute_buttons[name].layout.display = "none"
        self._run()

    def check_sanity(self, method: str) -> None:
        """Randomise the model's layers from the top down and show how ``method``'s map changes; it runs
        before whatever the cards still lack."""
        if method not in SANITY_METHODS:
            raise ValueError(f"method: the sanity check takes one of {', '.join(SANITY_METHODS)}; got {method!r}")
        self._sanity_pending = method
        self._sanity_running(method)
        self._run()

    def stop(self) -> None:
        """Stop the work under way; each card left unfinished says so and offers to compute it."""
        super().stop()
        self._stopped = True
        method, self._sanity_pending = self._sanity_pending, None
        if method is not None:
            self.sanity_title.value = (
                f"<b style='font-size:13px'>sanity check of {drawing.escape(LABELS[method])}</b> "
                "<span style='font-size:12px'>stopped</span>"
            )
        self._apply(self._show_stopped, None)

    def _run(self) -> None:
        self._stopped = False
        view, confirmed, sanity = self._view, frozenset(self._confirmed), self._sanity_pending
        text = f"explaining with {len(self.methods)} methods…"
        if sanity is not None:
            text = f"sanity check of {LABELS[sanity]}…"
        self.request_long(text, lambda task: self._work(task, view, confirmed, sanity), lambda result: None)

    def _sanity_running(self, method: str) -> None:
        self.sanity_title.value = (
            f"<b style='font-size:13px'>sanity check of {drawing.escape(LABELS[method])}</b> "
            "<span style='font-size:12px'>running…</span>"
        )

    # -- the work, on the long runner's thread -----------------------------------------------------------

    def _work(self, task, view, confirmed, sanity) -> None:
        if sanity is not None:
            image, layer, target, _ = view
            result = self.session.sanity(image, sanity, layer, target, task.checkpoint)
            self._apply(self._show_sanity, (view, sanity, result))
            task.checkpoint()
            self.task_bar.running(f"explaining with {len(self.methods)} methods…")
        self._explain(task, view, confirmed)

    def _explain(self, task, view, confirmed) -> None:
        """Every map first, the clicked ones and then the fast ones first, then the scores: a map takes 0.05
        to 15 s, the deletion and insertion curves about 1 s each, so the view fills with pictures before it
        waits on numbers."""
        image, layer, target, _ = view
        picture_view = self.session.view(image)
        order = sorted(self.methods, key=lambda item: item.name not in confirmed)
        steps = 2 * len(order)

        def stop_only(fraction, partial=None):
            task.checkpoint()

        scored = []
        for position, item in enumerate(order):
            step = scaled(task.checkpoint, position / steps, (position + 1) / steps)
            check(step, 0.0)
            if item.slow and item.name not in confirmed:
                seconds = self.session.explanation_estimate(image, item.name, layer, stop_only)
                if seconds > CLICK_ABOVE_SECONDS:
                    self._apply(self._show_gate, (view, item.name, seconds))
                    continue
            importance = self.session.explanation(image, item.name, layer, target, step)
            picture = render.overlay(picture_view, importance, alpha=0.5, cmap="jet")
            self._apply(self._show_map, (view, item.name, picture))
            if bool(importance.any()):
                scored.append(item)
            else:
                # No pixel ranks above another: deletion and insertion would only follow row order.
                self._apply(self._show_flat, (view, item.name))
        for position, item in enumerate(scored, start=len(order)):
            step = scaled(task.checkpoint, position / steps, (position + 1) / steps)
            check(step, 0.0)
            scores = self.session.faithfulness(image, item.name, layer, target, step)
            self._apply(self._show_scores, (view, item.name, scores))

    # -- showing results (under the panel's apply lock) --------------------------------------------------

    def _current(self, view) -> bool:
        return view == self._view

    def _finished(self, method: str) -> bool:
        return method in self.scores or method in self._flat

    def _show_map(self, result) -> None:
        view, method, picture = result
        if not self._current(view):
            return
        self._maps[method] = picture
        self._gated.pop(method, None)
        self.cards[method][1].value = render.to_png(picture)
        if not self._stopped:
            # After a Stop, a map that was on its way still shows; its curves wait for the button.
            self.compute_buttons[method].layout.display = "none"

    def _show_gate(self, result) -> None:
        view, method, seconds = result
        if not self._current(view):
            return
        self._gated[method] = seconds
        _, picture, curves, text = self.cards[method]
        about = drawing.duration(seconds)
        picture.value = placeholder_png(CARD_SIDE, CARD_SIDE, f"about {about}\non this machine:\npress compute")
        curves.layout.display = "none"
        text.value = (
            f"<span style='font-size:11px;color:#555'>waits for a click: about {about} on this machine, "
            "so the other cards come first</span>"
        )
        button = self.compute_buttons[method]
        button.description = f"compute (about {about})"
        button.layout.display = None

    def _show_stopped(self, _) -> None:
        for name, (_, picture, curves, text) in self.cards.items():
            if name in self._gated or self._finished(name):
                continue
            if name not in self._maps:
                picture.value = placeholder_png(CARD_SIDE, CARD_SIDE, "stopped")
                text.value = "<span style='font-size:11px;color:#777'>stopped</span>"
            curves.value = placeholder_png(CARD_SIDE, CURVES_HEIGHT, "curves: stopped")
            button = self.compute_buttons[name]
            button.description = "compute"
            button.layout.display = None

    def _show_scores(self, result) -> None:
        view, method, scores = result
        if not self._current(view):
            return
        self.scores[method] = scores
        _, _, curves, text = self.cards[method]
        curves.value = render.to_png(render.curves_picture({"deletion": scores.deletion, "insertion": scores.insertion}))
        curves.layout.display = None
        text.value = (
            f"<span style='font-size:11px'>deletion AUC <b>{scores.deletion_auc:.3f}</b> · "
            f"insertion AUC <b>{scores.insertion_auc:.3f}</b></span>"
        )
        self.compute_buttons[method].layout.display = "none"
        self._sort()

    def _show_flat(self, result) -> None:
        view, method = result
        if not self._current(view):
            return
        self._flat.add(method)
        _, _, curves, text = self.cards[method]
        curves.layout.display = "none"
        text.value = (
            f"<span style='font-size:11px;color:#c62828'>zero everywhere at {drawing.escape(view[1])}: the weighted "
            "sum of the layer's maps is negative at every place, or the layer's maps are one place (1 × 1), so there "
            "is nothing to score. A layer after an activation, with maps of several places, has something to show</span>"
        )

    def _sort(self) -> None:
        order = [item.name for item in self.methods]
        if self.order.value != "computed":
            scored = [name for name in order if name in self.scores]
            if self.order.value == "deletion":
                scored.sort(key=lambda name: self.scores[name].deletion_auc)
            else:
                scored.sort(key=lambda name: -self.scores[name].insertion_auc)
            order = scored + [name for name in order if name not in self.scores]
        self.grid.children = [self.cards[name][0] for name in order]

    def _show_sanity(self, result) -> None:
        view, method, sanity = result
        if not self._current(view):
            return
        self._sanity_pending = None
        picture_view = self.session.view(view[0])
        # The maps are the cards' own (methods.explanation, one scaling): the strip's first is the card's map.
        maps = [render.overlay(picture_view, single, alpha=0.5, cmap="jet") for single in (sanity.original, *sanity.maps)]
        self.sanity_strip.value = render.to_png(render.strip(maps))
        self.sanity_strip.layout.display = "block"
        # A constant map has no rank correlation (NaN); the sparkline draws it at 0 and the verdict says why.
        correlations = np.nan_to_num(np.asarray(sanity.rank_correlations, dtype=np.float64), nan=0.0)
        self.sanity_curve.value = render.to_png(
            render.curves_picture(
                {"rank correlation": np.clip(correlations, 0, 1), "SSIM": np.clip(np.asarray(sanity.ssim), 0, 1)},
                width=max(160, 100 * len(maps)),
                height=64,
            )
        )
        self.sanity_curve.layout.display = "block"
        layers = ", ".join(sanity.layers[:3]) + (", …" if len(sanity.layers) > 3 else "")
        self.sanity_title.value = (
            f"<b style='font-size:13px'>sanity check of {drawing.escape(LABELS[method])}</b> "
            f"<span style='font-size:12px'>the original map, then the map after randomising, cumulatively from the "
            f"top: {drawing.escape(layers)}</span>"
        )
        verdict = sanity_verdict(sanity)
        colour, words = VERDICTS[verdict.outcome]
        self.sanity_verdict.value = (
            f"<div class='cnnviz-sanity-{verdict.outcome}' style='font-size:13px;color:{colour}'><b>{words}</b> "
            f"({drawing.escape(verdict.reason)}; <span style='color:#6a1b9a'>rank correlation</span> and "
            "<span style='color:#2e7d32'>SSIM</span> above)</div>"
        )

    def picture(self) -> bytes:
        shown = [self._maps[item.name] for item in self.methods if item.name in self._maps]
        return render.to_png(render.strip(shown, side=CARD_SIDE)) if shown else b""
