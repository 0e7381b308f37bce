"""Diagnose: every problem the diagnosis finds in the labelled images, in one ranked list of cards.

Each card shows a finding (suspect labels, duplicates, outliers, a weak slice, a heatmap cluster apart from its
class): its kind and count, its evidence and a few of its images, with the Grad-CAM of the class in question
where the map says something. A click on a card opens its images: the panel's ``chosen`` trait says which, and
the dashboard shows them in the Mistakes gallery and selects them in the Projector.

Under the list, one class's heatmap clusters (SpRAy, :mod:`cnnviz_widgets.heatmap_clusters`): the eigengap
plot and each cluster's mean map on its mean picture. On test sets of up to ``SWEEP_LIMIT`` images, every
class is clustered in the background once the cheaper findings are shown, and the clusters that stand apart
join the list; on larger ones a class is clustered on demand, after an estimate of the time it takes.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import NamedTuple

import bqplot
import ipywidgets as widgets
import numpy as np
import traitlets
from PIL import Image

from .. import render
from ..checkpoint import Cancelled, scaled
from ..heatmap_clusters import MIN_IMAGES
from ..methods.grad_cam import CAM_METHODS
from . import drawing
from .base import LayerChooser, Panel, shows_errors
from .picture import ClickablePicture

CARD_PAGE = 8
"""Findings shown at first; "more findings" shows as many again."""
THUMBNAILS = 5
THUMBNAIL_SIDE = 64
EVIDENCE_SIDE = 96
CLUSTER_SIDE = 96
SWEEP_LIMIT = 3000
"""Up to this many images, every class's heatmaps are clustered in the background (about a Grad-CAM per image:
a minute or two for 3,000 images of a small model on two cores); above it, one class at a time, on demand."""
ESTIMATE_SAMPLES = 3
"""Maps timed to estimate how long a class's clustering takes."""
CLUSTER_METHODS = tuple((method.label, name) for name, method in CAM_METHODS.items() if name != "score-cam")
"""The maps a class's heatmaps are clustered by: the CAM family but Score-CAM, which runs the model once per
channel of the layer rather than once per batch of images."""
EIGENVALUES_SHOWN = 20
EXPORT_NAME = "diagnose-suspects.csv"
KIND_COLORS = {
    "label issues": "#c62828",
    "conflicting duplicates": "#ad1457",
    "near duplicates": "#6a1b9a",
    "outliers": "#4527a0",
    "weak slice": "#e65100",
    "heatmap cluster": "#00695c",
}
RIGHT_COLOR = "#2e7d32"
WRONG_COLOR = "#c62828"
BAR_WIDTH = 220
CARD_WIDTH = 440
"""``THUMBNAILS`` thumbnails and their captions fit in a card this wide: one column of cards at 900 px, three at 1600."""
CARDS_HEIGHT = 760


class _Card(NamedTuple):
    """What a finding's card shows, prepared off the main thread."""

    rank: int
    kind: str
    title: str
    count: int
    members: np.ndarray
    evidence: dict
    shown: np.ndarray
    thumbnails: list[bytes]
    captions: list[str]
    evidence_html: str
    evidence_png: bytes


class _Clusters(NamedTuple):
    """One class's heatmap clusters as the section shows them."""

    result: object
    pictures: list[bytes]


