"""Changes: what changed from a reference model (an older checkpoint, a quantized or pruned copy, another
architecture) to the model, on the same labelled images.

At the top, both accuracies and the flip rates; then each class's change of accuracy as sorted bars and the
change of the confusion matrix as a diverging heatmap (a click on a cell keeps the flips of that cell); the
flips themselves, newly wrong, newly right or wrong in a new way, as a gallery (a click makes an image the
current one); both models' Grad-CAMs of the current image for its true class and each model's prediction,
side by side; and the linear CKA between every conv layer of the two models, a click on a cell showing
those two layers' feature maps of the current image.

Everything comes from :class:`~cnnviz_widgets.session.pair.SessionPair`: each model's pass over the images
(shared with the other tabs and the disk cache), computed on each model's private replica.
"""

from __future__ import annotations

from typing import NamedTuple

import bqplot
import ipywidgets as widgets
import numpy as np
import traitlets

from .. import render
from ..comparison import FLIP_KINDS, ModelDiff
from ..session.pair import SessionPair, reference_session
from . import drawing
from .base import LayerChooser, Panel, readable, shows_errors
from .charts import HeatGrid
from .picture import ClickablePicture

KIND_LABELS = {"newly_wrong": "newly wrong", "newly_right": "newly right", "changed_wrong": "wrong in a new way"}
KIND_HINTS = {
    "newly_wrong": "right under the reference, wrong under this model: the regressions",
    "newly_right": "wrong under the reference, right under this model",
    "changed_wrong": "wrong under both, with different predictions",
}
FLIP_PAGE = 16
FLIP_SIDE = 64
MAP_SIDE = 150
BARS_SHOWN = 30
"""Classes drawn in the per-class bars: all of them up to this many, else the half most lost and the half most gained."""
BAR_PIXELS = 20
LAYER_MAPS_WIDTH = 200
FEATURE_MAPS_SHOWN = 16
"""Each layer's most active maps shown for a cell of the CKA heatmap."""
RIGHT_COLOR = "#2e7d32"
WRONG_COLOR = "#c62828"
REFERENCE_COLOR = "#757575"
MODEL_COLOR = "#1976d2"
DELTA_COLORS = ["#2166ac", "#f7f7f7", "#b2182b"]
CKA_COLORS = ["#ffffff", "#9ecae1", "#4292c6"]
"""Light enough at 1 for the value written on a cell to stay readable."""
AGREEMENT_NAME = "neighbours shared with the reference"


class _Maps(NamedTuple):
    """Both models' maps of one image: one column per class explained, the reference's row above the model's."""

    image: int
    classes: list[int]
    pictures: list[list[bytes]]
    captions: list[list[str]]
    tiles: list[np.ndarray]


class _LayerPair(NamedTuple):
    """One cell of the CKA heatmap on one image: the two layers' most active feature maps."""

    image: int
    layer_a: str
    layer_b: str
    cka: float
    pictures: tuple[bytes, bytes]
    captions: tuple[str, str]
    tiles: tuple[np.ndarray, np.ndarray]


def _percent(value: float) -> str:
    return f"{value:.1%}"


def summary_html(diff: ModelDiff) -> str:
    """Both accuracies as bars on one scale, the change in points, and the flips of each kind with their rates."""

    def bar(label: str, value: float, colour: str) -> str:
        return (
            "<div style='display:flex;align-items:center;gap:8px;font-size:12px;line-height:1.7'>"
            f"<span style='width:90px;flex:none'>{label}</span>"
            f"<div style='background:#eee;width:240px;height:10px;flex:none'><div style='background:{colour};"
            f"width:{value * 240:.0f}px;height:10px'></div></div><b>{_percent(value)}</b></div>"
        )

    change = (diff.accuracy_b - diff.accuracy_a) * 100
    counts = diff.flips["kind"].value_counts()
    kinds = " · ".join(
        f"<span title='{KIND_HINTS[kind]}'>{KIND_LABELS[kind]} <b>{int(counts.get(kind, 0)):,}</b></span>" for kind in FLIP_KINDS
    )
    return (
        f"<div style='font-size:13px;margin-bottom:2px'>accuracy on {diff.count:,} images "
        f"({'+' if change >= 0 else '−'}{abs(change):.1f} points)</div>"
        + bar("reference", diff.accuracy_a, REFERENCE_COLOR)
        + bar("this model", diff.accuracy_b, MODEL_COLOR)
        + "<div style='font-size:12px;line-height:1.7'>"
        f"negative flip rate <b style='color:{WRONG_COLOR}'>{_percent(diff.negative_flip_rate)}</b> · "
        f"positive flip rate <b style='color:{RIGHT_COLOR}'>{_percent(diff.positive_flip_rate)}</b> · {kinds} · "
        f"{AGREEMENT_NAME}: median <b>{np.median(diff.embedding_agreement):.0%}</b> of {diff.neighbours}</div>"
    )


