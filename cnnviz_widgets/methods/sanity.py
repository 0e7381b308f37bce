"""Can I trust this map? Cascading randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps").

A map that explains the model must change when the model's learnt weights are destroyed. The cascade
re-initialises the layers one by one, from the logits down, each step on top of the previous ones, and
computes the map again after each step; a map that stays the same (guided backprop, which mostly
redraws the image's edges) does not depend on what the model has learnt.

Each step is one module that owns parameters (a convolution, a linear layer, a batch norm, ...): its own
parameters, not its children's. It is re-initialised by its ``reset_parameters()`` (PyTorch's initial
distribution for the layer; a batch norm's running statistics are reset too); a module without one has
each of its parameters redrawn from a normal distribution of that parameter's own mean and standard
deviation. The cascade runs on a copy of the model's replica: the model and its replica stay as they are.

Attention rollout reads no gradient: its map stays exactly the same while the cascade randomises the
classification head, and the verdict says so; Chefer's attention map is weighted by the class's gradient.

Maps are compared as the Compare view shows them (:func:`~.explanations.explanation`): ``(H, W)`` maps in
[0, 1], a CAM at the input's resolution, a gradient ``(C, H, W)`` by its absolute values summed over the
channels, each divided by its largest value. Two scores per step: the Spearman rank correlation with the
original map, and the structural similarity (SSIM, Wang et al. 2004). :func:`sanity_verdict` reads them.
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import Checkpoint, check, scaled
from ..inputs import check_image, check_int, check_model, check_positive_int
from ..layers import called_layers, heatmap_layer, resolve_layer
from ..outputs import check_output
from ..replica import borrow
from .attention import attention
from .explanations import ATTENTION_METHOD_OF, explanation
from .grad_cam import CAM_METHODS, cam
from .gradients import GRADIENT_METHODS, gradients
from .guided_backprop import guided_backprop

SANITY_METHODS = (*CAM_METHODS, *GRADIENT_METHODS, *ATTENTION_METHOD_OF, "guided-backprop")

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
SSIM_K1, SSIM_K2 = 0.01, 0.03
"""Wang et al.'s SSIM: an 11 x 11 Gaussian window of sigma 1.5, and their stabilising constants."""

TOP_FRACTION = 0.5
"""The verdict reads the first half of the cascade (the classifier and the top layers randomised): with every
layer random the comparison turns noisy (a Grad-CAM came back to a rank correlation of 0.8 there)."""
DEPENDS_BELOW = 0.5
"""A map whose rank correlation with the original falls below this once the top layers are random depends on
the weights. Adebayo et al. 2018 read their figures the same way: Grad-CAM falls to about 0.2-0.3 while guided
backprop stays at 0.99-1.0, so any threshold between the two separates them; 0.5 is halfway. On
EfficientNet-Lite0 and the cat: Grad-CAM -0.54 after its classifier is randomised, guided backprop 0.996."""
SAME_MAP_TOLERANCE = 1e-6
"""Two maps in [0, 1] this close everywhere are the same map, up to float rounding."""


@dataclass(frozen=True)
class SanityResult:
    """layers: the steps of the cascade, in order (dotted names of the layers re-initialised).
    original: the ``(H, W)`` map of the intact model, in [0, 1].
    maps: ``(steps, H, W)``: the map after each step, in [0, 1].
    rank_correlations: ``(steps,)`` Spearman rank correlation of each map with the original (NaN when
        either map is constant).
    ssim: ``(steps,)`` structural similarity of each map with the original.
    """

    layers: list[str]
    original: Tensor
    maps: Tensor
    rank_correlations: Tensor
    ssim: Tensor