def decoded(png: bytes) -> np.ndarray:
    """PNG bytes as an ``(H, W, 3)`` uint8 picture (what Save PNG puts together)."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _percent(value: float) -> str:
    """A probability as a card says it: the tiny ones of suspect labels as "<0.1%", which is all they tell."""
    value = float(value)
    return "<0.1%" if 0 < value < 0.001 else f"{value:.1%}"


def accuracy_bars_html(accuracy: float, low: float, high: float, overall: float) -> str:
    """A slice's accuracy, its interval and the whole set's accuracy, as two labelled bars on one scale."""

    def bar(value: float, colour: str, label: str, interval: str = "") -> str:
        return (
            "<div style='display:flex;align-items:center;gap:6px;font-size:12px;line-height:1.6'>"
            f"<div style='position:relative;background:#eee;width:{BAR_WIDTH}px;height:10px;flex:none'>"
            f"<div style='background:{colour};width:{value * BAR_WIDTH:.0f}px;height:10px'></div>{interval}</div>"
            f"<span style='white-space:nowrap'>{label}</span></div>"
        )

    whisker = (
        f"<div style='position:absolute;left:{low * BAR_WIDTH:.0f}px;width:{max(1.0, (high - low) * BAR_WIDTH):.0f}px;"
        "top:4px;height:2px;background:#222'></div>"
    )
    return bar(accuracy, "#e65100", f"this slice {_percent(accuracy)} (95% interval {_percent(low)}–{_percent(high)})", whisker) + bar(
        overall, "#1976d2", f"every image {_percent(overall)}"
    )


def evidence_html(kind: str, evidence: dict, names: list[str]) -> str:
    """What a finding's card says of its evidence (the pictures come with it)."""

    def name(k) -> str:
        return drawing.escape(names[int(k)]) if 0 <= int(k) < len(names) else f"class {int(k)}"

    if kind == "label issues":
        given_p = np.asarray(evidence["given_probability"], dtype=np.float64)
        suggested_p = np.asarray(evidence["suggested_probability"], dtype=np.float64)

        def classes(value) -> str:
            distinct = np.unique(value)
            return f"<b>{name(distinct[0])}</b>" if len(distinct) == 1 else f"one of {len(distinct)} classes"

        return (
            f"<div style='font-size:12px'>each labelled {classes(evidence['given'])} (the model gives the label "
            f"{_percent(np.median(given_p))}, median) · the model suggests {classes(evidence['suggested'])} "
            f"({_percent(np.median(suggested_p))}, median) · the maps show where it sees the suggested class</div>"
        )
    if kind in ("conflicting duplicates", "near duplicates"):
        similarity = np.asarray(evidence["similarity"], dtype=np.float64)
        pairs = len(similarity)
        spread = f"{similarity.min():.3f}" if pairs and similarity.min() == similarity.max() else f"{similarity.min():.3f}–{similarity.max():.3f}"
        return (
            f"<div style='font-size:12px'>{pairs} pair{'' if pairs == 1 else 's'} of images the model sees alike "
            f"(cosine similarity {spread}); the first pair, side by side:</div>"
        )
    if kind == "outliers":
        score = np.asarray(evidence["score"], dtype=np.float64)
        return (
            "<div style='font-size:12px'>the farthest from their nearest neighbours in the embedding space "
            f"(mean cosine distance {score.min():.2f} to {score.max():.2f})</div>"
        )
    if kind == "weak slice":
        true, predicted = evidence["true_class"], evidence["predicted_class"]
        # The most common wrong answer can be the slice's own class: images of other labels taken for it.
        calls = "" if predicted in (true, -1) else f" the model often calls <b>{name(predicted)}</b>"
        return (
            f"<div style='font-size:12px'>images mostly of <b>{name(true)}</b>{calls}, close together in the "
            "embedding space:</div>"
            + accuracy_bars_html(evidence["accuracy"], evidence["low"], evidence["high"], evidence["overall"])
        )
    if kind == "heatmap cluster":
        return (
            f"<div style='font-size:12px'>images of <b>{name(evidence['target'])}</b> whose "
            f"{drawing.escape(evidence['method'])} maps at {drawing.escape(evidence['layer'])} look alike: "
            f"accuracy {_percent(evidence['accuracy'])} against {_percent(evidence['class_accuracy'])} for the rest of the class. "
            "Their mean map on their mean picture:</div>"
        )
    return ""


def of_member(value, position: int) -> int:
    """The class a finding's evidence gives its ``position``-th member."""
    return int(np.asarray(value)[position])


def mapped_class(kind: str, evidence: dict, position: int) -> int | None:
    """The class whose Grad-CAM a finding's ``position``-th thumbnail shows (the class the model suggests for a
    suspect label, the class clustered), or None for kinds shown as they are."""
    if kind == "label issues":
        return of_member(evidence["suggested"], position)
    if kind == "heatmap cluster":
        return int(evidence["target"])
    return None


