"""Class activation maps: where, in a layer's maps, the evidence for a class lies.

One pass serves the whole family: forward to get the layer's activations ``A`` and the class score,
backward from the score down to the layer only (never to the input or the weights). The pass runs on the
fast copy cut at the layer (:mod:`cnnviz_widgets.cut`: below it without autograd, BatchNorm folded), or
on the replica with a hook where there is no faithful cut. A method of the
family is then one small function of that pass (a :class:`LayerPass`) that weighs ``A``'s channels, or
its positions, into one map; the ReLU of that map is the CAM. Score-CAM weighs the channels by the score
of the image seen through each of them and Eigen-CAM projects ``A`` on its first principal component:
neither needs the backward pass, and Score-CAM runs its own batched forward passes.

Each definition is its paper's, as pytorch-grad-cam implements it (the tests hold them to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import Checkpoint, check
from ..cut import layer_cut
from ..fast import forwarder
from ..inputs import check_image, check_int, check_model, check_positive_int, check_target
from ..layers import output_layout, resolve_layer
from ..outputs import OutputToLogits, check_output, logits_of
from ..probe import model_lock, probe
from ..replica import borrow
from .feature_maps import layer_output
from .occlusion import DEFAULT_BATCH_SIZE

FLAT_SPREAD_STEPS = 8
"""A map whose values spread over no more than this many float steps of their magnitude is constant: a
1 x 1 map (a layer after global pooling) resized bilinearly comes out with values one step apart, which
min-max scaling would stretch into stripes from 0 to 1."""
GRAD_CAM_PLUS_PLUS_EPS = 1e-6
XGRAD_CAM_EPS = 1e-7
"""The small constants of pytorch-grad-cam's formulas, so that a channel that is all zeros weighs 0."""


@dataclass(frozen=True)
class LayerPass:
    """What a CAM method weighs.

    activations: the layer's ``(C, h, w)`` output for the image.
    gradients: the explained score's gradient with respect to it; None for the methods without backward.
    image: the ``(1, C_in, H, W)`` input.
    score: a batch of inputs ``(N, C_in, H, W)`` -> the explained score of each ``(N,)``, without autograd.
    batch_size, checkpoint: how a method that runs more forward passes (Score-CAM) batches and reports them.
    """

    activations: Tensor
    gradients: Tensor | None
    image: Tensor
    score: Callable[[Tensor], Tensor]
    batch_size: int
    checkpoint: Checkpoint | None


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_c weights_c * A_c``; weights per channel ``(C, 1, 1)`` or per position ``(C, h, w)``."""
    return (weights * activations).sum(dim=0)


def grad_cam_map(layer_pass: LayerPass) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017): each channel weighs the spatial mean of the score's gradient over it."""
    return weighted_sum(layer_pass.gradients.mean(dim=(1, 2), keepdim=True), layer_pass.activations)


