"""Find layers in a model: by module or dotted name, the layers its forward calls, sensible defaults.

A layer shows as maps ``(C, h, w)`` when its output is one of three layouts (:class:`MapLayout`): a conv
layer's ``(N, C, h, w)``; a transformer's tokens ``(N, T, D)``, whose tokens after the prefix (class,
distillation and register tokens) are an ``h x w`` grid of patches, row by row; or the ``(N, H, W, C)`` of
channels-last stages (Swin in timm).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .inputs import check_image, check_model, fixed_input_size, input_channels
from .outputs import OutputToLogits, check_output, logits_of
from .probe import LayerCall, probe, trace_calls
from .replica import borrow

DEFAULT_SIDE = 224

PREFIX_TOKEN_NAMES = ("cls_token", "class_token", "dist_token", "distillation_token", "reg_token", "register_tokens")
"""The parameters timm, torchvision and Hugging Face prepend to the patch tokens, each ``(1, k, D)``: k tokens."""
MAX_GUESSED_PREFIX = 16
"""The most prefix tokens guessed from the input size alone, for a model that names none of its own."""


def resolve_layer(model: nn.Module, layer, argument: str = "layer") -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for ``layer``, a submodule of ``model`` or its dotted name.

    A misspelt name raises a ValueError listing the closest names, so the user can copy the right one.
    """
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer and layer in modules:
            return layer, modules[layer]
        names = [name for name in modules if name]
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
        hint = f"closest names: {', '.join(close)}" if close else f"some names: {', '.join(names[:8])}"
        raise ValueError(
            f"{argument}: no submodule named {layer!r} in {type(model).__name__}; "
            f"give a dotted name from model.named_modules() ({hint})"
        )
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer and name:
                return name, module
        raise ValueError(
            f"{argument}: the module {type(layer).__name__} given is not a submodule of "
            f"{type(model).__name__}; give one of model.named_modules() or its dotted name"
        )
    raise TypeError(
        f"{argument}: expected a submodule of the model or its dotted name (str), got {type(layer).__name__}"
    )


def is_conv(call: LayerCall) -> bool:
    """A convolution whose output is a stack of 2-D maps ``(C, h, w)``: what the layer lists offer."""
    return isinstance(call.module, nn.modules.conv._ConvNd) and call.shape is not None and len(call.shape) == 3


@dataclass(frozen=True)
class MapLayout:
    """How a layer's output ``(N, ...)`` reads as maps ``(N, C, h, w)``.

    order: "channels-first" (a conv layer's maps, as they are), "channels-last" (``(N, h, w, C)``) or "tokens"
        (``(N, T, D)``: ``prefix`` tokens, then the ``grid`` ``(h, w)`` of patches, row by row).
    """

    order: str
    prefix: int = 0
    grid: tuple[int, int] | None = None

    def shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The ``(C, h, w)`` of the maps read from one image's output of shape ``shape``."""
        if self.order == "tokens":
            return (shape[-1], *self.grid)
        if self.order == "channels-last":
            return (shape[2], shape[0], shape[1])
        return tuple(shape)

    def maps(self, output: Tensor) -> Tensor:
        """A captured output ``(N, ...)``, or the gradient with respect to it, as maps ``(N, C, h, w)``.

        Differentiable, but a gradient taken with respect to these maps would be None (the score was
        computed from the captured tensor, not from them): take it with respect to the captured tensor and
        pass it through here too.
        """
        if self.order == "tokens":
            return output[:, self.prefix :].unflatten(1, self.grid).permute(0, 3, 1, 2).contiguous()
        if self.order == "channels-last":
            return output.permute(0, 3, 1, 2).contiguous()
        return output


def fits_grid(size: tuple[int, int], grid: tuple[int, int]) -> bool:
    """Whether a grid ``(h, w)`` tiles an input of ``size`` ``(H, W)`` with one stride both ways.

    With the cell count rounded down or up (padding), a stride s gives ``h`` cells for s in
    ``(H / (h + 1), H / (h - 1))``: the grid fits when the ranges of both sides meet.
    """
    (height, width), (rows, columns) = size, grid
    if not (1 <= rows <= height and 1 <= columns <= width):
        return False
    low = max(height / (rows + 1), width / (columns + 1))
    high = min(math.inf if rows == 1 else height / (rows - 1), math.inf if columns == 1 else width / (columns - 1))
    return low < high


