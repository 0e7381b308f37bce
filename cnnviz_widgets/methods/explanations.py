"""Every way this package explains a class, behind one call: the map of where the evidence lies.

The Compare view puts them side by side on one picture and scores each with deletion and insertion, so the
maps are reduced to one importance per pixel: ``(H, W)``, non-negative, the largest value 1. Gradient maps
``(C, H, W)`` keep the magnitude summed over the channels (a pixel matters whichever way it pushes); the
occlusion map keeps only the drops in probability (hiding a pixel that helps the class).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .grad_cam import cam
from .gradients import gradients
from .guided_backprop import guided_backprop, guided_grad_cam
from .occlusion import occlusion


@dataclass(frozen=True)
class Explanation:
    """A method as the Compare view lists it: its name for people, and whether it takes seconds."""

    name: str
    label: str
    slow: bool


EXPLANATIONS = (
    Explanation("grad-cam", "Grad-CAM", False),
    Explanation("grad-cam++", "Grad-CAM++", False),
    Explanation("xgrad-cam", "XGrad-CAM", False),
    Explanation("layer-cam", "Layer-CAM", False),
    Explanation("hires-cam", "HiRes-CAM", False),
    Explanation("eigen-cam", "Eigen-CAM", False),
    Explanation("saliency", "saliency", False),
    Explanation("guided-backprop", "guided backprop", False),
    Explanation("guided-grad-cam", "guided Grad-CAM", False),
    Explanation("smoothgrad", "SmoothGrad", True),
    Explanation("integrated-gradients", "integrated gradients", True),
    Explanation("occlusion", "occlusion", True),
    Explanation("score-cam", "Score-CAM", True),
)
"""In the order they are computed: the fast ones first, so the view fills in at once. Score-CAM is last: one
forward pass per channel of the layer (1,280 at EfficientNet-Lite0's last conv, 10 s or more on two cores)."""

CAM_METHODS = ("grad-cam", "grad-cam++", "xgrad-cam", "layer-cam", "hires-cam", "eigen-cam", "score-cam")
GRADIENT_METHODS = ("saliency", "smoothgrad", "integrated-gradients")
OCCLUSION_FRACTION = 8
"""Occlusion in the Compare view: a window of 1/8 of the picture's side, moved by half a window."""


def explanation(model: nn.Module, x: Tensor, layer: str, target: int, method: str, *, output=None, checkpoint=None) -> Tensor:
    """The ``(H, W)`` importance map of ``method`` (one of ``EXPLANATIONS``' names) for class ``target``."""
    if method in CAM_METHODS:
        return cam(model, x, layer, target, method=method, output=output)
    if method in GRADIENT_METHODS:
        return _magnitude(gradients(model, x, target, method=method, output=output, checkpoint=checkpoint))
    if method == "guided-backprop":
        return _magnitude(guided_backprop(model, x, target, output=output))
    if method == "guided-grad-cam":
        return _magnitude(guided_grad_cam(model, x, layer, target, output=output))
    if method == "occlusion":
        side = min(x.shape[-2:])
        window = max(2, side // OCCLUSION_FRACTION)
        result = occlusion(model, x, target, window=window, stride=max(1, window // 2), output=output, checkpoint=checkpoint)
        return _unit(result.attribution.clamp(min=0))
    names = ", ".join(item.name for item in EXPLANATIONS)
    raise ValueError(f"method: expected one of {names}; got {method!r}")


def _magnitude(gradient: Tensor) -> Tensor:
    return _unit(gradient.abs().sum(dim=0))


def _unit(values: Tensor) -> Tensor:
    top = values.max()
    return values / top if top > 0 else torch.zeros_like(values)