def sanity_check(
    model: nn.Module,
    x: Tensor,
    target,
    method: str = "grad-cam",
    *,
    layer=None,
    layers=None,
    max_steps: int | None = None,
    options: Mapping | None = None,
    seed: int = 0,
    output=None,
    checkpoint: Checkpoint | None = None,
) -> SanityResult:
    """Cascading randomisation of ``model`` for the map of ``method`` for class ``target`` on the image ``x``.

    method: a CAM method ("grad-cam", "score-cam", ...: see ``CAM_METHODS``), a gradient method
        ("saliency", "smoothgrad", "integrated-gradients"), "guided-backprop", or an attention map of a vision
        transformer ("attention-rollout", "chefer").
    layer: the CAM's layer; by default the last conv layer the logits depend on (a transformer's last block's first
        norm). Only for CAM methods.
    layers: the steps of the cascade, in the order given (list them from the logits down for the classic
        cascade); each a module or dotted name, whose parameterised modules are all re-initialised in that
        step (so a block counts as one step). By default every module that owns parameters and that the
        forward pass calls, from the last called to the first.
    max_steps: stop the cascade after that many steps.
    options: keyword arguments for the method, e.g. ``{"samples": 10}`` for SmoothGrad.
    seed: the re-initialisations draw from generators seeded from it; torch's global generator is left as it was.
    checkpoint: the stop-and-progress protocol (:mod:`cnnviz_widgets.checkpoint`): called before each step
        and, for the methods that run many passes (Score-CAM, SmoothGrad, integrated gradients), between
        the passes of each map; raise from it to stop. The original map and each step count alike in the
        fraction done.
    """
    check_model(model)
    output = check_output(output)
    if not isinstance(method, str) or method not in SANITY_METHODS:
        raise ValueError(f"method: expected one of {', '.join(SANITY_METHODS)}; got {method!r}")
    options = check_options(options, method)
    layer_name = None
    if layer is not None:
        if method not in CAM_METHODS:
            raise ValueError(f"layer: {method} takes no layer; layer= is for the CAM methods (got {layer!r})")
        layer_name, _ = resolve_layer(model, layer)
    steps = None if layers is None else [resolve_layer(model, item, "layers")[0] for item in check_sequence(layers)]
    if max_steps is not None:
        max_steps = check_positive_int(max_steps, "max_steps")
    seed = check_int(seed, "seed")
    check(checkpoint, 0.0)
    with borrow(model) as replica:
        image = check_image(replica, x)
        calls = called_layers(replica, image, output)
        if method in CAM_METHODS and layer_name is None:
            layer_name = heatmap_layer(calls, replica, image)
        randomised = copy.deepcopy(replica)
    if steps is None:
        steps = [call.name for call in reversed(calls) if owns_parameters(call.module)]
        if not steps:
            raise ValueError(f"model: {type(model).__name__} calls no layer with parameters; there is nothing to randomise")
    cascade = [(name, parameterised_modules(randomised, name)) for name in steps[:max_steps]]
    # The public methods compute on the copy as on any model, so the original map is theirs (a CAM's up to
    # float rounding: taken with a hook rather than through the fast copy, see explainer).
    explain = explainer(method, image, target, layer_name, output, options)
    parts = len(cascade) + 1
    original = explain(randomised, scaled(checkpoint, 0.0, 1 / parts))
    step_seeds = torch.randint(2**62, (len(cascade),), generator=torch.Generator().manual_seed(seed)).tolist()
    maps = []
    for number, ((_, modules), step_seed) in enumerate(zip(cascade, step_seeds), start=1):
        check(checkpoint, number / parts)
        reinitialise(modules, step_seed)
        maps.append(explain(randomised, scaled(checkpoint, number / parts, (number + 1) / parts)))
    maps = torch.stack(maps)
    return SanityResult(
        layers=[name for name, _ in cascade],
        original=original,
        maps=maps,
        rank_correlations=torch.tensor([rank_correlation(original, m) for m in maps], dtype=torch.float64),
        ssim=torch.tensor([ssim(original, m) for m in maps], dtype=torch.float64),
    )


Outcome = Literal["depends", "independent", "undetermined"]


