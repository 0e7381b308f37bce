"""Every way this package explains a class, behind one call: the map of where the evidence lies.

The Compare view puts them side by side on one picture and scores each with deletion and insertion, so the
maps are reduced to one importance per pixel: ``(H, W)``, non-negative, the largest value 1. Gradient maps
``(C, H, W)`` keep the magnitude summed over the channels (a pixel matters whichever way it pushes); the
occlusion map keeps only the drops in probability (hiding a pixel that helps the class). The sanity check
(:mod:`.sanity`) compares these same maps, so its strip shows what the Compare view's cards show.

Some of them take minutes on a large model: :func:`estimated_seconds` says how long before they start.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..checkpoint import Checkpoint, check, scaled
from ..fast import candidates, fast_copy, forwarder
from ..inputs import check_image, check_model, check_positive_int
from ..layers import resolve_layer
from ..outputs import check_output
from ..probe import probe
from ..replica import borrow
from .attention import attention, has_attention
from .feature_maps import layer_output
from .grad_cam import cam
from .faithfulness import DEFAULT_STEPS as FAITHFULNESS_STEPS
from .gradients import INTEGRATED_GRADIENTS_STEPS, SMOOTHGRAD_SAMPLES, gradient_sum, gradients
from .guided_backprop import guided_backprop, guided_grad_cam
from .occlusion import DEFAULT_BATCH_SIZE, occlusion, window_boxes


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

ATTENTION_EXPLANATIONS = (
    Explanation("attention-rollout", "attention rollout", False),
    Explanation("chefer", "Chefer's attention", False),
)
"""The methods that read a vision transformer's attention (:func:`~.attention.attention`): the Compare view
lists them after ``EXPLANATIONS`` for the models whose attention they can read (:func:`explanations_for`)."""
ATTENTION_METHOD_OF = {"attention-rollout": "rollout", "chefer": "chefer"}


def explanations_for(model: nn.Module) -> tuple[Explanation, ...]:
    """The methods the Compare view lists for ``model``: ``EXPLANATIONS``, and ``ATTENTION_EXPLANATIONS`` when
    it has attention they can read."""
    return EXPLANATIONS + ATTENTION_EXPLANATIONS if has_attention(model) else EXPLANATIONS


CAM_METHODS = ("grad-cam", "grad-cam++", "xgrad-cam", "layer-cam", "hires-cam", "eigen-cam", "score-cam")
GRADIENT_METHODS = ("saliency", "smoothgrad", "integrated-gradients")
OCCLUSION_FRACTION = 8
"""Occlusion in the Compare view: a window of 1/8 of the picture's side, moved by half a window."""


def explanation(
    model: nn.Module,
    x: Tensor,
    layer: str | None,
    target: int,
    method: str,
    *,
    output=None,
    checkpoint: Checkpoint | None = None,
    **options,
) -> Tensor:
    """The ``(H, W)`` importance map of ``method`` (one of ``EXPLANATIONS``' or ``ATTENTION_EXPLANATIONS``'
    names) for class ``target``, scaled by :func:`unit_scaled`.

    layer: the CAM methods' layer (and guided Grad-CAM's); the other methods ignore it.
    options: keyword arguments for the method's own function (``cam``, ``gradients``, ``guided_backprop``,
        ``guided_grad_cam``, ``occlusion`` or ``attention``), e.g. ``samples=10`` for SmoothGrad.
    checkpoint: the stop-and-progress protocol (:mod:`cnnviz_widgets.checkpoint`), called between the
        batches of the methods that run many (Score-CAM, SmoothGrad, integrated gradients, occlusion).
    """
    check(checkpoint, 0.0)
    if method in CAM_METHODS:
        return unit_scaled(cam(model, x, layer, target, method=method, output=output, checkpoint=checkpoint, **options))
    if method in GRADIENT_METHODS:
        return magnitude(gradients(model, x, target, method=method, output=output, checkpoint=checkpoint, **options))
    if method == "guided-backprop":
        return magnitude(guided_backprop(model, x, target, output=output, **options))
    if method == "guided-grad-cam":
        return magnitude(guided_grad_cam(model, x, layer, target, output=output, **options))
    if method == "occlusion":
        window, stride = occlusion_window(x.shape[-2:])
        settings = {"window": window, "stride": stride, **options}
        result = occlusion(model, x, target, output=output, checkpoint=checkpoint, **settings)
        return unit_scaled(result.attribution.clamp(min=0))
    if method in ATTENTION_METHOD_OF:
        return unit_scaled(attention(model, x, target, ATTENTION_METHOD_OF[method], output=output, **options))
    raise unknown_method(method)


