"""The dashboard: every panel in tabs, sharing one current image, class and layer."""

from __future__ import annotations

import ipywidgets as widgets
import traitlets

from . import drawing
from ..session import Session
from ..session.pair import reference_session
from .presence import Presence
from .feature_maps import FeatureMapPanel
from .compare import ComparePanel
from .changes import AGREEMENT_NAME, ModelDiffPanel
from .diagnose import DiagnosePanel
from .filters import FiltersPanel
from .heatmaps import GradCAMPanel, GuidedBackpropPanel
from .mistakes import MistakesPanel
from .occlusion import OcclusionPanel
from .projector_panel import ProjectorPanel


class Dashboard(widgets.VBox):
    """All views of one model and one image set. Selecting an image anywhere (a point of the projector, a
    picture of the mistakes gallery, a thumbnail) makes it the current image of every tab."""

    image = traitlets.Int(0, help="index of the current image, shared by every tab")
    target = traitlets.Int(0, help="the class explained, shared by Grad-CAM, guided backprop and occlusion")
    layer = traitlets.Unicode(help="the conv layer Grad-CAM and guided Grad-CAM explain (feature maps and filters keep their own)")

    def __init__(
        self, model, images, labels=None, class_names=None, preprocess=None, *, reference=None, reference_preprocess=None,
        output=None, cache=None, cache_size=None,
    ):
        self.session = Session(
            model, images, preprocess=preprocess, class_names=class_names, labels=labels, output=output, cache=cache,
            cache_size=cache_size,
        )
        self.reference_session = None
        if reference is not None:
            if self.session.labels is None:
                raise ValueError("labels: comparing with reference= needs the true class of each image; pass labels=")
            self.reference_session = reference_session(
                reference, self.session, reference_preprocess or preprocess, output=output, cache=cache, cache_size=cache_size
            )
        shared = dict(session=self.session, active=False)
        self.panels = {}
        if self.session.labels is not None:
            self.panels["Mistakes"] = MistakesPanel(**shared)
            self.panels["Diagnose"] = DiagnosePanel(**shared)
        if self.reference_session is not None:
            self.panels["Changes"] = ModelDiffPanel(reference_session=self.reference_session, **shared)
        self.panels["Projector"] = ProjectorPanel(**shared)
        self.panels["Grad-CAM"] = GradCAMPanel(**shared)
        self.panels["Feature maps"] = FeatureMapPanel(**shared)
        self.panels["Filters"] = FiltersPanel(**shared)
        self.panels["Occlusion"] = OcclusionPanel(**shared)
        self.panels["Guided backprop"] = GuidedBackpropPanel(**shared)
        self.panels["Compare"] = ComparePanel(**shared)
        self.tabs = widgets.Tab(children=list(self.panels.values()), titles=list(self.panels))
        self.current = widgets.HTML()
        self.presence = Presence(self.session, self._weights_changed, self._pause, lambda: self._tab_shown(None))
        super().__init__([self.current, self.tabs, self.presence])
        self.add_class("cnnviz-dashboard")
        self.layer = self.session.heatmap_layer()
        for panel in self.panels.values():
            traitlets.link((self, "image"), (panel, "image"))
        # Early layers teach most in Feature maps and Filters, the last one in Grad-CAM: only the heatmaps share.
        for title in ("Grad-CAM", "Guided backprop", "Compare", "Changes"):
            if title in self.panels:
                traitlets.link((self, "layer"), (self.panels[title], "layer"))
        if "Mistakes" in self.panels:
            self.panels["Mistakes"].observe(self._cell_chosen, "cell")
            self.panels["Diagnose"].observe(self._finding_chosen, "chosen")
        if "Changes" in self.panels:
            changes = self.panels["Changes"]
            changes.projector_button.layout.display = None
            changes.observe(self._diff_shown, "diff")
            changes.observe(lambda _: self._colour_by_agreement(), "projector_requested")
        grad_cam = self.panels["Grad-CAM"]
        self.target = grad_cam.target
        for panel in self.panels.values():
            if "target" in panel.trait_names():
                traitlets.link((self, "target"), (panel, "target"))
        # Without labels there are no mistakes, and a projector of a handful of photos says little: start
        # where a single picture says most.
        self.tabs.selected_index = 0 if self.session.labels is not None else list(self.panels).index("Grad-CAM")
        self.tabs.observe(self._tab_shown, "selected_index")
        self._tab_shown(None)
        self._describe()
        self.session.watch(self._weights_changed)
        if self.reference_session is not None:
            self.reference_session.watch(self._reference_changed)

    def _cell_chosen(self, change) -> None:
        """A cell (true A, predicted B) of the confusion matrix: its first image becomes the current one, and
        Grad-CAM shows why B rather than A."""
        if change["new"] is None:
            return
        true, predicted = change["new"]
        shown = self.panels["Mistakes"].shown
        if not len(shown):
            return
        self.image = int(shown[0])
        grad_cam = self.grad_cam
        with grad_cam.settling():
            grad_cam.second_chooser.value = true
            grad_cam.target = predicted
            grad_cam.contrastive = True
        self.target = predicted

    def _finding_chosen(self, change) -> None:
        """A finding of the Diagnose tab: its images in the Mistakes gallery and selected in the Projector, the one
        clicked the current image, and the gallery on screen."""
        chosen = change["new"]
        if chosen is None:
            return
        self.panels["Mistakes"].show_images(chosen["indices"], chosen["title"])
        self.panels["Projector"].select(chosen["indices"])
        self.image = chosen["image"]
        self.tabs.selected_index = list(self.panels).index("Mistakes")

    def _diff_shown(self, change) -> None:
        """The Projector can colour each image by how many of its neighbours both models share."""
        diff = change["new"]
        if diff is not None:
            self.panels["Projector"].set_scores(diff.embedding_agreement, AGREEMENT_NAME)

    def _colour_by_agreement(self) -> None:
        self.panels["Projector"].colour_points("score")
        self.tabs.selected_index = list(self.panels).index("Projector")

    def _reference_changed(self, generation: int) -> None:
        self.panels["Changes"].reference_changed(generation)

    def _weights_changed(self, generation: int) -> None:
        for panel in self.panels.values():
            panel.weights_changed(generation)
        self._describe()

    def _pause(self) -> None:
        """Nobody sees the dashboard any more (see :class:`Presence`): stop every panel's work."""
        for panel in self.panels.values():
            panel.pause()

    def close(self) -> None:
        """Stop every panel's threads and child processes, free the caches, close the widgets."""
        # A dashboard whose construction failed (bad input) is closed by the garbage collector: close what exists.
        for panel in getattr(self, "panels", {}).values():
            panel.close()
        if hasattr(self, "session"):
            self.session.close()
        if getattr(self, "reference_session", None) is not None:
            self.reference_session.close()
        if hasattr(self, "presence"):
            self.presence.close()
        super().close()

    @property
    def grad_cam(self) -> GradCAMPanel:
        return self.panels["Grad-CAM"]

    def _tab_shown(self, change) -> None:
        shown = self.tabs.selected_index or 0
        for position, panel in enumerate(self.panels.values()):
            panel.set_active(position == shown)

    @traitlets.observe("image")
    def _image_changed(self, change) -> None:
        # Each class-driven panel switches to the new image's most probable class. One look at the weights
        # serves both questions about the image's classes on this thread.
        with self.session.replicas.request():
            self.target = self.session.ranked_classes(change["new"])[0][0]
            self._describe()

    def _describe(self) -> None:
        try:
            ranked = self.session.ranked_classes(self.image)
        except Exception:  # noqa: BLE001 - the tabs show the message; the header just stays quiet
            self.current.value = f"<div style='font-size:13px;padding:4px 0'>current image <b>{drawing.escape(self.session.names[self.image])}</b></div>"
            return
        top, probability = ranked[0]
        names = self.session.class_names
        truth = ""
        if self.session.labels is not None:
            truth = f" · true class <b>{drawing.escape(names[self.session.labels[self.image]])}</b>"
        self.current.value = (
            f"<div style='font-size:13px;padding:4px 0'>current image <b>{drawing.escape(self.session.names[self.image])}</b>"
            f"{truth} · the model says <b>{drawing.escape(drawing.probability_label(names[top], probability))}</b></div>"
        )

    def wait(self, timeout: float = 120.0) -> bool:
        """Block until every panel shows its current view (for scripts and tests)."""
        return all(panel.wait(timeout) for panel in self.panels.values())

    def wait_prefetched(self, timeout: float = 120.0) -> bool:
        """Block until every panel also holds what it computes ahead (tests measuring cached repaints)."""
        return all(panel.wait_prefetched(timeout) for panel in self.panels.values())


