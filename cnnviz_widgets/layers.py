"""Find layers in a model: by module or dotted name, the layers its forward calls, sensible defaults."""

from __future__ import annotations

import difflib

import torch
from torch import Tensor, nn

from .inputs import check_image, check_model, input_channels
from .outputs import OutputToLogits, check_output, logits_of
from .probe import LayerCall, trace_calls
from .replica import borrow

DEFAULT_SIDE = 224


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


def called_layers(model: nn.Module, x: Tensor, output: OutputToLogits | None = None) -> list[LayerCall]:
    """Every submodule one forward pass of ``x`` calls, in call order (see :func:`~.probe.trace_calls`)."""
    return trace_calls(model, x, lambda value: logits_of(value, output))


def heatmap_layer(calls: list[LayerCall], model: nn.Module) -> str:
    """Where Grad-CAM looks by default: the last conv layer called whose maps the logits depend on.

    Modules the forward never calls (GoogLeNet's auxiliary heads in eval mode) and maps that lead nowhere
    are skipped; a model whose logits are cut from the graph (a ``.detach()`` inside) gets its last conv.
    """
    convs = [call for call in calls if is_conv(call)]
    if not convs:
        raise ValueError(f"model: {type(model).__name__} calls no convolution with spatial maps; pass layer= explicitly")
    feeding = [call for call in convs if call.feeds_logits]
    return (feeding or convs)[-1].name


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

    x: one preprocessed image, ``(C, H, W)`` or ``(1, C, H, W)``; by default a black 224 x 224 image with as
    many channels as the model's first convolution reads. The model itself is not touched (a private
    replica runs the pass).
    """
    check_model(model)
    check_output(output)
    with borrow(model) as replica:
        if x is None:
            x = torch.zeros(1, input_channels(replica) or 3, DEFAULT_SIDE, DEFAULT_SIDE)
        image = check_image(replica, x)
        return [(call.name, call.shape) for call in called_layers(replica, image, output) if is_conv(call)]
