"""Class activation maps from gradients: where, in a layer's maps, the evidence for a class lies.

One pass builds every map of the family: forward to get the layer's activations ``A`` and the class
score, backward from the score down to the layer only (never to the input or the weights). A method of
the family is then just the way it weighs the channels of ``A`` from the gradients (``channel_weights``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..inputs import check_image, check_model, check_target
from ..layers import resolve_layer
from ..outputs import OutputToLogits, check_output, logits_of
from ..probe import probe
from ..replica import borrow
from .feature_maps import layer_output

ChannelWeights = Callable[[Tensor, Tensor], Tensor]


def gradient_means(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM: each channel weighs the spatial mean of the class score's gradient over it."""
    return gradients.mean(dim=(-2, -1), keepdim=True)


def grad_cam(model: nn.Module, x: Tensor, layer, target, raw: bool = False, *, output=None) -> Tensor:
    """Grad-CAM of class ``target`` at ``layer`` for the image ``x``.

    raw=True: the ``(h, w)`` map ``ReLU(sum_c mean_hw(d y_target / d A_c) * A_c)`` at the layer's resolution.
    raw=False: that map resized bilinearly (align_corners=False) to the input's ``(H, W)`` and min-max
    scaled to [0, 1] (all zeros when the map is constant).
    output: a callable from the model's output to its logits, for models whose forward returns something
    else than a tensor, a tuple or an object with ``.logits``.
    """
    return class_activation_map(model, x, layer, target, gradient_means, raw=raw, output=output)


def class_activation_map(
    model: nn.Module, x: Tensor, layer, target, channel_weights: ChannelWeights, raw: bool = False, output=None
) -> Tensor:
    """``ReLU(sum_c w_c * A_c)`` with ``w = channel_weights(A, dy_target/dA)``; see :func:`grad_cam`."""
    check_model(model)
    output = check_output(output)
    name, _ = resolve_layer(model, layer)
    with borrow(model) as replica:
        image = check_image(replica, x)
        activations, gradients = activations_and_gradients(replica, image, name, target, output)
    weights = channel_weights(activations, gradients)
    cam = torch.relu((weights * activations).sum(dim=0))
    if raw:
        return cam.cpu()
    return upsample_to(cam, image.shape[-2:]).cpu()


def activations_and_gradients(
    model: nn.Module, image: Tensor, name: str, target, output: OutputToLogits | None = None
) -> tuple[Tensor, Tensor]:
    """The layer's ``(C, h, w)`` activations for ``image`` and the target score's gradient with respect to them."""
    module = model.get_submodule(name)
    with probe(model, outputs=[(name, module)], differentiable=True) as capture:
        logits = logits_of(capture.run(image), output)
        index = check_target(target, logits.shape[1])
        activations = layer_output(capture.outputs, name, module)
        if activations.dim() != 4:
            raise ValueError(
                f"layer: Grad-CAM needs a layer with spatial maps (N, C, h, w); {name!r} outputs "
                f"{tuple(activations.shape)}"
            )
        score = logits[0, index]
        unused = not score.requires_grad
        if not unused:
            (gradients,) = torch.autograd.grad(score, activations, allow_unused=True)
            unused = gradients is None
    if unused:
        raise ValueError(f"layer: the model's output does not depend on {name!r}; pick a layer on its path")
    return activations.detach()[0], gradients[0]


def upsample_to(cam: Tensor, size) -> Tensor:
    """Bilinear resize of an ``(h, w)`` map to ``size`` (align_corners=False), min-max scaled to [0, 1]."""
    resized = F.interpolate(cam[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    low, high = torch.aminmax(resized)
    if high <= low:
        return torch.zeros_like(resized)
    return (resized - low) / (high - low)
