"""Guided backpropagation: the input gradient with only positive signals let back through each ReLU.

The result reads as a fine-grained picture of the input features that raise the class score; multiplied
by the upsampled Grad-CAM it becomes class-discriminative (guided Grad-CAM).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..inputs import check_image, check_logits, check_model, check_target
from ..probe import probe
from .grad_cam import grad_cam


def guided_backprop(model: nn.Module, x: Tensor, target) -> Tensor:
    """The guided gradient of class ``target``'s score with respect to ``x``: ``(C, H, W)`` on the CPU.

    Every ``nn.ReLU`` and ``nn.ReLU6`` module passes back only the positive part of its incoming
    gradient (functional ``F.relu`` calls inside ``forward`` cannot be reached and stay plain).
    """
    check_model(model)
    image = check_image(model, x).requires_grad_(True)
    with probe(model, guide_activations=True) as capture:
        logits = check_logits(model, capture.run(image))
        index = check_target(target, logits.shape[1])
        (gradient,) = torch.autograd.grad(logits[0, index], image)
    return gradient[0].cpu()


def guided_grad_cam(model: nn.Module, x: Tensor, layer, target) -> Tensor:
    """Guided backprop times the Grad-CAM map upsampled to the input (``raw=False``): ``(C, H, W)``."""
    cam = grad_cam(model, x, layer, target)
    return guided_backprop(model, x, target) * cam
