"""Occlusion sensitivity: slide a patch over the image and watch the class probability fall.

Every occluded image goes through the network, batch by batch, on the replica's fast copy
(``cnnviz_widgets.fast``: BatchNorm folded, memory format and batch size measured) and by incremental
inference where the network allows it (``methods/incremental.py``: each layer recomputes only the region a
patch changes); the scores equal those of whole forward passes of the replica up to rounding. The fills a
patch can take beside a number or a tensor of the user's (``fill``): the image's mean colour, or a blurred
copy of the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import Checkpoint, check
from ..fast import FastCopy, Tuner, candidates, fast_copy, tuner
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
from .incremental import Box, engine_for

BLUR_SIGMA = 8.0
"""Gaussian sigma, in input pixels, of the "blurred" fill: enough to wipe out a 224 px photo's textures
while its colours stay."""

DEFAULT_BATCH_SIZE = 4
"""Perturbed images per whole forward pass, for the methods that run many (Score-CAM, deletion and
insertion). On the CPU small batches win: each layer's activations stay in cache (EfficientNet-Lite0, 49
windows of 56 px: 370 ms in batches of 4, 1,450 ms in batches of 25). Pass a larger ``batch_size`` on a GPU.
Occlusion measures its own (``BATCH_SIZES``)."""

BATCH_SIZES = {"incremental": (16, 32), "full": (4, 8)}
"""The batch sizes the tuner tries, per engine."""

COARSE_SIDE = 4
"""Positions along each side of the first, coarsest level of a map (16 at most): on EfficientNet-Lite0 at
224 px, the first picture of a panel's map."""


@dataclass(frozen=True)
class OcclusionResult:
    """scores: ``(rows, cols)`` probability of the target with the patch at each position.
    attribution: ``(H, W)`` for each pixel, the mean over the windows covering it of ``p(x) - p(x occluded)``.
    probability: ``p(x)``, the target's probability on the intact image.
    """

    scores: Tensor
    attribution: Tensor
    probability: float


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
    batch_size: int | None = None,
    incremental: bool = True,
    output=None,
    checkpoint: Checkpoint | None = None,
) -> OcclusionResult:
    """Occlusion sensitivity of class ``target`` for the image ``x`` (see :class:`OcclusionResult`).

    window, stride: an int or an ``(h, w)`` pair, in input pixels.
    baseline: what fills the patch: a number, a tensor broadcastable to ``x`` (e.g. a grey picture passed
        through the model's preprocessing), ``"mean"`` (the image's mean per channel) or ``"blurred"`` (the
        image under a Gaussian blur of sigma ``BLUR_SIGMA`` pixels).
    batch_size: occluded images per batch; None: the fastest of ``BATCH_SIZES``, measured on the first batches.
    incremental: False runs every occluded image through the whole network (the reference the incremental
        engine is tested against).
    checkpoint: called as ``checkpoint(fraction_done)`` between two batches; raise from it to stop. The
        positions run coarse to fine (``refinement_levels``): after each level but the last, it is also
        called as ``checkpoint(fraction_done, partial)``, ``partial`` the :class:`OcclusionResult` of the
        levels so far (each place takes its nearest computed score), so that a panel can draw the map as it
        sharpens.
    """
    check_model(model)
    output = check_output(output)
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    if not isinstance(incremental, bool):
        raise TypeError(f"incremental: expected True or False, got {incremental!r}")
    with borrow(model) as replica:
        image = check_image(replica, x)
        (window_hw, stride_hw) = check_window(window, stride, image.shape[-2], image.shape[-1])
        fill = check_baseline(fill_of(baseline, image), image)
        boxes, rows, cols = window_boxes(image.shape[-2], image.shape[-1], window_hw, stride_hw)
        with probe(replica) as capture:
            intact = capture.run(image)
            logits = logits_of(intact, output)
            index = check_target(target, logits.shape[1])
            probability = torch.softmax(logits, dim=1)[0, index]
            fast = fast_copy(replica, image, intact)
            levels = refinement_levels(rows, cols)
            order = [position for level in levels for position in level]
            engine = engine_for(fast, image, fill, [boxes[position] for position in order], incremental)
            chooser = _tuner_for(replica, fast, engine.kind, image, window_hw, len(boxes), batch_size)
            scores = torch.empty(len(boxes), dtype=probability.dtype, device=probability.device)
            done = 0
            for level_number, level in enumerate(levels):
                level_end = done + len(level)
                while done < level_end:
                    check(checkpoint, done / len(boxes))
                    setting = chooser.next()
                    positions = range(done, min(done + setting.batch_size, level_end))
                    outputs = chooser.timed(setting, len(positions), lambda: engine(positions, setting.memory_format))
                    batch_logits = logits_of(outputs, output)
                    scores[order[positions.start : positions.stop]] = torch.softmax(batch_logits, dim=1)[:, index]
                    done = positions.stop
                if checkpoint is not None and level_number < len(levels) - 1:
                    step = 2 ** (len(levels) - 1 - level_number)
                    coarse = _nearest_computed(scores.reshape(rows, cols), step)
                    checkpoint(done / len(boxes), _result(coarse, probability, boxes, image))
    return _result(scores.reshape(rows, cols), probability, boxes, image)


def _result(scores: Tensor, probability: Tensor, boxes: Sequence[Box], image: Tensor) -> OcclusionResult:
    attribution = spread_over_windows(probability - scores.flatten(), boxes, image.shape[-2:])
    return OcclusionResult(scores.cpu(), attribution.cpu(), float(probability))


def refinement_levels(rows: int, cols: int, coarse_side: int = COARSE_SIDE) -> list[list[int]]:
    """The grid's positions (row-major indices) in levels, coarse to fine: level 0 takes every ``step``-th
    row and column, with ``step`` the smallest power of two that leaves at most ``coarse_side`` of them
    along each side; each next level halves the step and lists only the positions not yet taken."""
    step = 1
    while -(-max(rows, cols) // step) > coarse_side:
        step *= 2
    taken = torch.zeros(rows, cols, dtype=torch.bool)
    levels = []
    while step >= 1:
        lattice = torch.zeros_like(taken)
        lattice[::step, ::step] = True
        new = lattice & ~taken
        levels.append(new.flatten().nonzero().flatten().tolist())
        taken |= new
        step //= 2
    return levels


def _nearest_computed(scores: Tensor, step: int) -> Tensor:
    """Each grid place takes the score of the lattice place (every ``step``-th row and column) at or
    before it: the map as far as the levels computed so far know it."""
    rows = torch.arange(scores.shape[0]) // step * step
    cols = torch.arange(scores.shape[1]) // step * step
    return scores[rows][:, cols]


def _tuner_for(replica: nn.Module, fast: FastCopy, kind: str, image: Tensor, window, positions: int, batch_size: int | None) -> Tuner:
    """The tuner of this work: each memory format the fast copy kept, with ``batch_size`` or each of the
    engine's ``BATCH_SIZES`` that a map of ``positions`` fills, on torch's threads or on one."""
    if batch_size is not None:
        sizes = (batch_size,)
    else:
        sizes = tuple(size for size in BATCH_SIZES[kind] if size <= positions) or (positions,)
    settings = candidates(fast.memory_formats, sizes)
    return tuner(replica, (kind, tuple(image.shape), window, *settings), lambda: settings)


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
