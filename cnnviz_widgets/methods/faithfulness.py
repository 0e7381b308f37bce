"""Does the map point at what the model uses? Deletion and insertion curves (Petsiuk et al. 2018, RISE).

Deletion removes the image's pixels in the order of the map, most salient first, and watches the class
probability: a faithful map makes it fall fast (a small area under the curve). Insertion starts from a
baseline (by default a strongly blurred copy of the image) and puts the pixels back in the same order: a
faithful map makes the probability rise fast (a large area).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import Checkpoint, check
from ..fast import forwarder
from ..inputs import check_baseline, check_image, check_model, check_positive_int, check_target
from ..outputs import check_output, logits_of
from ..probe import probe
from ..replica import borrow
from .occlusion import DEFAULT_BATCH_SIZE, fill_of


DEFAULT_STEPS = 50


@dataclass(frozen=True)
class FaithfulnessResult:
    """deletion, insertion: ``(steps + 1,)`` softmax probabilities of the target, after ``k / steps`` of the
    pixels were removed (deletion) or put back (insertion), for ``k = 0 .. steps``.
    deletion_auc, insertion_auc: the areas under those curves over [0, 1] (trapezoid rule).
    """

    deletion: Tensor
    insertion: Tensor
    deletion_auc: float
    insertion_auc: float


def deletion_insertion(
    model: nn.Module,
    x: Tensor,
    target,
    saliency,
    steps: int = DEFAULT_STEPS,
    baseline="blurred",
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    output=None,
    checkpoint: Checkpoint | None = None,
) -> FaithfulnessResult:
    """Deletion and insertion curves of class ``target`` for the image ``x`` in the order of ``saliency``.

    saliency: an ``(H, W)`` map (higher is more salient), or a ``(C, H, W)`` attribution, whose absolute
        values are summed over the channels. Pixels go from the most salient to the least; equal values in
        row-major order.
    steps: the curves have ``steps + 1`` points; point ``k`` has the first ``k * H * W // steps`` pixels
        in that order removed (deletion) or put back (insertion), all channels at once.
    baseline: what a removed pixel becomes, as occlusion's patch: ``"blurred"`` (the image under a Gaussian
        blur of sigma ``occlusion.BLUR_SIGMA`` pixels), ``"mean"`` (the image's mean per channel), a number,
        or a tensor broadcastable to ``x``.
    batch_size: images per forward pass. checkpoint: ``checkpoint(fraction_done)`` between two passes.
    """
    check_model(model)
    output = check_output(output)
    steps = check_positive_int(steps, "steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    with borrow(model) as replica:
        image = check_image(replica, x)
        ranks = saliency_ranks(saliency, image.shape[-2:]).to(image.device)
        fill = check_baseline(fill_of(baseline, image), image)
        counts = torch.arange(steps + 1, device=image.device) * ranks.numel() // steps
        # Deletion's points first, then insertion's: one list of (pixels changed, image kept where not).
        changed = torch.cat([counts, counts])
        deleting = torch.arange(2 * (steps + 1), device=image.device) <= steps
        probabilities = []
        with probe(replica), torch.no_grad():
            forward = forwarder(replica, image, "deletion and insertion", batch_size)
            for start in range(0, len(changed), batch_size):
                check(checkpoint, start / len(changed))
                chunk = slice(start, start + batch_size)
                masks = (ranks < changed[chunk, None, None])[:, None]
                keep_image = masks != deleting[chunk, None, None, None]
                batch = torch.where(keep_image, image, fill)
                logits = logits_of(forward(batch), output)
                index = check_target(target, logits.shape[1])
                probabilities.append(torch.softmax(logits, dim=1)[:, index])
    deletion, insertion = torch.cat(probabilities).cpu().split(steps + 1)
    return FaithfulnessResult(deletion, insertion, area_under(deletion), area_under(insertion))


def area_under(curve: Tensor) -> float:
    """The trapezoid area under ``curve``, its points evenly spaced over [0, 1]."""
    return float((curve[1:] + curve[:-1]).sum() / (2 * (len(curve) - 1)))


def saliency_ranks(saliency, size) -> Tensor:
    """Each pixel's place in the deletion order: an ``(H, W)`` long tensor, 0 for the most salient pixel."""
    if isinstance(saliency, np.ndarray):
        saliency = torch.from_numpy(saliency)
    if not isinstance(saliency, Tensor):
        raise TypeError(
            f"saliency: expected a tensor or array of shape (H, W) or (C, H, W), got {type(saliency).__name__}"
        )
    saliency = saliency.detach().cpu()
    if saliency.dim() == 3:
        saliency = saliency.abs().sum(dim=0)
    if saliency.dim() != 2 or tuple(saliency.shape) != tuple(size):
        raise ValueError(
            f"saliency: expected shape (H, W) or (C, H, W) with (H, W) = {tuple(size)} as x, "
            f"got {tuple(saliency.shape)}"
        )
    if not saliency.is_floating_point():
        saliency = saliency.double()
    if not torch.isfinite(saliency).all():
        raise ValueError("saliency: contains NaN or infinite values")
    order = torch.sort(saliency.flatten(), descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order))
    return ranks.reshape(saliency.shape)