@dataclass(frozen=True)
class SanityVerdict:
    """What a cascade says about a map (see :func:`sanity_verdict`).

    outcome: "depends" (the map changes when the weights are randomised: it depends on what the model
        learned), "independent" (it barely changes: it shows the picture more than the model) or
        "undetermined" (the cascade cannot tell; ``reason`` says why).
    statistic: the lowest rank correlation with the original map over the steps read; NaN when none could be read.
    threshold: the value ``statistic`` is compared with (``DEPENDS_BELOW``).
    steps_read: how many steps of the cascade, from its first, the verdict read.
    reason: one sentence for people: what was read, or why nothing could be.
    same_without_head: the map after the cascade's first step (the layer next to the logits, the
        classification head) is the original map: it does not depend on the head (attention rollout).
    """

    outcome: Outcome
    statistic: float
    threshold: float
    steps_read: int
    reason: str
    same_without_head: bool = False


def sanity_verdict(result: SanityResult, threshold: float = DEPENDS_BELOW) -> SanityVerdict:
    """Whether the map of ``result`` depends on the model's weights.

    The verdict reads the rank correlations of the first ``TOP_FRACTION`` of the steps (at least one): the
    map depends on the weights when the lowest of them is below ``threshold`` (``DEPENDS_BELOW``, 0.5), and
    does not when every one of them is at or above it. It cannot tell:

    - when the cascade has no step;
    - when the original map is constant (zero everywhere, as a CAM whose weighted maps are negative at every
      place): it ranks no pixel above another, so there is no order to keep or lose;
    - when every step read gave a constant map (NaN correlations), or when the steps that could be read
      stay above the threshold while others gave a constant map: a flat map has no order to compare.

    A map that comes out the same once the cascade's first step (the classification head) is randomised
    does not depend on the head, and the reason says so, whatever the rest of the cascade does to it.
    """
    verdict = _read_verdict(result, threshold)
    if len(result.maps) and bool(result.original.max() > result.original.min()):
        if float((result.maps[0] - result.original).abs().max()) <= SAME_MAP_TOLERANCE:
            reason = (
                f"{verdict.reason}; the map is the same once {result.layers[0]}, the layer next to the logits, is "
                "randomised: it does not depend on the classification head"
            )
            return replace(verdict, reason=reason, same_without_head=True)
    return verdict


