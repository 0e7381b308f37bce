"""Occlusion sensitivity: slide a patch over the image and watch the class probability fall.

Every occluded image goes through the network; ``forward_occluded`` turns one batch of patch positions
into logits and is the single place to replace (e.g. by incremental inference that recomputes only the
region a patch touches). The fills a patch can take beside a number or a tensor of the user's
(``fill``): the image's mean colour, or a blurred copy of the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..inputs import (
    check_baseline,
    check_image,
    check_model,
    check_positive_int,
    check_target,
    check_window,
)
from ..outputs import check_output, logits_of
from ..probe import probe
from ..replica import borrow

Box = tuple[int, int, int, int]
"""A patch ``(top, bottom, left, right)``: rows ``top:bottom`` and columns ``left:right`` of the image."""

Checkpoint = Callable[..., None]
"""The cancellation protocol of every long method: ``checkpoint(fraction_done)`` is called between two
steps of the work; raising from it stops the work, and the exception reaches the caller."""

BLUR_SIGMA = 8.0
"""Gaussian sigma, in input pixels, of the "blurred" fill: enough to wipe out a 224 px photo's textures
while its colours stay."""

DEFAULT_BATCH_SIZE = 4
"""Occluded images per forward pass. On the CPU small batches win: each layer's activations stay in cache
(EfficientNet-Lite0, 49 windows of 56 px: 370 ms in batches of 4, 1,450 ms in batches of 25). Pass a
larger ``batch_size`` on a GPU."""


@dataclass(frozen=True)
class OcclusionResult:
    """scores: ``(rows, cols)`` probability of the target with the patch at each position.
    attribution: ``(H, W)`` for each pixel, the mean over the windows covering it of ``p(x) - p(x occluded)``.
    probability: ``p(x)``, the target's probability on the intact image.
    """

    scores: Tensor
    attribution: Tensor
    probability: float


def forward_occluded(model: nn.Module, image: Tensor, baseline: Tensor, boxes: Sequence[Box]) -> Tensor:
    """Logits ``(len(boxes), K)`` of ``image`` (1, C, H, W) with each box replaced by ``baseline``."""
    batch = image.expand(len(boxes), -1, -1, -1).clone()
    for row, (top, bottom, left, right) in enumerate(boxes):
        batch[row, :, top:bottom, left:right] = baseline[0, :, top:bottom, left:right]
    return model(batch)


def window_boxes(
    height: int, width: int, window: tuple[int, int], stride: tuple[int, int]
) -> tuple[list[Box], int, int]:
    """Patch positions, row-major, and the grid's rows and columns.

    Positions start every ``stride`` pixels until the window reaches the far edge; the last one may hang
    over and is cut at the border.
    """
    rows = -(-(height - window[0]) // stride[0]) + 1
    cols = -(-(width - window[1]) // stride[1]) + 1
    boxes = [
        (top, min(top + window[0], height), left, min(left + window[1], width))
        for top in range(0, rows * stride[0], stride[0])
        for left in range(0, cols * stride[1], stride[1])
    ]
    return boxes, rows, cols


def occlusion(
    model: nn.Module,
    x: Tensor,
    target,
    window=32,
    stride=16,
    baseline=0.0,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    output=None,
    checkpoint: Checkpoint | None = None,
) -> OcclusionResult:
    """Occlusion sensitivity of class ``target`` for the image ``x`` (see :class:`OcclusionResult`).

    window, stride: an int or an ``(h, w)`` pair, in input pixels.
    baseline: what fills the patch: a number, a tensor broadcastable to ``x`` (e.g. a grey picture passed
        through the model's preprocessing), ``"mean"`` (the image's mean per channel) or ``"blurred"`` (the
        image under a Gaussian blur of sigma ``BLUR_SIGMA`` pixels).
    checkpoint: called as ``checkpoint(fraction_done)`` between two batches; raise from it to stop.
    """
    check_model(model)
    output = check_output(output)
    batch_size = check_positive_int(batch_size, "batch_size")
    with borrow(model) as replica:
        image = check_image(replica, x)
        (window_hw, stride_hw) = check_window(window, stride, image.shape[-2], image.shape[-1])
        fill = check_baseline(fill_of(baseline, image), image)
        boxes, rows, cols = window_boxes(image.shape[-2], image.shape[-1], window_hw, stride_hw)
        with probe(replica) as capture:
            logits = logits_of(capture.run(image), output)
            index = check_target(target, logits.shape[1])
            probability = torch.softmax(logits, dim=1)[0, index]
            scores = []
            for start in range(0, len(boxes), batch_size):
                if checkpoint is not None:
                    checkpoint(start / len(boxes))
                batch_logits = logits_of(forward_occluded(replica, image, fill, boxes[start : start + batch_size]), output)
                scores.append(torch.softmax(batch_logits, dim=1)[:, index])
        scores = torch.cat(scores)
    attribution = spread_over_windows(probability - scores, boxes, image.shape[-2:])
    return OcclusionResult(scores.reshape(rows, cols).cpu(), attribution.cpu(), float(probability))


def spread_over_windows(drops: Tensor, boxes: Sequence[Box], size) -> Tensor:
    """For each pixel, the mean of ``drops`` over the boxes that cover it."""
    total = torch.zeros(tuple(size), dtype=drops.dtype, device=drops.device)
    count = torch.zeros_like(total)
    for drop, (top, bottom, left, right) in zip(drops, boxes):
        total[top:bottom, left:right] += drop
        count[top:bottom, left:right] += 1
    return total / count


FILLS = ("mean", "blurred")


def fill_of(baseline, image: Tensor):
    """``"mean"`` and ``"blurred"`` made into tensors like ``image``; anything else is left to check_baseline."""
    if isinstance(baseline, str):
        if baseline == "mean":
            return image.mean(dim=(-2, -1), keepdim=True).expand_as(image)
        if baseline == "blurred":
            return blur(image)
        raise ValueError(f"baseline: expected a number, a tensor or one of {FILLS}, got {baseline!r}")
    return baseline


def blur(x: Tensor, sigma: float = BLUR_SIGMA) -> Tensor:
    """Gaussian blur of ``(1, C, H, W)`` per channel, edges replicated."""
    radius = int(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x)
    channels = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
