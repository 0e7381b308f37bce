"""Find layers in a model: by module or dotted name, the conv layers, sensible defaults."""

from __future__ import annotations

import difflib

from torch import nn


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


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every ``nn.Conv2d`` of the model with its dotted name, in registration order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def last_conv_layer(model: nn.Module) -> str:
    """Dotted name of the last conv layer: Grad-CAM's usual choice, where maps are still spatial."""
    convs = conv_layers(model)
    if not convs:
        raise ValueError(f"model: {type(model).__name__} has no nn.Conv2d layer; pass layer= explicitly")
    return convs[-1][0]


def last_linear_layer(model: nn.Module) -> str:
    """Dotted name of the last ``nn.Linear``: its input is the model's penultimate feature vector."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"model: {type(model).__name__} has no nn.Linear layer; pass layer= explicitly")
    return linears[-1]