def grad_cam_plus_plus_map(layer_pass: LayerPass) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19): positive gradients weighted per position by
    ``g^2 / (2 g^2 + sum_hw(A) g^3)``, so that several small regions of a channel all count."""
    gradients, activations = layer_pass.gradients, layer_pass.activations
    squared = gradients**2
    totals = activations.sum(dim=(1, 2), keepdim=True)
    alphas = squared / (2 * squared + totals * squared * gradients + GRAD_CAM_PLUS_PLUS_EPS)
    alphas = torch.where(gradients != 0, alphas, torch.zeros_like(alphas))
    return weighted_sum((gradients.clamp(min=0) * alphas).sum(dim=(1, 2), keepdim=True), activations)


def xgrad_cam_map(layer_pass: LayerPass) -> Tensor:
    """XGrad-CAM (Fu et al. 2020): each channel weighs its gradient averaged with its own activations as weights."""
    gradients, activations = layer_pass.gradients, layer_pass.activations
    totals = activations.sum(dim=(1, 2), keepdim=True)
    return weighted_sum((gradients * activations / (totals + XGRAD_CAM_EPS)).sum(dim=(1, 2), keepdim=True), activations)


def layer_cam_map(layer_pass: LayerPass) -> Tensor:
    """Layer-CAM (Jiang et al. 2021): each position of each channel weighs its own positive gradient."""
    return weighted_sum(layer_pass.gradients.clamp(min=0), layer_pass.activations)


def hires_cam_map(layer_pass: LayerPass) -> Tensor:
    """HiResCAM (Draelos & Carin 2020): each position of each channel weighs its own gradient. When the maps reach
    the score through average pooling and a linear layer, the map before the ReLU adds up to the score minus
    the bias: it shows exactly where the score comes from."""
    return weighted_sum(layer_pass.gradients, layer_pass.activations)


def score_cam_map(layer_pass: LayerPass) -> Tensor:
    """Score-CAM (Wang et al. 2020): each channel, resized to the input and min-max scaled, masks the image; the
    channels weigh the softmax, over channels, of the masked images' scores.

    The score is the logit, as in pytorch-grad-cam; a softmax ignores a common offset, so this equals the
    paper's increase of confidence over a baseline image. The masks are resized with aligned corners, as
    pytorch-grad-cam resizes them: the softmax of logits puts most of the weight on a few channels, so the
    map is sensitive to it (EfficientNet-Lite0 at 96 px: correlation 0.83 with the half-pixel resize).
    """
    activations = layer_pass.activations
    channels = activations.shape[0]
    scores = []
    for start in range(0, channels, layer_pass.batch_size):
        check(layer_pass.checkpoint, start / channels)
        chunk = activations[start : start + layer_pass.batch_size]
        masks = min_max_scaled(resized(chunk, layer_pass.image.shape[-2:], align_corners=True))
        scores.append(layer_pass.score(layer_pass.image * masks[:, None]))
    weights = torch.softmax(torch.cat(scores), dim=0)
    return weighted_sum(weights[:, None, None], activations)


def eigen_cam_map(layer_pass: LayerPass) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): the layer's maps projected on their first principal component."""
    return principal_projection(layer_pass.activations)


def principal_projection(activations: Tensor) -> Tensor:
    """The centred ``(C, h, w)`` activations, each position a point in channel space, projected on their
    first principal component: an ``(h, w)`` map.

    The component's sign is free (pytorch-grad-cam leaves it to LAPACK, whose choice flips from one image
    to the next); here it is taken so that the map rises with the layer's total activation, which is the
    same as the component's loadings summing to a positive number.
    """
    positions = activations.flatten(1).T.double()
    centred = positions - positions.mean(dim=0)
    _, _, right = torch.linalg.svd(centred, full_matrices=False)
    component = right[0] if right[0].sum() >= 0 else -right[0]
    return (centred @ component).reshape(activations.shape[1:]).to(activations.dtype)


@dataclass(frozen=True)
class CamMethod:
    """A CAM method: its name for people, its map before the ReLU from one :class:`LayerPass`, and whether
    that needs the gradients."""

    label: str
    map: Callable[[LayerPass], Tensor]
    uses_gradients: bool = True


CAM_METHODS = {
    "grad-cam": CamMethod("Grad-CAM", grad_cam_map),
    "grad-cam++": CamMethod("Grad-CAM++", grad_cam_plus_plus_map),
    "xgrad-cam": CamMethod("XGrad-CAM", xgrad_cam_map),
    "layer-cam": CamMethod("Layer-CAM", layer_cam_map),
    "hires-cam": CamMethod("HiResCAM", hires_cam_map),
    "score-cam": CamMethod("Score-CAM", score_cam_map, uses_gradients=False),
    "eigen-cam": CamMethod("Eigen-CAM", eigen_cam_map, uses_gradients=False),
}
CLASS_AGNOSTIC = ("eigen-cam",)


def grad_cam(model: nn.Module, x: Tensor, layer, target, raw: bool = False, *, output=None, contrast=None) -> Tensor:
    """Grad-CAM of class ``target`` at ``layer`` for the image ``x``: ``cam(..., method="grad-cam")``.

    raw=True: the ``(h, w)`` map ``ReLU(sum_c mean_hw(d y_target / d A_c) * A_c)`` at the layer's resolution.
    raw=False: that map resized bilinearly (align_corners=False) to the input's ``(H, W)`` and min-max
    scaled to [0, 1] (all zeros when the map is constant).
    output: a callable from the model's output to its logits, for models whose forward returns something
    else than a tensor, a tuple or an object with ``.logits``.
    contrast: another class: the map of ``logit[target] - logit[contrast]``, why ``target`` rather than it.
    """
    return cam(model, x, layer, target, "grad-cam", raw, output=output, contrast=contrast)


