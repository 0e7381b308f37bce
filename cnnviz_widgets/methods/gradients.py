"""Input gradients: how much each input pixel moves the class score.

Three methods, one engine (:func:`gradient_sum`): the weighted sum of the score's gradient over a set of
inputs derived from the image, run through the model in batches.

- saliency (Simonyan et al. 2014): the gradient at the image itself.
- SmoothGrad (Smilkov et al. 2017): the mean of the gradients at ``samples`` noisy copies of the image.
- integrated gradients (Sundararajan et al. 2017): ``(x - baseline)`` times the gradient averaged along the
  straight path from the baseline to the image, the average taken by Gauss-Legendre quadrature (Captum's
  default): ``n`` points integrate polynomials up to degree ``2n - 1`` exactly, so the attributions add up
  to the score's change with fewer points than an evenly spaced rule needs.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import Checkpoint, check
from ..inputs import check_baseline, check_image, check_model, check_positive_int, check_target
from ..outputs import check_output, logits_of
from ..probe import probe
from ..replica import borrow
from .occlusion import DEFAULT_BATCH_SIZE

GRADIENT_METHODS = ("saliency", "smoothgrad", "integrated-gradients")
ABSOLUTE_BY_DEFAULT = ("saliency", "smoothgrad")
"""Saliency and SmoothGrad show the gradient's magnitude by default, as their papers (and Captum) do;
integrated gradients keep their sign, since they add up to the score's change from the baseline."""
SMOOTHGRAD_SAMPLES = 25
INTEGRATED_GRADIENTS_STEPS = 50


def gradients(
    model: nn.Module,
    x: Tensor,
    target,
    method: str = "saliency",
    *,
    noise: float = 0.15,
    samples: int = SMOOTHGRAD_SAMPLES,
    seed: int = 0,
    baseline=0.0,
    steps: int = INTEGRATED_GRADIENTS_STEPS,
    absolute: bool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    output=None,
    checkpoint: Checkpoint | None = None,
) -> Tensor:
    """The attribution of class ``target``'s logit to each input value of ``x``: ``(C, H, W)`` on the CPU.

    method: "saliency", "smoothgrad" or "integrated-gradients" (see the module's docstring).
    noise, samples, seed: SmoothGrad's Gaussian noise, its standard deviation a fraction of the image's
        range (``noise * (x.max() - x.min())``; the paper's 10 to 20 % work best), drawn from a generator
        seeded with ``seed`` (the same ``(samples, C, H, W)`` draw as ``torch.randn`` after
        ``torch.manual_seed(seed)``).
    baseline, steps: integrated gradients' starting point (a number or a tensor broadcastable to ``x``)
        and number of points on the path (Gauss-Legendre nodes).
    absolute: the magnitude of the attribution rather than its signed value; by default True for
        saliency and SmoothGrad (each sample's gradient is made absolute before the mean), False for
        integrated gradients.
    batch_size: inputs per forward/backward pass. Small batches win on the CPU, as for occlusion (SmoothGrad
        of 16 samples on EfficientNet-Lite0 at 224 px, one thread: 2.6 s in batches of 4, 5.0 s in batches of 16).
    checkpoint: called as ``checkpoint(fraction_done)`` between two passes; raise from it to stop.
    """
    check_model(model)
    output = check_output(output)
    if not isinstance(method, str) or method not in GRADIENT_METHODS:
        raise ValueError(f"method: expected one of {', '.join(GRADIENT_METHODS)}; got {method!r}")
    if absolute is None:
        absolute = method in ABSOLUTE_BY_DEFAULT
    elif not isinstance(absolute, bool):
        raise TypeError(f"absolute: expected True, False or None (the method's default), got {absolute!r}")
    batch_size = check_positive_int(batch_size, "batch_size")
    with borrow(model) as replica:
        image = check_image(replica, x)
        if method == "saliency":
            weights = torch.ones(1, dtype=image.dtype, device=image.device)
            return gradient_sum(replica, image, weights, target, absolute, batch_size, output, checkpoint)[0].cpu()
        if method == "smoothgrad":
            noisy = image + noise_of(image, noise, check_positive_int(samples, "samples"), seed)
            weights = torch.full((len(noisy),), 1 / len(noisy), dtype=image.dtype, device=image.device)
            return gradient_sum(replica, noisy, weights, target, absolute, batch_size, output, checkpoint)[0].cpu()
        fill = check_baseline(baseline, image)
        alphas, weights = gauss_legendre(check_positive_int(steps, "steps"))
        alphas, weights = alphas.to(image), weights.to(image)
        path = fill + alphas[:, None, None, None] * (image - fill)
        average = gradient_sum(replica, path, weights, target, False, batch_size, output, checkpoint)
        attribution = ((image - fill) * average)[0]
        return (attribution.abs() if absolute else attribution).cpu()


def gradient_sum(
    model: nn.Module,
    inputs: Tensor,
    weights: Tensor,
    target,
    absolute: bool,
    batch_size: int,
    output=None,
    checkpoint: Checkpoint | None = None,
) -> Tensor:
    """``sum_i weights_i * g_i`` over ``inputs`` ``(N, C, H, W)``, where ``g_i`` is the gradient of the target's
    logit at input ``i`` (``|g_i|`` if ``absolute``): a ``(1, C, H, W)`` tensor."""
    total = torch.zeros_like(inputs[:1])
    with probe(model, differentiable=True):
        for start in range(0, len(inputs), batch_size):
            check(checkpoint, start / len(inputs))
            batch = inputs[start : start + batch_size].detach().requires_grad_(True)
            logits = logits_of(model(batch), output)
            index = check_target(target, logits.shape[1])
            # The samples are independent in eval mode: the gradient of their summed scores is each one's own.
            (gradient,) = torch.autograd.grad(logits[:, index].sum(), batch)
            if absolute:
                gradient = gradient.abs()
            total += (weights[start : start + batch_size, None, None, None] * gradient).sum(dim=0, keepdim=True)
    return total


def noise_of(image: Tensor, noise, samples: int, seed) -> Tensor:
    """SmoothGrad's ``(samples, C, H, W)`` Gaussian noise, its standard deviation ``noise`` times the image's range.

    Drawn in one call: torch fills normal samples in blocks, so drawing per batch would give other numbers.
    """
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise: expected a non-negative number (a fraction of the image's range), got {noise!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__} {seed!r}")
    std = float(noise) * float(image.max() - image.min())
    generator = torch.Generator().manual_seed(int(seed))
    draw = torch.randn((samples, *image.shape[1:]), generator=generator, dtype=image.dtype)
    return (draw * std).to(image.device)


def gauss_legendre(steps: int) -> tuple[Tensor, Tensor]:
    """Nodes in [0, 1] and weights of the ``steps``-point Gauss-Legendre rule: ``sum w_i f(a_i) ~ integral_0^1 f``."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)