def unknown_method(method) -> ValueError:
    names = ", ".join(item.name for item in EXPLANATIONS)
    attention_names = ", ".join(item.name for item in ATTENTION_EXPLANATIONS)
    return ValueError(f"method: expected one of {names}; got {method!r} (vision transformers also take {attention_names})")


def occlusion_window(size) -> tuple[int, int]:
    """Occlusion's window and stride in the Compare view, for a picture of ``size`` ``(H, W)``."""
    window = max(2, min(size) // OCCLUSION_FRACTION)
    return window, max(1, window // 2)


def magnitude(attribution: Tensor) -> Tensor:
    """A ``(C, H, W)`` attribution as an ``(H, W)`` importance: absolute values summed over the channels,
    scaled by :func:`unit_scaled`."""
    return unit_scaled(attribution.abs().sum(dim=0))


def unit_scaled(values: Tensor) -> Tensor:
    """A non-negative map divided by its largest value; all zeros when it is zero everywhere.

    The one scaling of the maps the Compare view shows and the sanity check compares. Not min-max: the
    maps are importances, and zero means "does not matter"; min-max would lift the least important pixel
    to zero and stretch the rest, so a map that is nearly uniform (a gradient spread over the whole
    picture) would look as contrasted as one that points at the object. A CAM comes min-max scaled
    already (``cam(raw=False)``, as pytorch-grad-cam and Captum show it), and this leaves it as it is.
    """
    top = values.max()
    return values / top if top > 0 else torch.zeros_like(values)


# -- how long a card takes ---------------------------------------------------------------------------------

_MEASURED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_MEASURED_LOCK = threading.Lock()


def _measured(replica: nn.Module, key: tuple, measure):
    """``measure()``, once per replica and ``key``: a forward pass's duration depends on the network's
    structure and the input's shape, not on the values of its weights, so the user's training keeps it."""
    with _MEASURED_LOCK:
        known = _MEASURED.setdefault(replica, {})
        if key in known:
            return known[key]
    value = measure()
    with _MEASURED_LOCK:
        _MEASURED[replica][key] = value
    return value


def forward_batch_seconds(
    replica: nn.Module, image: Tensor, batch_size: int = DEFAULT_BATCH_SIZE, checkpoint: Checkpoint | None = None
) -> float:
    """Seconds one batch of ``batch_size`` pictures shaped like ``image`` takes through the replica's fast copy,
    as Score-CAM and deletion-insertion run them.

    The batches go through :func:`~cnnviz_widgets.fast.forwarder`, whose tuner tries each memory format on
    each thread count before it keeps the fastest: one batch per setting is run and the fastest is kept
    (they differ by a factor of ten on a busy machine: EfficientNet-Lite0, batches of 4 at 224 px, 0.17 s
    on one thread in channels-last, 2.0 s on two threads in the contiguous format). Those batches are the
    tuner's first trials, so the work that follows does not repeat them. ``checkpoint`` runs between them.
    """

    def measure() -> float:
        with probe(replica), torch.no_grad():
            forward = forwarder(replica, image, "score-cam", batch_size)
            batch = image.expand(batch_size, *image.shape[1:]).contiguous()
            settings = candidates(fast_copy(replica, image).memory_formats, (batch_size,))
            times = []
            for number in range(len(settings)):
                check(checkpoint, number / len(settings))
                start = time.perf_counter()
                forward(batch)
                times.append(time.perf_counter() - start)
        return min(times)

    return _measured(replica, ("forward", tuple(image.shape), batch_size), measure)


def gradient_batch_seconds(
    replica: nn.Module, image: Tensor, batch_size: int = DEFAULT_BATCH_SIZE, output=None, checkpoint: Checkpoint | None = None
) -> float:
    """Seconds one batch of ``batch_size`` pictures shaped like ``image`` takes forward and back through the
    replica, as SmoothGrad and integrated gradients run them (the faster of two: the first pays for memory
    the next ones reuse)."""

    def measure() -> float:
        batch = image.expand(batch_size, *image.shape[1:])
        weights = torch.ones(batch_size, dtype=image.dtype, device=image.device)
        times = []
        for number in range(2):
            check(checkpoint, number / 2)
            start = time.perf_counter()
            gradient_sum(replica, batch, weights, 0, False, batch_size, output)
            times.append(time.perf_counter() - start)
        return min(times)

    return _measured(replica, ("gradient", tuple(image.shape), batch_size), measure)


def _layer_channels(replica: nn.Module, image: Tensor, name: str) -> int:
    module = replica.get_submodule(name)

    def measure() -> int:
        with probe(replica, outputs=[(name, module)], stop_early=True) as capture:
            capture.run(image)
        return layer_output(capture.outputs, name, module).shape[1]

    return _measured(replica, ("channels", name, tuple(image.shape)), measure)


def estimated_seconds(
    model: nn.Module,
    x: Tensor,
    layer: str | None,
    method: str,
    *,
    scored: bool = True,
    output=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    checkpoint: Checkpoint | None = None,
) -> float:
    """How long :func:`explanation` of ``method`` takes on this model and picture size, and with ``scored``
    the deletion and insertion curves of its map too, as the Compare view computes them.

    The model's batched forward time, measured once per replica and input shape
    (:func:`forward_batch_seconds`, :func:`gradient_batch_seconds`: a fraction of a second on
    EfficientNet-Lite0), times the batches the method runs:

    - Score-CAM: one forward pass per channel of ``layer``, ``batch_size`` masked pictures a batch;
    - SmoothGrad, integrated gradients: their 25 samples and 50 steps, forward and back, in batches;
    - occlusion: one forward pass per window position (the incremental engine often does better: an
      upper bound);
    - the one-pass methods (the attention maps among them): one batch forward and back;
    - scored: the curves' ``2 * (FAITHFULNESS_STEPS + 1)`` pictures, forward, in batches.

    checkpoint: runs between the measured batches (the protocol of :mod:`cnnviz_widgets.checkpoint`).
    """
    check_model(model)
    output = check_output(output)
    batch_size = check_positive_int(batch_size, "batch_size")
    if method not in {item.name for item in EXPLANATIONS + ATTENTION_EXPLANATIONS}:
        raise unknown_method(method)
    name = None if layer is None else resolve_layer(model, layer)[0]
    with borrow(model) as replica:
        image = check_image(replica, x)

        def batches(count: int) -> int:
            return math.ceil(count / batch_size)

        forward, gradient = 0, 0
        if method == "score-cam":
            if name is None:
                raise ValueError("layer: Score-CAM weighs a layer's channels; give the layer")
            forward = batches(_layer_channels(replica, image, name))
        elif method == "smoothgrad":
            gradient = batches(SMOOTHGRAD_SAMPLES)
        elif method == "integrated-gradients":
            gradient = batches(INTEGRATED_GRADIENTS_STEPS)
        elif method == "occlusion":
            window, stride = occlusion_window(image.shape[-2:])
            boxes, _, _ = window_boxes(image.shape[-2], image.shape[-1], (window, window), (stride, stride))
            forward = batches(len(boxes))
        else:
            gradient = 1
        if scored:
            forward += batches(2 * (FAITHFULNESS_STEPS + 1))
        seconds = 0.0
        if forward:
            seconds += forward * forward_batch_seconds(replica, image, batch_size, scaled(checkpoint, 0.0, 0.5))
        if gradient:
            seconds += gradient * gradient_batch_seconds(replica, image, batch_size, output, scaled(checkpoint, 0.5, 1.0))
    return seconds