def explore(
    model, images, labels=None, class_names=None, preprocess=None, *, reference=None, reference_preprocess=None,
    output=None, cache=None, cache_size=None,
) -> Dashboard:
    """Every view of ``model`` on ``images`` in one dashboard (see :class:`Dashboard`).

    images: pictures (PIL images or uint8 arrays, a list or a ``{name: picture}`` dict) or a tensor
        ``(N, C, H, W)`` of model inputs; labels: their true classes (enables the mistakes view);
        preprocess: picture -> model input, e.g. ``weights.transforms()``;
        output: a callable from the model's output to its logits, for models returning something else
        than a tensor, a tuple or an object with ``.logits``;
        cache: where the pass over every image keeps its results — None for the user cache folder, a
        folder, or False for none; reopening a dashboard on the same model and pictures reads them back;
        cache_size: the most that folder keeps ("2GB" by default, or the CNNVIZ_CACHE_SIZE environment
        variable), the least recently used results going first;
        reference: another model with the same classes (an older checkpoint, a quantized or pruned copy,
        another architecture): a "Changes" tab shows what changed from it to ``model`` (needs labels);
        reference_preprocess: the reference's own preprocessing when it reads other inputs (default: preprocess).
    images may also be a folder (labels from its class subfolders), a list of file paths or a Dataset of
    pictures: pictures are read when needed, and the model reads the set once.
    The dashboard computes on a private replica of the model: the model itself is never touched, and
    when its weights change (the user trains it) the views are recomputed.
    """
    return Dashboard(
        model, images, labels=labels, class_names=class_names, preprocess=preprocess, reference=reference,
        reference_preprocess=reference_preprocess, output=output, cache=cache, cache_size=cache_size,
    )