def shown_classes(per_class) -> np.ndarray:
    """The classes the bars show, most lost first: every class with images, or the ends of that order."""
    ranked = per_class.dropna(subset=["delta"]).sort_values("delta", kind="stable").index.to_numpy()
    if len(ranked) <= BARS_SHOWN:
        return ranked
    return np.concatenate([ranked[: BARS_SHOWN // 2], ranked[-(BARS_SHOWN // 2) :]])


def flip_order(flips, kind: str, cell: tuple[int, int] | None) -> np.ndarray:
    """The image indices of the flips of ``kind`` (all kinds for a confusion cell ``(true, predicted)``:
    the flips with that true class that either model predicts as ``predicted``)."""
    if cell is None:
        chosen = flips[flips["kind"] == kind]
    else:
        true, predicted = cell
        chosen = flips[(flips["label"] == true) & ((flips["prediction_a"] == predicted) | (flips["prediction_b"] == predicted))]
    return chosen["index"].to_numpy(dtype=np.int64)


def most_active(maps, count: int) -> np.ndarray:
    """The ``count`` channels of ``maps (C, h, w)`` with the largest mean activation, strongest first."""
    means = maps.float().mean(dim=(1, 2)).numpy()
    return np.argsort(-means, kind="stable")[:count]


class ModelDiffPanel(Panel):
    """What changed from ``reference`` to ``model`` on the same labelled images (see the module docstring).

    reference: the model compared against (the older one); reference_preprocess: its preprocessing, when it
        reads other inputs than ``model`` (another size or normalisation); by default ``preprocess``.
    reference_session: instead of ``reference``, a :class:`~cnnviz_widgets.session.Session` of it on the
        same images (the dashboard shares its own).
    The other arguments are :class:`~.base.Panel`'s. Neither model is touched: both run on private replicas.

    diff: the :class:`~cnnviz_widgets.comparison.ModelDiff` shown, or None before the first.
    similarity: the CKA DataFrame shown (rows: the reference's conv layers), or None before it is computed.
    kind: which flips the gallery shows (``"newly_wrong"``, ``"newly_right"`` or ``"changed_wrong"``).
    layer: the model's conv layer the Grad-CAMs explain (the reference uses the layer of the same name when
        it has one, else its own default).
    projector_requested: counts the clicks on "colour the Projector"; the dashboard follows it.
    """

    title = "Changes"
    caption = "what changed from the reference model to this one: accuracy, flips, classes, confusions, maps and layers"
    kind = traitlets.Enum(FLIP_KINDS, default_value="newly_wrong", help="the flips the gallery shows")
    layer = traitlets.Unicode(help="the model's conv layer the Grad-CAMs explain")
    diff = traitlets.Any(None, help="the ModelDiff shown, or None")
    projector_requested = traitlets.Int(0, help="clicks on 'colour the Projector by it'")

    def __init__(
        self, model=None, images=None, preprocess=None, class_names=None, labels=None, *, reference=None,
        reference_preprocess=None, reference_session=None, output=None, cache=None, cache_size=None, session=None,
        active=True,
    ):
        if reference_session is None and reference is None:
            raise TypeError("reference: give the model to compare with (reference=) or its reference_session=")
        self._reference = (reference, reference_preprocess or preprocess, output, cache, cache_size)
        self._owns_reference = reference_session is None
        self.reference_session = reference_session
        super().__init__(
            model, images, preprocess, class_names, labels, output=output, cache=cache, cache_size=cache_size,
            session=session, active=active,
        )
        if self._owns_reference:
            self.reference_session.watch(self.reference_changed)

    def _build(self):
        if self.reference_session is None:
            reference, preprocess, output, cache, cache_size = self._reference
            self.reference_session = reference_session(reference, self.session, preprocess, output=output, cache=cache, cache_size=cache_size)
        self.pair = SessionPair(self.reference_session, self.session)
        self.summary = widgets.HTML()
        self.summary.add_class("cnnviz-changes-summary")
        self.projector_button = widgets.Button(
            description="colour the Projector by it", icon="cube", tooltip=f"colour each image in the Projector by its {AGREEMENT_NAME}",
            layout=widgets.Layout(width="220px", display="none"),
        )
        self.projector_button.add_class("cnnviz-changes-projector")
        self.bars = self._bars_figure()
        self.delta_box = widgets.Box(layout=widgets.Layout(flex="none"))
        self.delta_box.add_class("cnnviz-changes-confusion")
        self.delta: HeatGrid | None = None
        charts = widgets.HBox([self.bars, self.delta_box], layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start", grid_gap="8px"))
        legend = widgets.HTML(
            "<div style='font-size:12px;color:#444'>confusion change: <b style='color:#b2182b'>red</b> cells hold more "
            "images under this model than under the reference, <b style='color:#2166ac'>blue</b> ones fewer · click a "
            "cell to see its flips</div>"
        )
        self.kind_buttons = widgets.ToggleButtons(
            options=[(KIND_LABELS[kind], kind) for kind in FLIP_KINDS], value=self.kind, style={"button_width": "180px"}
        )
        self.kind_buttons.add_class("cnnviz-changes-kinds")
        self.cell_note = widgets.HTML()
        self.all_flips = widgets.Button(description="all flips", icon="times", layout=widgets.Layout(width="110px", display="none"))
        self.previous = widgets.Button(icon="chevron-left", tooltip="previous flips", layout=widgets.Layout(width="36px"))
        self.next = widgets.Button(icon="chevron-right", tooltip="next flips", layout=widgets.Layout(width="36px"))
        self.page_label = widgets.HTML()
        self.gallery = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.gallery.add_class("cnnviz-changes-flips")
        self.maps_title = widgets.HTML()
        self.layer_chooser = LayerChooser(self.session, description="Grad-CAM layer", style={"description_width": "initial"})
        self.maps_grid = widgets.GridBox(layout=widgets.Layout(grid_gap="4px"))
        self.maps_grid.add_class("cnnviz-changes-maps")
        self.similarity_box = widgets.Box(layout=widgets.Layout(flex="none"))
        self.similarity_box.add_class("cnnviz-changes-cka")
        self.similarity_grid: HeatGrid | None = None
        self.layer_title = widgets.HTML()
        self.layer_pictures = [ClickablePicture(width=0) for _ in range(2)]
        self.layer_captions = [widgets.HTML() for _ in range(2)]
        layer_maps = widgets.HBox(
            [widgets.VBox([caption, picture]) for caption, picture in zip(self.layer_captions, self.layer_pictures)],
            layout=widgets.Layout(flex_flow="row wrap", grid_gap="12px"),
        )
        layer_maps.add_class("cnnviz-changes-layer-maps")
        self.diff = None
        self.similarity = None
        self.flip_slots: list[ClickablePicture] = []
        self.shown_flips = np.zeros(0, dtype=np.int64)
        self._page = 0
        self._cell: tuple[int, int] | None = None
        self._maps: _Maps | None = None
        self._layer_pair: _LayerPair | None = None
        self._chosen_layers: tuple[int, int] | None = None

        def heading(text: str) -> widgets.HTML:
            return widgets.HTML(f"<div style='font-size:13px;margin-top:10px'>{text}</div>")

        paging = widgets.HBox([self.previous, self.next, self.page_label, self.cell_note, self.all_flips], layout=widgets.Layout(align_items="center", grid_gap="6px"))
        return [
            widgets.HBox([self.summary, self.projector_button], layout=widgets.Layout(flex_flow="row wrap", align_items="flex-end", grid_gap="16px")),
            charts,
            legend,
            heading("<b>flips</b>: the images whose prediction changed in a way that matters · click one to explain it below"),
            self.kind_buttons,
            paging,
            self.gallery,
            self.maps_title,
            self.layer_chooser,
            self.maps_grid,
            heading(
                "<b>how alike the layers are</b>: linear CKA between every conv layer of the reference (rows) and of this "
                "model (columns), 1 when two layers see the images alike · click a cell to see both layers' maps"
            ),
            widgets.HBox([self.similarity_box, widgets.VBox([self.layer_title, layer_maps])], layout=widgets.Layout(flex_flow="row wrap", grid_gap="12px")),
        ]

    @staticmethod
    def _bars_figure() -> bqplot.Figure:
        classes, delta = bqplot.OrdinalScale(reverse=True), bqplot.LinearScale(min=-0.1, max=0.1)
        bars = bqplot.Bars(
            x=[], y=[], color=[], orientation="horizontal", base=0.0, padding=0.2,
            scales={"x": classes, "y": delta, "color": bqplot.ColorScale(min=0, max=1, colors=[WRONG_COLOR, RIGHT_COLOR])},
            label_display=True, label_display_format="+.1%", label_font_style={"font-size": "11px", "fill": "#1a1a1a"},
            tooltip=bqplot.Tooltip(fields=["x", "y"], labels=["class", "accuracy change"], formats=["", "+.1%"]),
        )  # fmt: skip
        axes = [
            bqplot.Axis(scale=classes, side="left", grid_lines="none", tick_style={"font-size": "11px"}),
            bqplot.Axis(scale=delta, side="bottom", tick_format="+.0%", num_ticks=5, label="this model − reference", grid_lines="dashed"),
        ]
        figure = bqplot.Figure(
            marks=[bars], axes=axes, title="accuracy change per class", display_toolbar=False,
            fig_margin={"top": 40, "bottom": 48, "left": 120, "right": 56}, layout=widgets.Layout(width="420px", height="300px", flex="none"),
        )  # fmt: skip
        figure.add_class("cnnviz-changes-bars")
        return figure

    def _start(self) -> None:
        self.layer = self.session.heatmap_layer()
        traitlets.link((self, "layer"), (self.layer_chooser, "value"))
        self.kind_buttons.observe(lambda change: setattr(self, "kind", change["new"]), "value")
        self.previous.on_click(lambda _: self._turn(-1))
        self.next.on_click(lambda _: self._turn(1))
        self.all_flips.on_click(lambda _: self.show_cell(None))
        self.projector_button.on_click(lambda _: setattr(self, "projector_requested", self.projector_requested + 1))
        self.observe(lambda _: self._draw_current(), "image")
        self.observe(lambda _: self._draw_current(), "layer")
        self.refresh()

    def reference_changed(self, generation: int) -> None:
        """The reference model has new weights: say so, and compare again."""
        self.weights_changed(generation, whose="reference model")

    def recompute(self) -> None:
        self.pair.clear()
        self.refresh()

    def refresh(self) -> None:
        """Compare the two models (each one's pass over the images, once per pair of weights), then their layers."""
        count = self.session.count

        def work(task):
            with self.reference_session.replicas.request():
                return self.pair.diff(task.checkpoint)

        self.request_long(f"comparing the two models on {count:,} images", work, self._show_diff, count=2 * count)

    # -- the diff --------------------------------------------------------------------------------------

    def _show_diff(self, diff: ModelDiff) -> None:
        self.diff = diff
        self.summary.value = summary_html(diff)
        names = diff.class_names
        shown = shown_classes(diff.per_class)
        deltas = diff.per_class["delta"].to_numpy()[shown]
        bars = self.bars.marks[0]
        reach = max(float(np.abs(deltas).max()) if len(deltas) else 0.0, 0.01) * 1.3
        longest = max((len(names[k]) for k in shown), default=4)
        with self.bars.hold_sync():
            bars.scales["y"].min, bars.scales["y"].max = -reach, reach
            bars.x = [names[k] for k in shown]
            bars.y = deltas
            bars.color = (deltas > 0).astype(float)
            self.bars.fig_margin = {"top": 40, "bottom": 48, "left": min(170, 16 + round(6.5 * longest)), "right": 56}
            self.bars.layout.height = f"{90 + BAR_PIXELS * len(shown)}px"
            more = len(diff.per_class.dropna(subset=["delta"])) - len(shown)
            self.bars.title = "accuracy change per class" + (f" (the {len(shown)} largest of {len(shown) + more})" if more > 0 else "")
        reach = max(int(np.abs(diff.confusion_delta).max()), 1)
        self.delta = HeatGrid(
            diff.confusion_delta, names, names,
            bqplot.ColorScale(colors=DELTA_COLORS, min=-reach, mid=0, max=reach),
            row_title="true", column_title="predicted", title="confusion change (this model − reference)",
            tooltip=("true", "predicted", "change in images", "+d"),
        )  # fmt: skip
        self.delta.observe(lambda change: self.show_cell(change["new"]), "selection")
        self.delta_box.children = [self.delta]
        counts = diff.flips["kind"].value_counts()
        self.kind_buttons.options = [(f"{KIND_LABELS[kind]} ({int(counts.get(kind, 0)):,})", kind) for kind in FLIP_KINDS]
        if not counts.get(self.kind, 0):
            # The regressions first; when there are none, the kind of flip there is.
            self.kind = next((kind for kind in FLIP_KINDS if counts.get(kind, 0)), self.kind)
        self.kind_buttons.value = self.kind
        self._cell = None
        self._show_flips()
        self._draw_current()
        self._compare_layers()

    @traitlets.observe("kind")
    def _kind_changed(self, change) -> None:
        self.kind_buttons.value = change["new"]
        if self.diff is not None:
            self._cell = None
            self._show_flips()

    @shows_errors
    def show_cell(self, cell) -> None:
        """Keep the flips of confusion cell ``(true, predicted)`` in the gallery (None: back to the chosen kind)."""
        if self.diff is None:
            return
        if cell is not None:
            classes = self.session.num_classes
            if len(cell) != 2 or not all(isinstance(value, (int, np.integer)) and 0 <= value < classes for value in cell):
                raise ValueError(f"cell: expected (true class, predicted class), each in 0..{classes - 1}, got {cell!r}")
            cell = (int(cell[0]), int(cell[1]))
        self._cell = cell
        if self.delta is not None and self.delta.selection != cell:
            self.delta.selection = cell
        self._show_flips()

    def _show_flips(self) -> None:
        self.shown_flips = flip_order(self.diff.flips, self.kind, self._cell)
        self._page = 0
        names = self.diff.class_names
        if self._cell is None:
            self.cell_note.value = f"<span style='font-size:12px;color:#555'>{drawing.escape(KIND_HINTS[self.kind])}</span>"
            self.all_flips.layout.display = "none"
        else:
            true, predicted = self._cell
            self.cell_note.value = (
                f"<span style='font-size:12px'>flips of true <b>{drawing.escape(names[true])}</b> that either model "
                f"predicts <b>{drawing.escape(names[predicted])}</b></span>"
            )
            self.all_flips.layout.display = None
        self._show_page()

    def _turn(self, step: int) -> None:
        pages = max(1, -(-len(self.shown_flips) // FLIP_PAGE))
        self._page = (self._page + step) % pages
        self._show_page()

    def _show_page(self) -> None:
        start = self._page * FLIP_PAGE
        page = self.shown_flips[start : start + FLIP_PAGE]
        flips = self.diff.flips.set_index("index")
        names = self.diff.class_names
        cards, self.flip_slots = [], []
        for index in page:
            row = flips.loc[int(index)]
            slot = ClickablePicture(
                value=render.thumbnail(self.session.pictures[int(index)], FLIP_SIDE), width=FLIP_SIDE, pixelated=True,
                hint=f"image {self.session.names[int(index)]}",
            )
            slot.highlighted = int(index) == self.image
            slot.on_point(lambda x, y, kind, index=int(index): setattr(self, "image", index))
            self.flip_slots.append(slot)
            caption = widgets.HTML(
                "<div style='font-size:11px;line-height:1.3;text-align:center'>"
                f"true <b>{drawing.escape(names[int(row['label'])])}</b><br>"
                f"{self._said('ref.', int(row['prediction_a']), int(row['label']))}<br>"
                f"{self._said('now', int(row['prediction_b']), int(row['label']))}</div>",
                layout=widgets.Layout(width=f"{FLIP_SIDE + 28}px"),
            )
            cards.append(widgets.VBox([slot, caption], layout=widgets.Layout(align_items="center", margin="2px")))
        self.gallery.children = cards
        total = len(self.shown_flips)
        paging = total > FLIP_PAGE
        self.previous.layout.display = self.next.layout.display = None if paging else "none"
        self.page_label.value = (
            f"<span style='font-size:12px'>{start + 1}–{start + len(page)} of {total:,}</span>"
            if total
            else "<span style='font-size:12px'>none</span>"
        )

    def _said(self, who: str, predicted: int, true: int) -> str:
        """Who predicted what, green when right and red when wrong."""
        colour = RIGHT_COLOR if predicted == true else WRONG_COLOR
        return f"{who} <b style='color:{colour}'>{drawing.escape(self.diff.class_names[predicted])}</b>"

    # -- both models' maps of the current image --------------------------------------------------------

    @traitlets.validate("layer")
    def _check_layer(self, proposal):
        return self.check_layer(proposal["value"])

    def reference_layer(self) -> str:
        """The reference's conv layer matching :attr:`layer`: the same name when it has one, else its default."""
        names = dict(self.reference_session.conv_layers())
        return self.layer if self.layer in names else self.reference_session.heatmap_layer()

    def _draw_current(self) -> None:
        """Both models' Grad-CAMs of the current image and, once the CKA is shown, the chosen pair of layers'
        feature maps: one request, so that a newer image replaces both at once."""
        if self.diff is None:
            return
        image, layer, diff, chosen = self.image, self.layer, self.diff, self._chosen_layers

        def work() -> tuple[_Maps, _LayerPair | None]:
            with self.reference_session.replicas.request():
                maps = self._maps_of(image, layer, diff)
                return maps, None if chosen is None else self._layer_pair_of(image, *chosen)

        self.request(work, self._show_current)

    def _show_current(self, result) -> None:
        maps, layer_pair = result
        self._show_maps(maps)
        if layer_pair is not None:
            self._show_layer_pair(layer_pair)

    def _maps_of(self, image: int, layer: str, diff: ModelDiff) -> _Maps:
        true = int(diff.labels[image])
        predictions = (int(diff.predictions_a[image]), int(diff.predictions_b[image]))
        classes = list(dict.fromkeys([true, *predictions]))
        reference_layer = self.reference_layer()
        height, width = render.fitted_size(self.session.view(image).shape, MAP_SIDE)
        pictures, captions, tiles = [], [], []
        for session, at, who in ((self.reference_session, reference_layer, "reference"), (self.session, layer, "this model")):
            # Each model's own view: the two may crop and resize the picture differently.
            view = render.enlarged(session.view(image), MAP_SIDE)
            probabilities = session.probabilities(image)
            row_pictures, row_captions = [], []
            for target in classes:
                why = ""
                try:
                    overlay = render.resize(render.overlay(view, session.grad_cam(image, at, target)), height, width)
                except ValueError as error:
                    # One model without gradients (a quantized copy) leaves its own maps out, not the whole view.
                    overlay = render.placeholder(width, height, "no Grad-CAM")
                    why = f"<div style='color:{WRONG_COLOR}'>{drawing.escape(readable(error))}</div>"
                tiles.append(overlay)
                row_pictures.append(render.to_png(overlay))
                role = "true class" if target == true else "the reference's prediction" if target == predictions[0] else "this model's prediction"
                # Three lines for every caption, so that the pictures of a row line up however the words wrap.
                row_captions.append(
                    f"<div style='font-size:11px;line-height:1.3;min-height:4em'><b>{who}</b> · {role}<br>"
                    f"{drawing.escape(drawing.probability_label(diff.class_names[target], probabilities[target]))}{why}</div>"
                )
            pictures.append(row_pictures)
            captions.append(row_captions)
        return _Maps(image, classes, pictures, captions, tiles)

    def _show_maps(self, maps: _Maps) -> None:
        if maps.image != self.image:
            return
        self._maps = maps
        cells = []
        for row_pictures, row_captions in zip(maps.pictures, maps.captions):
            for png, caption in zip(row_pictures, row_captions):
                cells.append(
                    widgets.VBox(
                        [widgets.HTML(caption), widgets.Image(value=png, format="png", layout=widgets.Layout(width=f"{MAP_SIDE}px"))],
                        layout=widgets.Layout(width=f"{MAP_SIDE + 8}px"),
                    )
                )
        self.maps_grid.layout.grid_template_columns = f"repeat({len(maps.classes)}, {MAP_SIDE + 8}px)"
        self.maps_grid.children = cells
        self.maps_title.value = (
            f"<div style='font-size:13px;margin-top:8px'><b>both models on image {drawing.escape(self.session.names[maps.image])}</b>: "
            f"Grad-CAM at {drawing.escape(self.reference_layer())} (reference) and {drawing.escape(self.layer)} (this model)</div>"
        )
        for slot, index in zip(self.flip_slots, self.shown_flips[self._page * FLIP_PAGE :]):
            slot.highlighted = int(index) == maps.image

    # -- the layers' similarity --------------------------------------------------------------------------

    def _compare_layers(self) -> None:
        count = len(self.pair.similarity_images())

        def work(task):
            with self.reference_session.replicas.request():
                return self.pair.layer_similarity(task.checkpoint)

        self.request_long(f"comparing every conv layer of the two models on {count:,} images (CKA)", work, self._show_similarity, count=count)

    def _show_similarity(self, similarity) -> None:
        self.similarity = similarity
        rows, columns = [str(name) for name in similarity.index], [str(name) for name in similarity.columns]
        self.similarity_grid = HeatGrid(
            np.nan_to_num(similarity.to_numpy(), nan=0.0), rows, columns, bqplot.ColorScale(colors=CKA_COLORS, min=0, max=1),
            row_title="reference layer", column_title="this model's layer", title="linear CKA",
            tooltip=("reference", "this model", "CKA", ".3f"), cell_format=".2f",
        )  # fmt: skip
        self.similarity_grid.observe(lambda change: self.show_layers(*change["new"]) if change["new"] else None, "selection")
        self.similarity_box.children = [self.similarity_grid]
        self.show_layers(*(self._chosen_layers or (len(rows) - 1, len(columns) - 1)))

    @shows_errors
    def show_layers(self, row: int, column: int) -> None:
        """Show the feature maps of the reference's layer ``row`` and the model's layer ``column`` (a CKA cell)
        for the current image."""
        if self.similarity is None:
            raise ValueError("layers: the layers' similarity is not computed yet")
        rows, columns = self.similarity.shape
        if not (0 <= row < rows and 0 <= column < columns):
            raise ValueError(f"row, column: the CKA cells lie in rows 0..{rows - 1} and columns 0..{columns - 1}, got ({row}, {column})")
        self._chosen_layers = (int(row), int(column))
        if self.similarity_grid.selection != self._chosen_layers:
            self.similarity_grid.selection = self._chosen_layers
        self._draw_current()

    def _layer_pair_of(self, image: int, row: int, column: int) -> _LayerPair:
        layer_a, layer_b = str(self.similarity.index[row]), str(self.similarity.columns[column])
        pictures, captions, tiles = [], [], []
        for session, layer, who in ((self.reference_session, layer_a, "reference"), (self.session, layer_b, "this model")):
            maps = session.feature_maps(image, layer)
            strongest = most_active(maps, FEATURE_MAPS_SHOWN)
            grid, _ = render.feature_grid(maps[strongest], "per_map", "viridis", columns=4)
            tiles.append(grid)
            pictures.append(render.to_png(grid))
            captions.append(
                f"<div style='font-size:11px'><b>{who}</b> · {drawing.escape(layer)}<br>the {len(strongest)} most "
                f"active of {len(maps)} maps</div>"
            )
        return _LayerPair(image, layer_a, layer_b, float(self.similarity.iat[row, column]), tuple(pictures), tuple(captions), tuple(tiles))

    def _show_layer_pair(self, pair: _LayerPair) -> None:
        if pair.image != self.image:
            return
        self._layer_pair = pair
        for picture, caption, png, text in zip(self.layer_pictures, self.layer_captions, pair.pictures, pair.captions):
            picture.value, picture.width, caption.value = png, LAYER_MAPS_WIDTH, text
        self.layer_title.value = (
            f"<div style='font-size:12px'>image <b>{drawing.escape(self.session.names[pair.image])}</b> · CKA "
            f"<b>{pair.cka:.3f}</b> between {drawing.escape(pair.layer_a)} (reference) and {drawing.escape(pair.layer_b)} (this model)</div>"
        )

    # -- the rest --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the panel, and the reference's session when the panel made it."""
        super().close()
        if getattr(self, "_owns_reference", False) and getattr(self, "reference_session", None) is not None:
            self.reference_session.unwatch(self.reference_changed)
            self.reference_session.close()

    def picture(self) -> bytes:
        """Both models' maps of the current image, the reference's above, as on screen."""
        if self._maps is None:
            return b""
        columns = len(self._maps.classes)
        rows = [render.side_by_side(self._maps.tiles[start : start + columns]) for start in (0, columns)]
        width = max(row.shape[1] for row in rows)
        padded = [np.pad(row, ((0, 8), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
        return render.to_png(np.concatenate(padded)[:-8])