def token_grid(size: tuple[int, int], count: int) -> tuple[int, int] | None:
    """The grid ``(h, w)`` of ``count`` patches over an input of ``size`` ``(H, W)``: the factor pair of
    ``count`` closest to the input's aspect ratio, if it fits the input (:func:`fits_grid`)."""
    if count < 1:
        return None
    pairs = [(rows, count // rows) for rows in range(1, count + 1) if count % rows == 0]
    best = min(pairs, key=lambda pair: abs(math.log(pair[0] * size[1] / (pair[1] * size[0]))))
    return best if fits_grid(size, best) else None


def prefix_tokens(model: nn.Module) -> int | None:
    """How many tokens precede the patches, as the model tells: timm's ``num_prefix_tokens``, else the sum of
    its class, distillation and register tokens (torchvision, Hugging Face); None if it tells nothing."""
    for module in model.modules():
        count = getattr(module, "num_prefix_tokens", None)
        if isinstance(count, int):
            return count
    counts = [
        parameter.shape[1]
        for name, parameter in model.named_parameters()
        if name.rsplit(".", 1)[-1] in PREFIX_TOKEN_NAMES and parameter.dim() == 3
    ]
    return sum(counts) if counts else None


def map_layout(model: nn.Module, size: tuple[int, int], shape: tuple[int, ...], module: nn.Module) -> MapLayout | None:
    """How ``module``'s output for one image, of shape ``shape`` (without the batch), reads as maps over an
    input of spatial ``size`` ``(H, W)``; None when it does not.

    A 3-D output is channels-first, unless only its first two sizes tile the input and ``module`` is not a
    convolution: then channels-last. A 2-D output is tokens when, after the model's prefix tokens (or, for a
    model that names none, the fewest that work), the rest tile the input (:func:`token_grid`).
    """
    is_convolution = isinstance(module, nn.modules.conv._ConvNd)
    if len(shape) == 3:
        if not is_convolution and fits_grid(size, shape[:2]) and not fits_grid(size, shape[1:]):
            return MapLayout("channels-last")
        return MapLayout("channels-first")
    if len(shape) != 2 or is_convolution:
        return None
    told = prefix_tokens(model)
    guesses = range(min(MAX_GUESSED_PREFIX, shape[0] - 1) + 1)
    # A model's own count comes first; a layer before the prefix is added (the patch embedding) has none.
    for prefix in ([told, 0] if told is not None else guesses):
        grid = token_grid(size, shape[0] - prefix)
        if grid is not None:
            return MapLayout("tokens", prefix, grid)
    return None


def output_layout(model: nn.Module, image: Tensor, output: Tensor, module: nn.Module) -> MapLayout | None:
    """:func:`map_layout` of ``output``, captured at ``module`` in a pass of ``image`` ``(N, C, H, W)``; None also
    when its first dimension is not the batch (MobileViT folds pixel positions into it)."""
    if output.dim() < 1 or len(output) != len(image):
        return None
    return map_layout(model, tuple(image.shape[-2:]), tuple(output.shape[1:]), module)


def called_layers(model: nn.Module, x: Tensor, output: OutputToLogits | None = None) -> list[LayerCall]:
    """Every submodule one forward pass of ``x`` calls, in call order (see :func:`~.probe.trace_calls`)."""
    return trace_calls(model, x, lambda value: logits_of(value, output))


def transformer_layers(model: nn.Module, image: Tensor, calls: list[LayerCall]) -> tuple[list[str], list[str]]:
    """The transformer blocks among ``calls`` (of a pass of ``image``) and their first norms, in call order.

    A block is a module with submodules, held by a plain ``nn.Sequential`` or ``nn.ModuleList``, whose output is tokens or channels-last
    (:func:`map_layout`) with one row per image; a block that holds no other (a ViT block, a Swin block rather
    than its stage) gives its first normalisation layer, what its attention reads.
    """
    size = tuple(image.shape[-2:])
    modules = dict(model.named_modules())
    shaped = {
        call.name: call
        for call in calls
        if call.shape is not None
        and (layout := map_layout(model, size, call.shape, call.module)) is not None
        and layout.order != "channels-first"
    }
    if not shaped:
        return [], []
    # Of a plain container only: torchvision's MLP is a Sequential subclass, its linears are no blocks.
    blocks = [
        name
        for name in shaped
        if type(modules[name.rpartition(".")[0]]) in (nn.Sequential, nn.ModuleList) and any(modules[name].children())
    ]
    innermost = [name for name in blocks if not any(other.startswith(f"{name}.") for other in blocks)]
    norms = []
    for block in innermost:
        inside = [name for name in shaped if name.startswith(f"{block}.") and "norm" in type(modules[name]).__name__.lower()]
        norms.extend(inside[:1])
    wanted = [(name, modules[name]) for name in shaped if name in set(blocks) | set(norms)]
    if not wanted:
        return [], []
    with probe(model, outputs=wanted) as capture:
        capture.run(image)
    per_image = {name for name, output in capture.outputs.items() if isinstance(output, Tensor) and len(output) == len(image)}
    return [name for name in blocks if name in per_image], [name for name in norms if name in per_image]


def map_calls(model: nn.Module, image: Tensor, calls: list[LayerCall]) -> list[tuple[str, tuple[int, int, int]]]:
    """The layers among ``calls`` (of a pass of ``image``) shown as maps, each with its ``(C, h, w)``, in call
    order: every conv layer, and the transformer blocks with their first norms (:func:`transformer_layers`)."""
    blocks, norms = transformer_layers(model, image, calls)
    tokens = set(blocks) | set(norms)
    size = tuple(image.shape[-2:])
    return [
        (call.name, call.shape if is_conv(call) else map_layout(model, size, call.shape, call.module).shape(call.shape))
        for call in calls
        if is_conv(call) or call.name in tokens
    ]


def heatmap_layer(calls: list[LayerCall], model: nn.Module, image: Tensor | None = None) -> str:
    """Where Grad-CAM looks by default: the last conv layer called whose maps the logits depend on; for a
    transformer (given the ``image`` of ``calls``) whose blocks come after its convolutions, the first norm
    of its last block.

    Not the last block's output: a head that reads the class token gives the patch tokens there no
    gradient, so every map of the family is null. Modules the forward never calls (GoogLeNet's auxiliary
    heads in eval mode) and maps that lead nowhere are skipped; a model whose logits are cut from the graph
    (a ``.detach()`` inside) gets its last conv.
    """
    convs = [call for call in calls if is_conv(call)]
    feeding = [call for call in convs if call.feeds_logits]
    conv = (feeding or convs)[-1].name if convs else None
    norms = transformer_layers(model, image, calls)[1] if image is not None else []
    order = [call.name for call in calls]
    if norms and (conv is None or order.index(norms[-1]) > order.index(conv)):
        return norms[-1]
    if conv is None:
        raise ValueError(f"model: {type(model).__name__} calls no convolution with spatial maps; pass layer= explicitly")
    return conv


def embedding_layer(calls: list[LayerCall], model: nn.Module) -> tuple[str, str]:
    """Where embeddings come from by default: ``("input", name)`` of the last ``nn.Linear`` called (the
    features the classifier separates), or, for a model without one (SqueezeNet, a fully convolutional
    net), ``("output", name)`` of its Grad-CAM layer, to be averaged over space."""
    # A dynamically quantized copy (``quantize_dynamic``) keeps float inputs to its linears: the same embedding.
    linears = [call for call in calls if isinstance(call.module, (nn.Linear, torch.ao.nn.quantized.dynamic.Linear))]
    if linears:
        return "input", linears[-1].name
    return "output", heatmap_layer(calls, model)


def conv_layers(model: nn.Module, x: Tensor | None = None, *, output=None) -> list[tuple[str, tuple[int, ...]]]:
    """The conv layers ``model``'s forward calls for ``x``, in call order, each with its output shape ``(C, h, w)``.

    x: one preprocessed image, ``(C, H, W)`` or ``(1, C, H, W)``; by default a black image with as many
    channels as the model's first convolution reads, of the one size the model accepts (a ViT with fixed
    position embeddings), else 224 x 224. The model itself is not touched (a private
    replica runs the pass).
    """
    return _listed(model, x, output, lambda replica, image, calls: [(call.name, call.shape) for call in calls if is_conv(call)])


def map_layers(model: nn.Module, x: Tensor | None = None, *, output=None) -> list[tuple[str, tuple[int, ...]]]:
    """The layers ``model``'s forward calls for ``x`` whose output shows as maps, in call order, each with the
    ``(C, h, w)`` of those maps: the conv layers, and a transformer's blocks with each block's first norm,
    their tokens read as an ``h x w`` grid (``(D, h, w)``) or their channels-last ``(H, W, C)`` as ``(C, H, W)``.

    x and output: as for :func:`conv_layers`. The grid is found after the class, distillation and register
    tokens the model names (timm, torchvision, Hugging Face), with the input's aspect ratio, square or not.
    """
    return _listed(model, x, output, map_calls)


def _listed(model, x, output, choose):
    check_model(model)
    check_output(output)
    with borrow(model) as replica:
        if x is None:
            x = torch.zeros(1, input_channels(replica) or 3, *(fixed_input_size(replica) or (DEFAULT_SIDE, DEFAULT_SIDE)))
        image = check_image(replica, x)
        return choose(replica, image, called_layers(replica, image, output))