def _read_verdict(result: SanityResult, threshold: float) -> SanityVerdict:
    if not isinstance(result, SanityResult):
        raise TypeError(f"result: expected the SanityResult of sanity_check, got {type(result).__name__}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not -1 <= threshold <= 1:
        raise ValueError(f"threshold: expected a rank correlation between -1 and 1, got {threshold!r}")
    threshold = float(threshold)
    steps = len(result.rank_correlations)
    read = max(1, int(steps * TOP_FRACTION)) if steps else 0

    def undetermined(reason: str, statistic: float = math.nan) -> SanityVerdict:
        return SanityVerdict("undetermined", statistic, threshold, read, reason)

    if not steps:
        return undetermined("the cascade has no step: nothing was randomised")
    if bool(result.original.max() == result.original.min()):
        return undetermined(
            f"the original map is {float(result.original.max()):g} everywhere: it ranks no place above another, "
            "so there is no order to keep or lose"
        )
    correlations = result.rank_correlations[:read].double()
    finite = correlations[torch.isfinite(correlations)]
    flat = read - len(finite)
    if not len(finite):
        return undetermined(f"each of the {read} map(s) read came out constant after randomising: no order to compare")
    statistic = float(finite.min())
    if statistic < threshold:
        reason = f"lowest rank correlation with the original over the first {read} step(s): {statistic:.2f} < {threshold:g}"
        return SanityVerdict("depends", statistic, threshold, read, reason)
    if flat:
        return undetermined(
            f"{flat} of the {read} map(s) read came out constant after randomising, and the others kept a rank "
            f"correlation of {statistic:.2f} or more with the original",
            statistic,
        )
    reason = f"lowest rank correlation with the original over the first {read} step(s): {statistic:.2f} >= {threshold:g}"
    return SanityVerdict("independent", statistic, threshold, read, reason)


def explainer(
    method: str, image: Tensor, target, layer: str | None, output, options: dict
) -> Callable[[nn.Module, Checkpoint | None], Tensor]:
    """(model, checkpoint) -> the ``(H, W)`` map of ``method`` in [0, 1], as the Compare view shows it.

    The CAMs take their layer's activations with a hook (``cam(cut=False)``): each step has new weights, and
    a cut built for them would serve once, at ten times the cost of the pass."""
    if method in CAM_METHODS:
        options = {"cut": False, **options}
    return lambda model, checkpoint: explanation(
        model, image, layer, target, method, output=output, checkpoint=checkpoint, **options
    )


def check_options(options, method: str) -> dict:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options: expected a dict of keyword arguments for {method}, got {type(options).__name__}")
    if method in CAM_METHODS:
        function = cam
    elif method in GRADIENT_METHODS:
        function = gradients
    elif method in ATTENTION_METHOD_OF:
        function = attention
    else:
        function = guided_backprop
    accepted = [
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("output", "checkpoint")
    ]
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise ValueError(f"options: {method} takes no {unknown[0]!r}; it takes {', '.join(accepted) or 'no options'}")
    return dict(options)


def check_sequence(layers) -> list:
    if isinstance(layers, (str, nn.Module)) or not isinstance(layers, (list, tuple)):
        raise TypeError(f"layers: expected a list of modules or dotted names, got {type(layers).__name__}")
    if not layers:
        raise ValueError("layers: expected at least one layer to randomise, got an empty list")
    return list(layers)


def owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def parameterised_modules(model: nn.Module, name: str) -> list[nn.Module]:
    """The modules of the step ``name``: the module itself and those inside it that own parameters."""
    modules = [module for module in model.get_submodule(name).modules() if owns_parameters(module)]
    if not modules:
        raise ValueError(f"layers: {name!r} has no parameters to randomise")
    return modules


def reinitialise(modules: list[nn.Module], seed: int) -> None:
    """Re-initialise each module's own parameters (see the module's docstring), drawing from ``seed``."""
    cuda = sorted({p.device.index or 0 for m in modules for p in m.parameters(recurse=False) if p.is_cuda})
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.manual_seed(seed)
        for module in modules:
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                continue
            for parameter in module.parameters(recurse=False):
                spread = float(parameter.std()) if parameter.numel() > 1 else 0.0
                parameter.normal_(float(parameter.mean()), spread)


def average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of a flat tensor, ties sharing the mean of their ranks (as scipy's ``rankdata``)."""
    _, group, counts = torch.unique(values, return_inverse=True, return_counts=True)
    last = counts.cumsum(dim=0).double()
    return (last - (counts.double() - 1) / 2)[group]


def pearson(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    scale = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / scale if scale > 0 else math.nan


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two maps' values; NaN when either map is constant."""
    return pearson(average_ranks(a.flatten().double()), average_ranks(b.flatten().double()))


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0) -> float:
    """Mean structural similarity of two ``(H, W)`` maps (Wang et al. 2004): Gaussian window of sigma 1.5 over
    11 x 11 pixels, means taken where the window fits inside the maps. On maps smaller than the window,
    the window shrinks to fit."""
    if isinstance(data_range, bool) or not isinstance(data_range, numbers.Real) or not data_range > 0:
        raise ValueError(f"data_range: expected a positive number, got {data_range!r}")
    radius = min(SSIM_RADIUS, (min(a.shape[-2:]) - 1) // 2)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    window = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    window = window / window.sum()

    def local_mean(values: Tensor) -> Tensor:
        rows = F.conv2d(values[None, None], window.view(1, 1, 1, -1))
        return F.conv2d(rows, window.view(1, 1, -1, 1))[0, 0]

    a, b = a.double(), b.double()
    mean_a, mean_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mean_a**2
    var_b = local_mean(b * b) - mean_b**2
    covariance = local_mean(a * b) - mean_a * mean_b
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    similarity = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / (
        (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(similarity.mean())
