"""The methods as a panel calls them: by image index, layer name and class, on the model's replicas, cached.

Every call goes through :meth:`Session.cached <cnnviz_widgets.session.Session.cached>`: one look at the
user's weights per request, results keyed on their generation, and one computation per key whoever asks
(two panels asking for the same Score-CAM wait on one run). Long work runs on the ``WORK`` replica, so the
live views stay free, and takes the panel's checkpoint: it shows progress and stops.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .. import methods
from ..data import embed
from ..heatmap_clusters import check_cluster_count, class_clusters
from ..inputs import check_target
from ..methods.grad_cam import check_cam_method
from ..methods.occlusion import fill_of
from ..replica import WORK


class MethodCalls:
    """The cached per-method calls of a :class:`~cnnviz_widgets.session.Session` (its base class)."""

    # -- quick views: on the VIEWS replica, through the public functions ----------------------------------

    def feature_maps(self, index: int, layer: str) -> Tensor:
        index = self.check_index(index)
        layer = self.layer_name(layer)
        return self.cached(
            "feature_maps", (index, layer), lambda: methods.feature_maps(self.model, self.input(index), layer, output=self.output)
        )

    def grad_cam(self, index: int, layer: str, target: int, contrast: int | None = None) -> Tensor:
        """Grad-CAM of ``target``; with ``contrast``, of ``logit[target] - logit[contrast]``."""
        index = self.check_index(index)
        layer = self.layer_name(layer)
        return self.cached(
            "heatmaps",
            ("grad_cam", index, layer, int(target), contrast),
            lambda: methods.grad_cam(self.model, self.input(index), layer, target, output=self.output, contrast=contrast),
        )

    def guided_backprop(self, index: int, target: int) -> Tensor:
        index = self.check_index(index)
        return self.cached(
            "heatmaps",
            ("guided_backprop", index, int(target)),
            lambda: methods.guided_backprop(self.model, self.input(index), target, output=self.output),
        )

    def guided_grad_cam(self, index: int, layer: str, target: int) -> Tensor:
        with self.replicas.request():
            return self.guided_backprop(index, target) * self.grad_cam(index, layer, target).unsqueeze(0)

    def filter_weights(self, layer: str) -> Tensor:
        layer = self.layer_name(layer)
        return self.cached("once", ("weights", layer), lambda: methods.filter_weights(self.model, layer))

    def baseline(self, index: int, kind: str) -> Tensor:
        """What fills an occluding patch, in the model's input space (see ``render.PATCH_FILLS``).

        Black and grey are pictures of that colour passed through ``preprocess``, as the user's picture is.
        """
        index = self.check_index(index)
        x = self.input(index)

        def uniform(level: int) -> Tensor:
            if self.given_inputs is not None:
                return torch.full_like(x, level / 255.0)
            picture = Image.new("RGB", self.pictures[index].size, (level, level, level))
            filled = self.preprocess(picture)
            return (filled.unsqueeze(0) if filled.ndim == 3 else filled).detach().to(x).expand_as(x)

        def compute() -> Tensor:
            if kind == "black":
                return uniform(0).contiguous()
            if kind == "grey":
                return uniform(128).contiguous()
            return fill_of({"image mean": "mean", "blurred": "blurred"}.get(kind, kind), x).contiguous()

        return self.cached("baselines", (index, kind), compute)

    # -- long work: on the WORK replica, so the live views stay free -------------------------------------

    def occlusion(self, index: int, target: int, window: int, stride: int, fill: str, checkpoint=None):
        with self.replicas.request(), self.replicas.borrow(WORK) as replica:
            return methods.occlusion(
                replica, self.input(index), target, window, stride, self.baseline(index, fill),
                output=self.output, checkpoint=checkpoint,
            )

    def filter_patterns(self, layer: str, filters, size: int, steps: int, checkpoint=None):
        layer = self.layer_name(layer)
        with self.replicas.borrow(WORK) as replica:
            return methods.filter_patterns(
                replica, layer, filters, size=size, steps=steps, normalize=self.normalization(), checkpoint=checkpoint
            )

    def explanation(self, index: int, method: str, layer: str, target: int, checkpoint=None) -> Tensor:
        """The ``(H, W)`` importance map of ``method`` (see ``methods.explanations``), cached per settings."""
        index = self.check_index(index)
        layer = self.layer_name(layer)

        def compute(checkpoint=None) -> Tensor:
            with self.replicas.borrow(WORK) as replica:
                return methods.explanation(
                    replica, self.input(index), layer, target, method, output=self.output, checkpoint=checkpoint
                )

        return self.cached("heatmaps", ("explanation", index, method, layer, int(target)), compute, checkpoint)

    def faithfulness(self, index: int, method: str, layer: str, target: int, checkpoint=None):
        """Deletion and insertion curves of that map (Petsiuk et al. 2018), cached per settings."""
        index = self.check_index(index)
        layer = self.layer_name(layer)

        def compute(checkpoint=None):
            saliency = self.explanation(index, method, layer, target, checkpoint)
            with self.replicas.borrow(WORK) as replica:
                return methods.deletion_insertion(
                    replica, self.input(index), target, saliency, output=self.output, checkpoint=checkpoint
                )

        return self.cached("heatmaps", ("faithfulness", index, method, layer, int(target)), compute, checkpoint)

    def sanity(self, index: int, method: str, layer: str, target: int, checkpoint=None):
        """The cascading randomisation of the model for that map (Adebayo et al. 2018)."""
        index = self.check_index(index)
        layer = self.layer_name(layer)

        def compute(checkpoint=None):
            with self.replicas.borrow(WORK) as replica:
                return methods.sanity_check(
                    replica, self.input(index), target, method, layer=layer if method in methods.CAM_METHODS else None,
                    output=self.output, checkpoint=checkpoint,
                )

        return self.cached("heatmaps", ("sanity", index, method, layer, int(target)), compute, checkpoint)

    def explanation_estimate(self, index: int, method: str, layer: str, checkpoint=None) -> float:
        """Seconds the Compare view's card of ``method`` takes, its map and its curves (see
        ``methods.estimated_seconds``: the model's forward time, measured once per replica and input shape)."""
        index = self.check_index(index)
        layer = self.layer_name(layer)
        with self.replicas.borrow(WORK) as replica:
            return methods.estimated_seconds(
                replica, self.input(index), layer, method, output=self.output, checkpoint=checkpoint
            )

    def embeddings(self, layer: str | None, checkpoint=None) -> np.ndarray:
        """Embeddings of every image at ``layer`` (None: the classifier's input, from the one pass), cached."""
        if layer is None:
            return self.dataset_pass.results(checkpoint)[1]
        layer = self.layer_name(layer)

        def compute(checkpoint=None):
            with self.replicas.borrow(WORK) as replica:
                return embed(
                    replica, self.pass_images(), layer, preprocess=self.preprocess, progress=False, output=self.output,
                    checkpoint=checkpoint,
                )

        return self.cached("once", ("embeddings", layer), compute, checkpoint)

    def heatmap_clusters(self, target: int, layer: str | None = None, method: str = "grad-cam", k: int | None = None, checkpoint=None):
        """SpRAy over the images of class ``target``: their maps clustered (see
        :func:`~cnnviz_widgets.heatmap_clusters.heatmap_clusters`), cached per weights, class, layer, method and k."""
        target = check_target(target, self.num_classes)
        layer = self.heatmap_layer() if layer is None else self.layer_name(layer)
        check_cam_method(method)
        k = check_cluster_count(k)

        def compute(checkpoint=None):
            return class_clusters(self, target, layer, method, k, checkpoint)

        return self.cached("once", ("heatmap_clusters", target, layer, method, k), compute, checkpoint)