def cam(
    model: nn.Module,
    x: Tensor,
    layer,
    target,
    method: str = "grad-cam",
    raw: bool = False,
    *,
    output=None,
    contrast=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    checkpoint: Checkpoint | None = None,
    cut: bool = True,
) -> Tensor:
    """A class activation map of class ``target`` at ``layer`` for the image ``x``.

    method: one of ``CAM_METHODS``: "grad-cam", "grad-cam++", "xgrad-cam", "layer-cam", "hires-cam",
        "score-cam", "eigen-cam" (the first principal component of the layer's maps: the same for every class).
    raw: True for the ``(h, w)`` map at the layer's resolution; False for it resized bilinearly
        (align_corners=False) to the input's ``(H, W)`` and min-max scaled to [0, 1].
    contrast: another class: the map explains ``logit[target] - logit[contrast]``, why ``target`` rather
        than ``contrast``.
    batch_size, checkpoint: Score-CAM's masked images per forward pass, and ``checkpoint(fraction_done)``
        called between two of those passes (raise from it to stop); the other methods make one pass.
    cut: take the layer's activations from the fast copy cut at the layer where that cut is faithful
        (:mod:`cnnviz_widgets.cut`); False: from the replica, with a hook. A cut is built for each state of
        the weights and pays off from its second use: on EfficientNet-Lite0 a Grad-CAM took 0.15 s on a cut
        already built, 0.2 s with the hook and 2 s when the cut had to be built, so a model whose weights
        change at every call (the sanity cascade) is faster without it.

    Score-CAM weighs the layer's maps as they are, with weights that land on a few channels: on a layer whose
    outputs go negative (a convolution before its activation) the map can be empty; take the activation after
    it (on EfficientNet-Lite0, ``_conv_head`` gives an empty map for the cat, the head's ReLU6 ``_swish`` not).
    """
    check_model(model)
    output = check_output(output)
    chosen = check_cam_method(method)
    if contrast is not None and method in CLASS_AGNOSTIC:
        raise ValueError(f"contrast: {method} is the same map for every class; leave contrast=None (got {contrast!r})")
    batch_size = check_positive_int(batch_size, "batch_size")
    if not isinstance(cut, bool):
        raise TypeError(f"cut: expected True or False, got {cut!r}")
    name, _ = resolve_layer(model, layer)
    with borrow(model) as replica:
        image = check_image(replica, x)
        activations, gradients, explained = layer_pass(replica, image, name, target, contrast, output, chosen, cut)

        forward = None

        def score(batch: Tensor) -> Tensor:
            nonlocal forward
            with probe(replica), torch.no_grad():
                # Made on the first call: only Score-CAM scores perturbed pictures, hundreds of them.
                if forward is None:
                    forward = forwarder(replica, image, "score-cam", batch_size)
                return explained(logits_of(forward(batch), output))

        weighted = chosen.map(LayerPass(activations, gradients, image, score, batch_size, checkpoint))
    activation_map = torch.relu(weighted)
    if raw:
        return activation_map.cpu()
    return upsample_to(activation_map, image.shape[-2:]).cpu()


def check_cam_method(method) -> CamMethod:
    if not isinstance(method, str) or method not in CAM_METHODS:
        raise ValueError(f"method: expected one of {', '.join(CAM_METHODS)}; got {method!r}")
    return CAM_METHODS[method]


def explained_score(target, contrast, num_classes: int) -> Callable[[Tensor], Tensor]:
    """Logits ``(N, K)`` -> the score a map explains ``(N,)``: ``logit[target]``, minus ``logit[contrast]`` if given."""
    index = check_target(target, num_classes)
    if contrast is None:
        return lambda logits: logits[:, index]
    other = check_int(contrast, "contrast")
    if not 0 <= other < num_classes:
        raise ValueError(f"contrast: class index {other} is out of range; the model has classes 0..{num_classes - 1}")
    if other == index:
        raise ValueError(f"contrast: class {other} is the target itself; a class against itself has nothing to show")
    return lambda logits: logits[:, index] - logits[:, other]


def layer_pass(
    model: nn.Module,
    image: Tensor,
    name: str,
    target,
    contrast,
    output: OutputToLogits | None,
    method: CamMethod,
    use_cut: bool = True,
) -> tuple[Tensor, Tensor | None, Callable[[Tensor], Tensor]]:
    """The layer's ``(C, h, w)`` activations for ``image``, the explained score's gradient with respect to them
    (None when ``method`` does not use it), and the function from logits to that score."""
    activations, gradients, _, explained = batch_layer_pass(model, image, name, target, contrast, output, method, use_cut)
    return activations[0], None if gradients is None else gradients[0], explained


