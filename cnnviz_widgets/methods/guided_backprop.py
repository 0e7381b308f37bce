"""Guided backpropagation: the input gradient with only positive signals let back through each ReLU.

The result reads as a fine-grained picture of the input features that raise the class score; multiplied
by the upsampled Grad-CAM it becomes class-discriminative (guided Grad-CAM).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..inputs import check_image, check_model, check_target
from ..layers import resolve_layer
from ..outputs import check_output, logits_of
from ..probe import probe
from ..replica import borrow
from .grad_cam import grad_cam


def guided_backprop(model: nn.Module, x: Tensor, target, *, output=None) -> Tensor:
    """The guided gradient of class ``target``'s score with respect to ``x``: ``(C, H, W)`` on the CPU.

    Every ``nn.ReLU`` and ``nn.ReLU6`` module passes back only the positive part of its incoming
    gradient (functional ``F.relu`` calls inside ``forward`` cannot be reached and stay plain).
    """
    check_model(model)
    output = check_output(output)
    with borrow(model) as replica:
        image = check_image(replica, x).requires_grad_(True)
        with probe(replica, guide_activations=True) as capture:
            logits = logits_of(capture.run(image), output)
            index = check_target(target, logits.shape[1])
            (gradient,) = torch.autograd.grad(logits[0, index], image)
    return gradient[0].cpu()


def guided_grad_cam(model: nn.Module, x: Tensor, layer, target, *, output=None) -> Tensor:
    """Guided backprop times the Grad-CAM map upsampled to the input (``raw=False``): ``(C, H, W)``."""
    name, _ = resolve_layer(check_model(model), layer)
    with borrow(model) as replica:
        cam = grad_cam(replica, x, name, target, output=output)
        return guided_backprop(replica, x, target, output=output) * cam