class DiagnosePanel(Panel):
    """The problems found in the labelled images, most important first: suspect labels (confident learning),
    duplicates, outliers, weak slices and heatmap clusters (SpRAy). A click on a card opens its images.

    chosen: the finding (or heatmap cluster) opened last, as ``{"title": str, "indices": [image indices],
        "image": the image to make current, "serial": n}``; None until a click. The dashboard follows it.
    findings: the ranked findings shown (``Diagnosis.findings()``), or None before the first diagnosis.
    ``export(path)`` writes the suspects as CSV, ready for relabelling.
    """

    title = "Diagnose"
    caption = "what looks wrong in the images and their labels, most important first; click a finding to see its images"
    chosen = traitlets.Dict(allow_none=True, default_value=None, help="the finding opened last (see the class docstring), or None")

    def _build(self):
        self.summary = widgets.HTML()
        self.summary.add_class("cnnviz-diagnose-summary")
        self.export_button = widgets.Button(
            description="Export suspects", icon="file-text", tooltip="write the suspect images as CSV, ready for relabelling",
            layout=widgets.Layout(width="160px"),
        )
        self.export_button.add_class("cnnviz-diagnose-export")
        self.exported = widgets.HTML()
        # Side by side where the width allows; a long list scrolls in its box, above the clusters' section.
        self.card_list = widgets.GridBox(
            layout=widgets.Layout(
                grid_template_columns=f"repeat(auto-fill, minmax({CARD_WIDTH}px, 1fr))", grid_gap="0 8px",
                max_height=f"{CARDS_HEIGHT}px", overflow="auto", width="100%",
            )
        )
        self.card_list.add_class("cnnviz-diagnose-cards")
        self.more = widgets.Button(description="more findings", icon="chevron-down", layout=widgets.Layout(width="160px", display="none"))
        self.cluster_class = widgets.Dropdown(description="class", layout=widgets.Layout(width="240px"))
        self.cluster_layer = LayerChooser(self.session, description="layer", layout=widgets.Layout(width="360px"))
        self.cluster_method = widgets.Dropdown(options=CLUSTER_METHODS, value="grad-cam", description="map", layout=widgets.Layout(width="220px"))
        self.cluster_run = widgets.Button(description="cluster", icon="play", button_style="primary", layout=widgets.Layout(width="110px"))
        self.cluster_run.add_class("cnnviz-diagnose-cluster-run")
        self.cluster_estimate = widgets.HTML()
        self.eigengap = self._eigengap_figure()
        self.cluster_cards = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap", grid_gap="6px"))
        self.cluster_cards.add_class("cnnviz-diagnose-clusters")
        self.cluster_summary = widgets.HTML()
        self.clusters_box = widgets.VBox(
            [self.cluster_summary, widgets.HBox([self.eigengap, self.cluster_cards], layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"))],
            layout=widgets.Layout(display="none"),
        )
        self.findings = None
        self.diagnosis = None
        self.evaluation = None
        self.cards: list[widgets.Widget] = []
        self._cards: list[_Card] = []
        self._card_tiles: list[np.ndarray] = []
        self._thumbnail_slots: list[list[ClickablePicture]] = []
        self._shown_cards = 0
        self._chosen_serial = 0
        self._clusters: _Clusters | None = None
        self._cluster_slots: list[ClickablePicture] = []
        # The diagnosis before heatmap clusters join it, and the classes' clusters found by the sweep so far.
        self._base = None
        self._swept: dict[int, object] = {}
        self._sweep_stopped = False
        self._stopped = False
        self._map_seconds: dict[tuple[str, str], float] = {}
        # Which drawing of the cards the thumbnails' maps belong to: maps of cards since replaced are dropped.
        self._drawing = 0
        tools = widgets.HBox([self.export_button, self.exported], layout=widgets.Layout(align_items="center", grid_gap="8px"))
        clusters_heading = widgets.HTML(
            "<div style='font-size:13px;margin-top:10px'><b>heatmap clusters of one class</b> (SpRAy): the images of a "
            "class grouped by where the model looks; a cluster apart from the rest may be a shortcut the model took</div>"
        )
        controls = widgets.HBox(
            [self.cluster_class, self.cluster_layer, self.cluster_method, self.cluster_run],
            layout=widgets.Layout(flex_flow="row wrap", align_items="center", grid_gap="4px"),
        )
        section = widgets.VBox([clusters_heading, controls, self.cluster_estimate, self.clusters_box])
        section.add_class("cnnviz-diagnose-cluster-section")
        return [tools, self.summary, self.card_list, self.more, section]

    @staticmethod
    def _eigengap_figure() -> bqplot.Figure:
        x, y = bqplot.LinearScale(), bqplot.LinearScale(min=0)
        line = bqplot.Lines(x=[], y=[], scales={"x": x, "y": y}, marker="circle", marker_size=24, colors=["#1976d2"])
        axes = [
            bqplot.Axis(scale=x, label="rank of the eigenvalue", tick_format="d", grid_lines="none", label_offset="34px"),
            bqplot.Axis(
                scale=y, label="eigenvalue", side="left", tick_format=".1f", num_ticks=5, grid_lines="none", label_offset="46px"
            ),
        ]
        figure = bqplot.Figure(
            marks=[line], axes=axes, title="eigengap", fig_margin={"top": 36, "bottom": 48, "left": 64, "right": 12},
            layout=widgets.Layout(width="320px", height="220px"),
        )
        figure.add_class("cnnviz-diagnose-eigengap")
        return figure

    def _start(self) -> None:
        self.export_button.on_click(lambda _: self._export_clicked())
        self.more.on_click(lambda _: self._show_more())
        self.cluster_run.on_click(lambda _: self.cluster())
        self.cluster_layer.value = self.session.heatmap_layer()
        for control in (self.cluster_class, self.cluster_layer, self.cluster_method):
            control.observe(lambda _: self._estimate(), "value")
        if self.session.labels is None:
            self.show_error(ValueError("labels: the diagnosis needs the given class of each image; pass labels="))
            return
        counts = np.bincount(self.session.labels, minlength=self.session.num_classes)
        names = self.session.class_names
        with self.settling(then=self._estimate):
            self.cluster_class.options = [(f"{names[k]} ({counts[k]:,} images)", int(k)) for k in np.flatnonzero(counts)]
            self.cluster_class.value = self.cluster_class.options[0][1]
        self.refresh()

    # -- the ranked findings ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Diagnose the images (on the model's replica) and show the findings, most important first."""
        self._stopped = False
        self._swept = {}
        self._sweep_stopped = False
        self.request_long("diagnosing", self._diagnose, self._show_diagnosis, count=self.session.count)

    def stop(self) -> None:
        """Stop the work under way: a stopped sweep of the classes' heatmaps keeps the clusters found so far."""
        self._stopped = True
        super().stop()

    def _diagnose(self, task):
        diagnosis = self.session.diagnosis(task.checkpoint)
        evaluation = self.session.evaluation()
        findings = diagnosis.findings()
        return diagnosis, evaluation, findings, self._prepare(findings, evaluation, 0, CARD_PAGE)

    def _prepare(self, findings, evaluation, start: int, stop: int) -> list[_Card]:
        """The cards of findings ``start..stop``: texts and plain thumbnails (their maps come later)."""
        names = self.session.class_names
        cards = []
        for rank, row in enumerate(findings.iloc[start:stop].itertuples(index=False), start=start):
            members = np.asarray(row.members, dtype=np.int64)
            evidence = dict(row.evidence)
            shown = members[:THUMBNAILS]
            thumbnails = [render.thumbnail(self.session.pictures[int(index)], THUMBNAIL_SIDE) for index in shown]
            captions = [self._caption(row.kind, evidence, position, int(index), evaluation) for position, index in enumerate(shown)]
            cards.append(
                _Card(
                    rank, row.kind, str(row.title), int(row.count), members, evidence, shown, thumbnails, captions,
                    evidence_html(row.kind, evidence, names), self._evidence_png(row.kind, evidence),
                )
            )
        return cards

    def _caption(self, kind: str, evidence: dict, position: int, index: int, evaluation) -> str:
        names = self.session.class_names
        if kind == "label issues":
            given_p = float(np.asarray(evidence["given_probability"])[position])
            suggested_p = float(np.asarray(evidence["suggested_probability"])[position])
            given, suggested = of_member(evidence["given"], position), of_member(evidence["suggested"], position)
            text = (
                f"labelled {drawing.escape(names[given])} {_percent(given_p)}<br>"
                f"<b>{drawing.escape(names[suggested])}</b> {_percent(suggested_p)}"
            )
        elif kind in ("conflicting duplicates", "near duplicates"):
            text = f"pair {position // 2 + 1}<br>labelled <b>{drawing.escape(names[evaluation.labels[index]])}</b>"
        else:
            label, said = evaluation.labels[index], evaluation.predictions[index]
            colour = RIGHT_COLOR if label == said else WRONG_COLOR
            text = (
                f"true <b>{drawing.escape(names[label])}</b><br>said <b style='color:{colour}'>{drawing.escape(names[said])}</b>"
            )
        return f"<div style='font-size:10px;line-height:1.25;text-align:center'>{text}</div>"

    def _evidence_png(self, kind: str, evidence: dict) -> bytes:
        """The picture of a finding's evidence: a duplicate pair side by side, a cluster's mean map on its mean picture."""
        if kind in ("conflicting duplicates", "near duplicates"):
            first, second = (int(index) for index in np.asarray(evidence["pairs"])[0])
            pair = [render.enlarged(self.session.view(index), EVIDENCE_SIDE) for index in (first, second)]
            return render.to_png(render.strip(pair, EVIDENCE_SIDE))
        if kind == "heatmap cluster":
            mean_map = render.scale_to_unit(evidence["mean_map"])
            mean_picture = render.enlarged(render.to_rgb(evidence["mean_picture"]), EVIDENCE_SIDE)
            return render.to_png(render.strip([render.overlay(mean_picture, mean_map)], EVIDENCE_SIDE))
        return b""

    def _show_diagnosis(self, result) -> None:
        diagnosis, evaluation, findings, cards = result
        self._base = diagnosis
        self._show_findings(diagnosis, evaluation, findings, cards)
        self._sweep()

    def _show_findings(self, diagnosis, evaluation, findings, cards: list[_Card]) -> None:
        self.diagnosis, self.evaluation, self.findings = diagnosis, evaluation, findings
        self._drawing += 1
        self.cards, self._cards, self._card_tiles, self._thumbnail_slots = [], [], [], []
        self._add_cards(cards)
        self._describe()

    def _describe(self) -> None:
        diagnosis, findings = self.diagnosis, self.findings
        suspects = len(diagnosis.suspects())
        swept = ""
        if self.session.count <= SWEEP_LIMIT:
            classes = len(self._sweep_targets())
            if self._sweep_stopped:
                swept = f" · heatmaps clustered for {len(self._swept)} of {classes} classes (stopped)"
            elif len(self._swept) == classes:
                swept = f" · heatmaps clustered for every class ({classes})"
        else:
            swept = f" · {self.session.count:,} images: cluster one class's heatmaps at a time, below"
        self.summary.value = (
            f"<div style='font-size:13px'><b>{len(findings)}</b> finding{'' if len(findings) == 1 else 's'} over "
            f"{diagnosis.count:,} images (accuracy {diagnosis.accuracy:.1%}) · {suspects:,} suspect images to export"
            f"{swept}</div>"
        )

    def _add_cards(self, cards: list[_Card]) -> None:
        for card in cards:
            self._cards.append(card)
            self.cards.append(self._card_widget(card))
            tiles = [decoded(png) for png in card.thumbnails]
            self._card_tiles.append(render.strip(tiles, THUMBNAIL_SIDE) if tiles else np.full((THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3), 255, np.uint8))
        self.card_list.children = self.cards
        self._shown_cards = len(self._cards)
        left = len(self.findings) - self._shown_cards
        self.more.description = f"{min(left, CARD_PAGE)} more findings"
        self.more.layout.display = None if left > 0 else "none"
        self._draw_maps(cards)

    def _card_widget(self, card: _Card) -> widgets.Widget:
        colour = KIND_COLORS.get(card.kind, "#424242")
        heading = widgets.HTML(
            f"<div style='font-size:13px;line-height:1.4'><span style='color:#757575'>{card.rank + 1}.</span> "
            f"<b style='color:{colour}'>{drawing.escape(card.kind)}</b> · {card.count:,} image{'' if card.count == 1 else 's'}"
            f"<br>{drawing.escape(card.title)}</div>"
        )
        parts = [heading, widgets.HTML(card.evidence_html)]
        if card.evidence_png:
            evidence = ClickablePicture(value=card.evidence_png, hint="open these images")
            evidence.add_class("cnnviz-diagnose-evidence")
            evidence.on_point(lambda x, y, kind, rank=card.rank: self.open_finding(rank))
            parts.append(evidence)
        slots, thumbnails = [], []
        for position, (png, caption, index) in enumerate(zip(card.thumbnails, card.captions, card.shown)):
            slot = ClickablePicture(value=png, width=THUMBNAIL_SIDE, pixelated=True, hint=f"image {self.session.names[int(index)]}")
            slot.on_point(lambda x, y, kind, rank=card.rank, position=position: self.open_finding(rank, position))
            slots.append(slot)
            thumbnails.append(
                widgets.VBox(
                    [slot, widgets.HTML(caption, layout=widgets.Layout(width=f"{THUMBNAIL_SIDE + 28}px"))],
                    layout=widgets.Layout(align_items="center", margin="1px"),
                )
            )
        self._thumbnail_slots.append(slots)
        strip = widgets.HBox(thumbnails, layout=widgets.Layout(flex_flow="row wrap"))
        strip.add_class("cnnviz-diagnose-thumbnails")
        open_button = widgets.Button(
            description=f"open {card.count:,} image{'' if card.count == 1 else 's'}", icon="external-link",
            tooltip="show them in the Mistakes gallery and select them in the Projector", layout=widgets.Layout(width="170px"),
        )
        open_button.add_class("cnnviz-diagnose-open")
        open_button.on_click(lambda _, rank=card.rank: self.open_finding(rank))
        parts += [strip, open_button]
        box = widgets.VBox(
            parts,
            layout=widgets.Layout(
                border_top="1px solid #ddd", border_right="1px solid #ddd", border_bottom="1px solid #ddd",
                border_left=f"4px solid {colour}", padding="4px 8px", margin="4px 0", min_width="0",
            ),
        )
        box.add_class("cnnviz-diagnose-card")
        return box

    def _show_more(self) -> None:
        start = self._shown_cards

        def work():
            return self._prepare(self.findings, self.evaluation, start, start + CARD_PAGE)

        self.request(work, self._add_cards)

    def _draw_maps(self, cards: list[_Card]) -> None:
        """The Grad-CAM of each mapped card's class over its thumbnails, in the background, card by card."""
        mapped = [card for card in cards if mapped_class(card.kind, card.evidence, 0) is not None and len(card.shown)]
        if not mapped:
            return
        drawing_serial = self._drawing
        layer = self.session.heatmap_layer()

        def work():
            for card in mapped:
                if drawing_serial != self._drawing:
                    return None
                maps = [
                    self._map_of(int(index), card.kind, card.evidence, layer, mapped_class(card.kind, card.evidence, position))
                    for position, index in enumerate(card.shown)
                ]
                views = [self.session.view(int(index)) for index in card.shown]
                pictures = [
                    render.to_png(
                        render.resize(
                            render.overlay(render.enlarged(view, THUMBNAIL_SIDE), heat), *render.fitted_size(view.shape, THUMBNAIL_SIDE)
                        )
                    )
                    for view, heat in zip(views, maps)
                ]
                self._apply(self._show_maps, (drawing_serial, card.rank, pictures))
            return None

        self.request(work, lambda _: None)

    def _map_of(self, index: int, kind: str, evidence: dict, layer: str, target: int):
        """A thumbnail's map: the suggested class's Grad-CAM, or the map a heatmap cluster was made of."""
        if kind == "heatmap cluster" and (evidence["method"] != "grad-cam" or evidence["layer"] != layer):
            return self.session.explanation(index, evidence["method"], evidence["layer"], target)
        return self.session.grad_cam(index, layer, target)

    def _show_maps(self, result) -> None:
        serial, rank, pictures = result
        if serial != self._drawing:
            return
        position = next(position for position, card in enumerate(self._cards) if card.rank == rank)
        for slot, png in zip(self._thumbnail_slots[position], pictures):
            slot.value = png
        self._card_tiles[position] = render.strip([decoded(png) for png in pictures], THUMBNAIL_SIDE)

    @shows_errors
    def open_finding(self, rank: int, position: int = 0) -> None:
        """Open finding ``rank`` (0 is the first card): its images, the ``position``-th thumbnail's the current one."""
        card = next((card for card in self._cards if card.rank == rank), None)
        if card is None:
            raise ValueError(f"rank: no finding {rank} is shown; the cards are 0..{len(self._cards) - 1}")
        image = int(card.shown[position]) if position < len(card.shown) else int(card.members[0])
        self._choose(f"{card.kind}: {card.title}", card.members, image)

    def _choose(self, title: str, members: np.ndarray, image: int) -> None:
        # Duplicate pairs list an image once per pair: each image once, in the order first met.
        _, first = np.unique(members, return_index=True)
        indices = [int(index) for index in members[np.sort(first)]]
        self._chosen_serial += 1
        self.chosen = {"title": title, "indices": indices, "image": image, "serial": self._chosen_serial}
        self.image = image

    # -- heatmap clusters ------------------------------------------------------------------------------

    def _sweep_targets(self) -> list[int]:
        """The classes with enough images to cluster."""
        counts = np.bincount(self.session.labels, minlength=self.session.num_classes)
        return [target for _, target in self.cluster_class.options if counts[target] >= MIN_IMAGES]

    def _sweep(self) -> None:
        """Cluster every class's heatmaps in the background; the clusters that stand apart join the findings."""
        if self._sweep_stopped or self._base is None or self.session.count > SWEEP_LIMIT:
            return
        targets = self._sweep_targets()
        if len(self._swept) == len(targets):
            return
        base = self._base

        def work(task):
            found = dict(self._swept)
            left = [target for target in targets if target not in found]
            try:
                for step, target in enumerate(left):
                    found[target] = self.session.heatmap_clusters(
                        target, checkpoint=scaled(task.checkpoint, step / len(left), (step + 1) / len(left))
                    )
            except Cancelled:
                # Stop keeps what was found; a newer request (a class clustered on demand) resumes the sweep after it.
                if self._stopped:
                    self._apply(self._show_swept, (base, found, True))
                raise
            return base, found, False

        self.request_long(f"clustering the heatmaps of {len(targets)} classes", work, self._show_swept, count=self.session.count)

    def _show_swept(self, result) -> None:
        base, found, stopped = result
        if base is not self._base:
            return
        self._swept = found
        self._sweep_stopped = stopped
        diagnosis = base.with_heatmap_clusters(list(found.values()))
        findings = diagnosis.findings()
        shown = max(CARD_PAGE, self._shown_cards)
        self._show_findings(diagnosis, self.evaluation, findings, self._prepare(findings, self.evaluation, 0, shown))

    def cluster(self) -> None:
        """Cluster the heatmaps of the class chosen in the section, at its layer and by its map; show the eigengap
        and each cluster's mean map, size and accuracy."""
        target, layer, method = self.cluster_class.value, self.cluster_layer.value, self.cluster_method.value
        if target is None:
            return
        self._stopped = False
        count = int((self.session.labels == target).sum())

        def work(task):
            result = self.session.heatmap_clusters(target, layer=layer, method=method, checkpoint=task.checkpoint)
            pictures = [
                render.to_png(
                    render.strip([render.overlay(cluster.mean_picture, render.scale_to_unit(cluster.mean_map))], CLUSTER_SIDE)
                )
                for cluster in result.clusters
            ]
            return _Clusters(result, pictures)

        name = self.session.class_names[target]
        self.request_long(f"clustering the {method} maps of {name}", work, self._show_clusters, count=count)

    def _show_clusters(self, clusters: _Clusters) -> None:
        self._clusters = clusters
        result, names = clusters.result, self.session.class_names
        eigenvalues = np.asarray(result.eigenvalues, dtype=np.float64)[:EIGENVALUES_SHOWN]
        line = self.eigengap.marks[0]
        with line.hold_sync():
            line.x = np.arange(1, len(eigenvalues) + 1)
            line.y = eigenvalues
        self.eigengap.title = f"eigengap: {len(result.clusters)} clusters"
        self._cluster_slots, cards = [], []
        ranked = sorted(range(len(result.clusters)), key=lambda position: len(result.clusters[position].members), reverse=True)
        for position in ranked:
            cluster = result.clusters[position]
            slot = ClickablePicture(value=clusters.pictures[position], width=CLUSTER_SIDE, hint="open these images")
            slot.on_point(lambda x, y, kind, position=position: self.open_cluster(position))
            self._cluster_slots.append(slot)
            size = len(cluster.members)
            caption = widgets.HTML(
                f"<div style='font-size:11px;line-height:1.3;text-align:center'>cluster {position + 1}<br>"
                f"{size:,} image{'' if size == 1 else 's'}<br>accuracy {_percent(cluster.accuracy)}</div>",
                layout=widgets.Layout(width=f"{CLUSTER_SIDE + 16}px"),
            )
            card = widgets.VBox([slot, caption], layout=widgets.Layout(align_items="center", border="1px solid #ddd", padding="2px"))
            card.add_class("cnnviz-diagnose-cluster")
            cards.append(card)
        self.cluster_cards.children = cards
        self.cluster_summary.value = (
            f"<div style='font-size:12px'>{len(result.indices):,} images of <b>{drawing.escape(names[result.target])}</b>, "
            f"{drawing.escape(result.method)} maps at {drawing.escape(result.layer)}: {len(result.clusters)} clusters "
            "(the largest gap between consecutive eigenvalues sets how many) · click a cluster to see its images</div>"
        )
        self.clusters_box.layout.display = "flex"
        self._sweep()

    @shows_errors
    def open_cluster(self, position: int) -> None:
        """Open cluster ``position`` of the class clustered last, as a card's click does."""
        result = self._clusters.result
        cluster = result.clusters[position]
        members = np.asarray(cluster.members, dtype=np.int64)
        name = self.session.class_names[result.target]
        self._choose(f"heatmap cluster {position + 1} of {name} ({result.method}, {result.layer})", members, int(members[0]))

    def _estimate(self) -> None:
        """How long clustering the chosen class takes: its image count times a map's time, measured on a few."""
        if self._settling or self.cluster_class.value is None:
            return
        target, layer, method = self.cluster_class.value, self.cluster_layer.value, self.cluster_method.value
        members = np.flatnonzero(self.session.labels == target)

        def work():
            key = (layer, method)
            if key not in self._map_seconds:
                times = []
                for index in members[:ESTIMATE_SAMPLES]:
                    started = time.perf_counter()
                    self.session.explanation(int(index), method, layer, target)
                    times.append(time.perf_counter() - started)
                self._map_seconds[key] = float(np.median(times))
            return target, len(members), self._map_seconds[key]

        self.request(work, self._show_estimate)

    def _show_estimate(self, result) -> None:
        target, count, seconds = result
        total = count * seconds
        # One image at a time: the clustering's batches take less.
        about = "under a second" if total < 1 else f"at most about {drawing.duration(total)}"
        self.cluster_estimate.value = (
            f"<div style='font-size:12px'>{count:,} images of <b>{drawing.escape(self.session.class_names[target])}</b>: "
            f"{about} ({seconds * 1000:.0f} ms a map, measured on {min(count, ESTIMATE_SAMPLES)})</div>"
        )

    # -- export ----------------------------------------------------------------------------------------

    def export(self, path=None) -> Path:
        """Write the suspect images (source path or index, given and suggested label, kind, score) as CSV to
        ``path`` (default: ``diagnose-suspects.csv`` here) and return the path."""
        if self.diagnosis is None:
            raise ValueError("Diagnose: the diagnosis is not done yet, so there is nothing to export")
        path = Path(EXPORT_NAME if path is None else path)
        self.diagnosis.to_csv(path)
        return path

    def _export_clicked(self) -> None:
        try:
            path = self.export()
        except Exception as error:  # noqa: BLE001 - a failed export is a message, not a traceback
            self.show_error(error)
            return
        count = len(self.diagnosis.suspects())
        self.exported.value = f"<span style='font-size:12px'>{count:,} suspects saved to {drawing.escape(path.resolve())}</span>"

    def picture(self) -> bytes:
        """The cards' thumbnails, one row per finding, as on screen."""
        if not self._card_tiles:
            return b""
        width = max(tile.shape[1] for tile in self._card_tiles)
        rows = [np.pad(tile, ((0, 8), (0, width - tile.shape[1]), (0, 0)), constant_values=255) for tile in self._card_tiles]
        return render.to_png(np.concatenate(rows, axis=0))