def batch_layer_pass(
    model: nn.Module,
    images: Tensor,
    name: str,
    target,
    contrast,
    output: OutputToLogits | None,
    method: CamMethod,
    use_cut: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor, Callable[[Tensor], Tensor]]:
    """:func:`layer_pass` for a batch ``(N, C_in, H, W)`` in one forward and one backward pass: the layer's
    ``(N, C, h, w)`` activations, their gradients (or None), the logits ``(N, K)`` and the explained score.

    The backward starts from the batch's summed score: in eval mode no layer mixes the images of a batch, so
    each image's gradient is its own score's."""
    cut = layer_cut(model, name, images) if use_cut else None
    if cut is None:
        return _hooked_layer_pass(model, images, name, target, contrast, output, method)
    with model_lock(model), torch.enable_grad():
        activations, model_output = cut.run(model, images, method.uses_gradients)
        return _with_gradients(model, images, activations, logits_of(model_output, output), name, target, contrast, method)


def _hooked_layer_pass(model, images, name, target, contrast, output, method):
    """:func:`batch_layer_pass` by a hook on the replica, for a model that cannot be cut at ``name``."""
    module = model.get_submodule(name)
    with probe(model, outputs=[(name, module)], differentiable=method.uses_gradients) as capture:
        logits = logits_of(capture.run(images), output)
        captured = layer_output(capture.outputs, name, module)
        return _with_gradients(model, images, captured, logits, name, target, contrast, method)


def _with_gradients(model, images, captured, logits, name, target, contrast, method):
    """:func:`batch_layer_pass`'s answer from the layer's output captured in a pass of ``images`` and the logits
    computed from it.

    A transformer layer's tokens (or channels-last output) are read as maps, and so is the gradient, taken
    with respect to the captured tensor (:meth:`~cnnviz_widgets.layers.MapLayout.maps`)."""
    explained = explained_score(target, contrast, logits.shape[1])
    layout = output_layout(model, images, captured, model.get_submodule(name))
    if layout is None:
        raise ValueError(
            f"layer: {method.label} needs a layer with spatial maps (N, C, h, w) or patch tokens; {name!r} "
            f"outputs {tuple(captured.shape)}"
        )
    activations = layout.maps(captured.detach())
    if not method.uses_gradients:
        return activations, None, logits.detach(), explained
    score = explained(logits).sum()
    gradients = None
    if score.requires_grad:
        (gradients,) = torch.autograd.grad(score, captured, allow_unused=True)
    if gradients is None:
        # A quantized layer's packed weights are a submodule of their own ("_packed_params"): the layer names it.
        quantized = [
            inner for inner, module in model.named_modules()
            if type(module).__module__.startswith("torch.ao.nn.quantized") and not any(part.startswith("_") for part in inner.split("."))
        ]  # fmt: skip
        if quantized:
            raise ValueError(
                f"model: no gradient reaches {name!r} through the quantized layers ({', '.join(quantized[:3])}); "
                f"{method.label} needs gradients, Score-CAM and occlusion do not"
            )
        raise ValueError(f"layer: the model's output does not depend on {name!r}; pick a layer on its path")
    return activations, layout.maps(gradients), logits.detach(), explained


def resized(maps: Tensor, size, align_corners: bool = False) -> Tensor:
    """Bilinear resize of ``(N, h, w)`` maps to ``size``."""
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=align_corners)[:, 0]


def min_max_scaled(maps: Tensor) -> Tensor:
    """Each of ``(N, H, W)`` maps scaled to [0, 1]; a constant map, up to rounding (``FLAT_SPREAD_STEPS``),
    becomes all zeros."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    span = high - low
    rounding = FLAT_SPREAD_STEPS * torch.finfo(maps.dtype).eps * torch.maximum(low.abs(), high.abs())
    scaled = (maps - low) / span.clamp(min=torch.finfo(maps.dtype).tiny)
    return torch.where(span > rounding, scaled, torch.zeros_like(scaled))


def upsample_to(activation_map: Tensor, size) -> Tensor:
    """Bilinear resize of an ``(h, w)`` map to ``size`` (align_corners=False), min-max scaled to [0, 1]."""
    return min_max_scaled(resized(activation_map[None], size))[0]
