"""Mistakes: the confusion matrix, a gallery of the misclassified images, each class's accuracy and the most
frequent confusions. The gallery also shows any set of images it is handed (a finding of the Diagnose tab),
right or wrong, until the user goes back to the mistakes."""

from __future__ import annotations

import ipywidgets as widgets
import traitlets
import numpy as np

from .. import render
from ..checkpoint import scaled
from . import drawing
from .base import Panel
from .charts import ConfusionMatrix
from .picture import ClickablePicture

GALLERY_PAGE = 24
GALLERY_SIDE = 72
# The gallery takes the room the matrix leaves, in columns of one picture and its caption: at least 4 beside the
# matrix (or it goes below it), at most 8 (3 rows of a page).
GALLERY_COLUMN = GALLERY_SIDE + 28
GALLERY_MIN_COLUMNS = 4
GALLERY_MAX_COLUMNS = 8
ALL = -1
# Under the matrix and the gallery, which leave no room beside them at 900 px: the accuracy of each class and the
# most frequent confusions, in columns this wide (the pairs name two classes each: ImageNet's fit in 420 px);
# the list of classes scrolls past ACCURACY_HEIGHT (100 classes would take 2,000 px).
ACCURACY_WIDTH = 300
CONFUSED_WIDTH = 420
ACCURACY_HEIGHT = 220
CONFUSED_PAIRS = 10
# While the pass reads a large test set, the matrix and the gallery show the images read so far this often.
PARTIAL_SECONDS = 2.0
ORDERS = (
    ("most confident first", "confident"),
    ("least confident first", "hesitant"),
    ("hardest first", "hardness"),
    ("most likely mislabelled first", "mistakenness"),
)
"""The gallery's orders. Hardness and mistakenness are FiftyOne's (see ``Diagnosis.hardness`` and
``Diagnosis.mistakenness``), highest first; they come from the diagnosis, computed once per weights."""
SCORED_ORDERS = ("hardness", "mistakenness")
"""The orders by a score of the diagnosis, named after its attribute."""
RIGHT_COLOR = "#2e7d32"
WRONG_COLOR = "#c62828"


def accuracy_html(evaluation, names: list[str]) -> str:
    """One row per true class: its name, the share of its images classified right and their counts; worst first,
    classes without images last."""
    accuracy = evaluation.per_class_accuracy
    hits, totals = np.diag(evaluation.confusion), evaluation.confusion.sum(axis=1)
    rows = []
    # NaN (no images) sorts last; the stable sort keeps class order among equal accuracies.
    for k in np.argsort(accuracy, kind="stable"):
        value = f"{drawing.percent(accuracy[k])} ({hits[k]}/{totals[k]})" if totals[k] else "no images"
        rows.append(
            "<div style='display:flex;justify-content:space-between;gap:8px;font-size:12px;line-height:1.5'>"
            f"<span style='overflow-wrap:anywhere'>{drawing.escape(names[k])}</span>"
            f"<span style='white-space:nowrap'>{value}</span></div>"
        )
    return "".join(rows)


def confusion_label(names: list[str], true: int, predicted: int, images: int) -> str:
    """A most-confused pair as a button says it (plain text: buttons do not read HTML)."""
    return f"true {names[true]} → predicted {names[predicted]}: {images} image{'' if images == 1 else 's'}"


