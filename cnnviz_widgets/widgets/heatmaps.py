"""Where the model looks: Grad-CAM for two classes side by side, guided backprop and guided Grad-CAM."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import traitlets

from .. import render
from . import drawing
from .base import COLORMAPS, ClassChooser, ImagePicker, LayerChooser, Panel, shows_errors

# Grad-CAMs of this many most probable classes are computed ahead, so switching among them is instant.
PREFETCH_CLASSES = 10
PICTURE_LAYOUT = dict(width="280px", height="280px", object_fit="contain")


class _ClassPanel(Panel):
    """A panel about one image, one layer and target classes (shared by the heatmap panels)."""

    layer = traitlets.Unicode()
    target = traitlets.Int(0, help="the class explained")

    def _common_controls(self):
        self.picker = ImagePicker(self.session)
        self.layer_chooser = LayerChooser(self.session)
        self.class_chooser = ClassChooser(self.session, description="class")
        self._pictures: list[np.ndarray] = []

    def _link_common(self) -> None:
        self.layer = self.session.heatmap_layer()
        self.class_chooser.rank_for(self.image)
        self.target = self.class_chooser.value
        widgets.link((self.picker, "index"), (self, "image"))
        widgets.link((self, "layer"), (self.layer_chooser, "value"))
        widgets.link((self.class_chooser, "value"), (self, "target"))

    @traitlets.validate("layer")
    def _check_layer(self, proposal):
        return self.check_layer(proposal["value"])

    @traitlets.validate("target")
    def _check_target(self, proposal):
        return self.check_target(proposal["value"])

    def _rerank(self) -> None:
        """New image: classes reordered by its probabilities, its most probable class selected."""
        self.class_chooser.rank_for(self.image)

    def picture(self) -> bytes:
        return render.to_png(render.side_by_side(self._pictures)) if self._pictures else b""


class GradCAMPanel(_ClassPanel):
    """Grad-CAM heatmaps of two classes for one image, over the picture, at a chosen conv layer."""

    title = "Grad-CAM"
    caption = "which parts of the picture push the model towards each class (red = strong), for two classes side by side"
    second_target = traitlets.Int(0, help="the class shown on the right")
    contrastive = traitlets.Bool(False, help="the right picture shows why the first class rather than the second")

    def _build(self):
        self._common_controls()
        self.second_chooser = ClassChooser(self.session, description="compare with")
        self.opacity = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="opacity", layout=widgets.Layout(width="300px"))
        self.cmap = widgets.Dropdown(options=COLORMAPS, value="jet", description="colours", layout=widgets.Layout(width="200px"))
        self.left = widgets.Image(format="png", layout=widgets.Layout(**PICTURE_LAYOUT))
        self.right = widgets.Image(format="png", layout=widgets.Layout(**PICTURE_LAYOUT))
        self.left_label, self.right_label = widgets.HTML(), widgets.HTML()
        self.left.add_class("cnnviz-grad-cam-left")
        self.right.add_class("cnnviz-grad-cam-right")
        self.second_chooser.add_class("cnnviz-second-class-chooser")
        self.contrast_box = widgets.Checkbox(
            value=False, description="right: why the first class rather than the second", indent=False,
            layout=widgets.Layout(width="auto"),
        )
        self.contrast_box.add_class("cnnviz-contrast")
        for control in (self.opacity, self.cmap):
            control.observe(lambda _: self.refresh(), "value")
        views = widgets.HBox(
            [widgets.VBox([self.left, self.left_label]), widgets.VBox([self.right, self.right_label])],
            layout=widgets.Layout(grid_gap="16px"),
        )
        return [
            self.picker,
            self.layer_chooser,
            widgets.HBox([self.class_chooser, self.second_chooser], layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self.contrast_box, self.opacity, self.cmap], layout=widgets.Layout(flex_flow="row wrap")),
            views,
        ]

    def _start(self) -> None:
        self._link_common()
        self.second_chooser.rank_for(self.image, rank=1)
        self.second_target = self.second_chooser.value
        widgets.link((self.second_chooser, "value"), (self, "second_target"))
        widgets.link((self.contrast_box, "value"), (self, "contrastive"))
        self.observe(self._on_image, "image")
        self.observe(lambda _: self.refresh(), ["layer", "target", "second_target", "contrastive"])
        self.refresh()

    @shows_errors
    def _on_image(self, change) -> None:
        with self.settling():
            self._rerank()
            self.second_chooser.rank_for(self.image, rank=1)

    def refresh(self) -> None:
        """Recompute both heatmaps for the current image, layer, classes and display options."""
        key = (self.image, self.layer, self.target, self.second_target, self.opacity.value, self.cmap.value, self.contrastive)
        self.request(lambda: self._render(key), self._show)

    def _overlay(self, image, layer, target, opacity, cmap, contrast=None) -> tuple[bytes, np.ndarray]:
        def compute():
            cam = self.session.grad_cam(image, layer, target, contrast)
            picture = render.overlay(self.session.view(image), cam, alpha=opacity, cmap=cmap)
            return render.to_png(picture), picture

        return self.session.cached("pictures", ("grad-cam overlay", image, layer, target, opacity, cmap, contrast), compute)

    def _render(self, key):
        image, layer, target, second, opacity, cmap, contrastive = key
        probabilities = self.session.probabilities(image)
        names = self.session.class_names
        left = self._overlay(image, layer, target, opacity, cmap)
        left_label = drawing.probability_label(names[target], probabilities[target])
        if contrastive:
            right = self._overlay(image, layer, target, opacity, cmap, contrast=second)
            right_label = f"why {names[target]} rather than {names[second]}"
        else:
            right = self._overlay(image, layer, second, opacity, cmap)
            right_label = drawing.probability_label(names[second], probabilities[second])
        return key, (left, right), (left_label, right_label)

    def _show(self, result) -> None:
        key, ((left_png, left), (right_png, right)), (left_label, right_label) = result
        image, layer, _, _, opacity, cmap, _ = key
        likely = [k for k, _ in self.session.ranked_classes(image)[:PREFETCH_CLASSES]]
        self.prefetch([lambda k=k: self._overlay(image, layer, k, opacity, cmap) for k in likely])
        self.left.value, self.right.value = left_png, right_png
        self._pictures = [left, right]
        layer = key[1]
        self.left_label.value = f"<span style='font-size:13px'><b>{drawing.escape(left_label)}</b><br>at {drawing.escape(layer)}</span>"
        self.right_label.value = f"<span style='font-size:13px'><b>{drawing.escape(right_label)}</b><br>at {drawing.escape(layer)}</span>"


class GuidedBackpropPanel(_ClassPanel):
    """The picture, its guided backpropagation and its guided Grad-CAM for one class."""

    title = "Guided backprop"
    caption = "the fine details that raise the class score (guided backprop), kept where Grad-CAM looks (guided Grad-CAM)"

    def _build(self):
        self._common_controls()
        self.original = widgets.Image(format="png", layout=widgets.Layout(**PICTURE_LAYOUT))
        self.guided = widgets.Image(format="png", layout=widgets.Layout(**PICTURE_LAYOUT))
        self.guided_cam = widgets.Image(format="png", layout=widgets.Layout(**PICTURE_LAYOUT))
        labels = [widgets.HTML(f"<span style='font-size:13px'>{text}</span>") for text in ("the picture", "guided backprop", "guided Grad-CAM")]
        self.class_label = widgets.HTML()
        self.guided.add_class("cnnviz-guided")
        self.guided_cam.add_class("cnnviz-guided-grad-cam")
        views = widgets.HBox(
            [widgets.VBox([view, label]) for view, label in zip((self.original, self.guided, self.guided_cam), labels)],
            layout=widgets.Layout(grid_gap="12px"),
        )
        return [self.picker, self.layer_chooser, self.class_chooser, views, self.class_label]

    def _start(self) -> None:
        self._link_common()
        self.observe(self._on_image, "image")
        self.observe(lambda _: self.refresh(), ["layer", "target"])
        self.refresh()

    @shows_errors
    def _on_image(self, change) -> None:
        with self.settling():
            self._rerank()

    def refresh(self) -> None:
        key = (self.image, self.layer, self.target)
        self.request(lambda: self._render(key), self._show)

    def _render(self, key):
        def compute():
            image, layer, target = key
            view = self.session.view(image)
            guided = render.gradient_image(self.session.guided_backprop(image, target))
            guided_cam = render.gradient_image(self.session.guided_grad_cam(image, layer, target))
            pictures = [view, guided, guided_cam]
            return key, [render.to_png(picture) for picture in pictures], pictures

        return self.session.cached("pictures", ("guided backprop", *key), compute)

    def _show(self, result) -> None:
        key, pngs, pictures = result
        self.original.value, self.guided.value, self.guided_cam.value = pngs
        self._pictures = pictures
        image, layer, target = key
        probability = self.session.probabilities(image)[target]
        name = self.session.class_names[target]
        self.class_label.value = (
            f"<span style='font-size:13px'>explaining <b>{drawing.escape(drawing.probability_label(name, probability))}</b>; "
            f"guided Grad-CAM uses the heatmap of {drawing.escape(layer)}</span>"
        )