class MistakesPanel(Panel):
    """Which images the model gets wrong: a click on a matrix cell, or on one of the most-confused pairs under it,
    filters the gallery; a click on an image selects it."""

    title = "Mistakes"
    caption = "the images the model gets wrong, most confident mistakes first; click a cell of the matrix to see only those"
    cell = traitlets.Any(None, help="the (true class, predicted class) cell of the matrix clicked last, or None")

    def _build(self):
        # Never wider than the panel: a matrix of many classes scrolls in its box rather than under the gallery.
        self.matrix_box = widgets.Box(layout=widgets.Layout(flex="0 1 auto", max_width="100%", overflow="auto"))
        self.true_class = widgets.Dropdown(description="true", layout=widgets.Layout(width="220px"))
        self.predicted_class = widgets.Dropdown(description="predicted", layout=widgets.Layout(width="220px"))
        self.order = widgets.Dropdown(options=ORDERS, value="confident", description="order", layout=widgets.Layout(width="300px"))
        self.showing = widgets.HTML()
        self.back = widgets.Button(
            description="back to the mistakes", icon="arrow-left", tooltip="list the mistakes again", layout=widgets.Layout(width="190px")
        )
        self.showing_bar = widgets.HBox(
            [self.showing, self.back], layout=widgets.Layout(flex_flow="row wrap", align_items="center", grid_gap="8px", display="none")
        )
        self.showing_bar.add_class("cnnviz-mistakes-showing")
        self.previous = widgets.Button(icon="chevron-left", tooltip="previous page", layout=widgets.Layout(width="36px"))
        self.next = widgets.Button(icon="chevron-right", tooltip="next page", layout=widgets.Layout(width="36px"))
        self.summary = widgets.HTML()
        self.slots = [ClickablePicture(width=GALLERY_SIDE, pixelated=True) for _ in range(GALLERY_PAGE)]
        self.captions = [widgets.HTML(layout=widgets.Layout(width=f"{GALLERY_SIDE + 24}px")) for _ in range(GALLERY_PAGE)]
        self.cards = [
            widgets.VBox([slot, caption], layout=widgets.Layout(align_items="center", margin="2px", display="none"))
            for slot, caption in zip(self.slots, self.captions)
        ]
        for position, slot in enumerate(self.slots):
            slot.on_point(lambda x, y, kind, position=position: self._clicked(position))
        self.gallery = widgets.GridBox(
            self.cards, layout=widgets.Layout(grid_template_columns=f"repeat(auto-fill, {GALLERY_COLUMN}px)")
        )
        self.gallery.add_class("cnnviz-mistakes-gallery")
        self.class_accuracy = widgets.HTML(
            layout=widgets.Layout(max_height=f"{ACCURACY_HEIGHT}px", overflow="auto", margin="0", padding="0 6px 0 0")
        )
        self.confused_heading = widgets.HTML()
        self.pair_buttons = [
            widgets.Button(layout=widgets.Layout(width="100%", height="24px", margin="1px 0", display="none"))
            for _ in range(CONFUSED_PAIRS)
        ]
        accuracy = widgets.VBox(
            [widgets.HTML("<span style='font-size:12px'><b>accuracy per class</b>, worst first</span>"), self.class_accuracy],
            layout=widgets.Layout(width=f"{ACCURACY_WIDTH}px", max_width="100%"),
        )
        accuracy.add_class("cnnviz-class-accuracy")
        confused = widgets.VBox(
            [self.confused_heading, *self.pair_buttons], layout=widgets.Layout(width=f"{CONFUSED_WIDTH}px", max_width="100%")
        )
        confused.add_class("cnnviz-most-confused")
        # Hidden until the first evaluation: without labels there is nothing to sum up.
        self.summaries = widgets.HBox(
            [accuracy, confused],
            layout=widgets.Layout(flex_flow="row wrap", grid_gap="16px", align_items="flex-start", display="none"),
        )
        self.evaluation = None
        self.matrix: ConfusionMatrix | None = None
        self._pairs: list[tuple[int, int, int]] = []
        self._shown: np.ndarray = np.zeros(0, dtype=np.int64)
        self._page = 0
        # The images handed to show_images and what they are, or None while the gallery lists the mistakes.
        self._handed: tuple[np.ndarray, str] | None = None
        # {order: (N,) score}: hardness and mistakenness, from the diagnosis of the weights of now.
        self._scores: dict[str, np.ndarray] = {}
        self.filters = widgets.HBox([self.true_class, self.predicted_class, self.order], layout=widgets.Layout(flex_flow="row wrap"))
        paging = widgets.HBox([self.previous, self.next, self.summary], layout=widgets.Layout(align_items="center"))
        gallery = widgets.VBox(
            [self.filters, self.showing_bar, paging, self.gallery],
            layout=widgets.Layout(
                flex=f"1 1 {GALLERY_MIN_COLUMNS * GALLERY_COLUMN}px", max_width=f"{GALLERY_MAX_COLUMNS * GALLERY_COLUMN}px"
            ),
        )
        return [
            widgets.Box(
                [self.matrix_box, gallery], layout=widgets.Layout(flex_flow="row wrap", grid_gap="16px", align_items="flex-start")
            ),
            self.summaries,
        ]

    def _start(self) -> None:
        self.previous.on_click(lambda _: self._turn(-1))
        self.next.on_click(lambda _: self._turn(1))
        for position, button in enumerate(self.pair_buttons):
            button.on_click(lambda _, position=position: self._pair_clicked(position))
        self.observe(lambda _: self._highlight(), "image")
        for control in (self.true_class, self.predicted_class):
            control.observe(lambda _: self._filters_changed(), "value")
        self.order.observe(lambda _: self._order_changed(), "value")
        self.back.on_click(lambda _: self._filters_changed())
        if self.session.labels is None:
            self.show_error(ValueError("labels: the mistakes view needs the true class of each image; pass labels="))
            return
        self.refresh()

    def refresh(self) -> None:
        """Classify every image (on the model's replica) and show the matrix and the gallery; sorted by hardness
        or mistakenness, also diagnose them (once per weights)."""
        if self.order.value in SCORED_ORDERS and self.order.value not in self._scores:
            text = "classifying and scoring the images"
            self.request_long(text, self._evaluate_and_score, self._show_evaluation_and_scores, count=self.session.count)
            return
        self.request_long("classifying", self._evaluate, self._show_evaluation, count=self.session.count)

    def recompute(self) -> None:
        """New weights: a new evaluation, and new hardness and mistakenness when the gallery is sorted by them."""
        self._scores = {}
        self.refresh()

    def show_images(self, indices, title: str) -> None:
        """List exactly the images ``indices`` (right or wrong, in that order) under the line "showing:
        ``title``", until the user goes back to the mistakes or clicks the matrix."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        outside = indices[(indices < 0) | (indices >= self.session.count)]
        if len(outside):
            raise ValueError(f"indices: image {outside[0]} out of range 0..{self.session.count - 1}")
        self._handed = (indices, str(title))
        self._filter()

    def _filters_changed(self) -> None:
        if self._settling:
            return
        self._handed = None
        self._filter()

    def _order_changed(self) -> None:
        if self.order.value in SCORED_ORDERS and self.order.value not in self._scores:
            # The evaluation comes along (from the cache): one long request, so neither stops the other.
            self.refresh()
            return
        self._filter()

    def _evaluate(self, task, share: float = 1.0):
        """The evaluation, shown as the pass reads the images; its progress fills ``share`` of the bar."""

        def filling(fraction, so_far=None) -> None:
            task.checkpoint(fraction * share)
            if so_far is not None:
                self._apply(self._show_evaluation, so_far)

        return self.session.evaluation(filling, partial_every=PARTIAL_SECONDS)

    def _evaluate_and_score(self, task):
        evaluation = self._evaluate(task, share=0.5)
        diagnosis = self.session.diagnosis(scaled(task.checkpoint, 0.5, 1.0))
        return evaluation, {order: np.asarray(getattr(diagnosis, order)) for order in SCORED_ORDERS}

    def _show_evaluation_and_scores(self, result) -> None:
        evaluation, self._scores = result
        self._show_evaluation(evaluation)

    def _show_evaluation(self, evaluation) -> None:
        """Show an evaluation: the first one, a pass's evaluation so far, or a new one after the weights
        changed. The matrix is updated in place and the filters the user chose stay."""
        self.evaluation = evaluation
        names = self.session.class_names
        # One _filter at the end, not one per control: the controls' own observers wait.
        with self.settling(then=self._filter):
            if self.matrix is None:
                choices = [("all", ALL)] + [(name, k) for k, name in enumerate(names)]
                self.true_class.options = choices
                self.predicted_class.options = choices
                self.true_class.value = self.predicted_class.value = ALL
                self.matrix = ConfusionMatrix(evaluation.confusion, names)
                self.matrix_box.children = [self.matrix]
                self.matrix.observe(self._cell_chosen, "selection")
            else:
                self.matrix.update(evaluation.confusion)
        self.class_accuracy.value = accuracy_html(evaluation, names)
        self._pairs = evaluation.most_confused(CONFUSED_PAIRS)
        self.confused_heading.value = (
            "<span style='font-size:12px'><b>most confused</b>, click one to see its images</span>"
            if self._pairs
            else "<span style='font-size:12px'><b>most confused</b>: none, every image is classified right</span>"
        )
        for button, pair in zip(self.pair_buttons, [*self._pairs, *[None] * CONFUSED_PAIRS]):
            if pair is None:
                button.layout.display = "none"
                continue
            button.description = button.tooltip = confusion_label(names, *pair)
            button.layout.display = None
        self.summaries.layout.display = "flex"

    def _pair_clicked(self, position: int) -> None:
        true, predicted, _ = self._pairs[position]
        # Through the matrix's selection, as a click on its cell: the cell is outlined, the gallery filtered.
        self.matrix.selection = (true, predicted)

    def _cell_chosen(self, change) -> None:
        cell = change["new"]
        true, predicted = (ALL, ALL) if cell is None else cell
        self._handed = None
        with self.settling(then=self._filter):
            self.true_class.value = true
            self.predicted_class.value = predicted
        # Said once the gallery lists that cell's images: whoever follows the cell can pick from them.
        self.cell = None if cell is None else (int(cell[0]), int(cell[1]))

    def _filter(self) -> None:
        if self._settling or self.evaluation is None:
            return
        handed = self._handed is not None
        self.filters.layout.display = "none" if handed else "flex"
        self.showing_bar.layout.display = "flex" if handed else "none"
        if handed:
            indices, title = self._handed
            # A pass still reading the set has not classified every image handed yet: those wait for it.
            self._shown = indices[indices < len(self.evaluation.labels)]
            count = len(indices)
            self.showing.value = (
                f"<span style='font-size:13px'>showing: <b>{drawing.escape(title)}</b> · {count:,} image{'' if count == 1 else 's'}</span>"
            )
        else:
            true = None if self.true_class.value in (None, ALL) else self.true_class.value
            predicted = None if self.predicted_class.value in (None, ALL) else self.predicted_class.value
            self._shown = self._ordered(self.evaluation.mistakes(true=true, predicted=predicted))
        self._page = 0
        self._draw()

    def _ordered(self, mistakes: np.ndarray) -> np.ndarray:
        """The mistakes (most confident first, as ``Evaluation.mistakes`` gives them) in the order chosen; by a
        score not computed yet, as they are until it comes."""
        order = self.order.value
        if order == "hesitant":
            return mistakes[::-1]
        if order in self._scores:
            # Stable: among equal scores the most confident mistake comes first.
            return mistakes[np.argsort(-self._scores[order][mistakes], kind="stable")]
        return mistakes

    def _turn(self, step: int) -> None:
        pages = max(1, -(-len(self._shown) // GALLERY_PAGE))
        self._page = (self._page + step) % pages
        self._draw()

    def _draw(self) -> None:
        evaluation, names = self.evaluation, self.session.class_names
        start = self._page * GALLERY_PAGE
        page = self._shown[start : start + GALLERY_PAGE]
        with self.hold_sync():
            for slot, caption, card, index in zip(self.slots, self.captions, self.cards, [*page, *[None] * GALLERY_PAGE]):
                if index is None:
                    card.layout.display = "none"
                    continue
                slot.value = render.thumbnail(self.session.pictures[index], GALLERY_SIDE)
                slot.hint = f"image {self.session.names[index]}"
                slot.highlighted = int(index) == self.image
                said = WRONG_COLOR if evaluation.labels[index] != evaluation.predictions[index] else RIGHT_COLOR
                caption.value = (
                    "<div style='font-size:11px;line-height:1.3;text-align:center'>"
                    f"true <b>{drawing.escape(names[evaluation.labels[index]])}</b><br>"
                    f"said <b style='color:{said}'>{drawing.escape(names[evaluation.predictions[index]])}</b> "
                    f"{evaluation.confidence[index]:.0%}</div>"
                )
                card.layout.display = "flex"
        total = len(self._shown)
        wrong = int((~evaluation.correct).sum())
        shown = f"{start + 1}–{start + len(page)} of {total}" if total else "none"
        read = len(evaluation.labels)
        so_far = f" · so far: {read:,} of {self.session.count:,} images read" if read < self.session.count else ""
        what = "images" if self._handed is not None else "mistakes"
        self.summary.value = (
            f"<span style='font-size:12px'>{what} shown: {shown} · accuracy {evaluation.accuracy:.1%} "
            f"({wrong} wrong of {read:,}){so_far} · click an image to select it</span>"
        )

    @property
    def shown(self) -> np.ndarray:
        """Indices of the images the gallery lists (the mistakes under the current filters, or the images handed
        to :meth:`show_images`), in gallery order."""
        return self._shown.copy()

    def _clicked(self, position: int) -> None:
        index = self._page * GALLERY_PAGE + position
        if index < len(self._shown):
            self.image = int(self._shown[index])

    def _highlight(self) -> None:
        start = self._page * GALLERY_PAGE
        for position, slot in enumerate(self.slots):
            index = start + position
            slot.highlighted = index < len(self._shown) and int(self._shown[index]) == self.image

    def picture(self) -> bytes:
        start = self._page * GALLERY_PAGE
        page = self._shown[start : start + GALLERY_PAGE]
        if not len(page):
            return b""
        tiles = np.stack([render.resize(render.to_rgb(self.session.pictures[i]), GALLERY_SIDE, GALLERY_SIDE) for i in page])
        return render.to_png(render.arrange(tiles, columns=6, padding=4))
