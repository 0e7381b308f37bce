"""The activations of one layer for one image: what the network has made of the picture at that depth."""

from __future__ import annotations

from torch import Tensor, nn

from ..inputs import check_image, check_model
from ..layers import output_layout, resolve_layer
from ..outputs import check_output
from ..probe import probe
from ..replica import borrow


def feature_maps(model: nn.Module, x: Tensor, layer, *, output=None) -> Tensor:
    """The output of ``layer`` for the image ``x``, detached on the CPU: ``(C_l, h, w)`` for a layer shown as maps
    (a conv layer; a transformer layer's ``(T, D)`` tokens read as ``(D, h, w)``, a channels-last
    ``(H, W, C)`` as ``(C, H, W)``: see :func:`~cnnviz_widgets.layers.map_layers`), as it is otherwise.

    For a module the forward pass calls more than once (a ReLU reused within a block), this is its
    output at the last call, the same activation Grad-CAM explains. ``output`` is accepted for a uniform
    call shape; the logits are not needed here.
    """
    check_model(model)
    check_output(output)
    name, _ = resolve_layer(model, layer)
    with borrow(model) as replica:
        module = replica.get_submodule(name)
        image = check_image(replica, x)
        with probe(replica, outputs=[(name, module)]) as capture:
            capture.run(image)
        return layer_maps(replica, image, capture.outputs, name, module)[0].cpu()


def layer_maps(model: nn.Module, image: Tensor, outputs: dict, name: str, module: nn.Module) -> Tensor:
    """:func:`layer_output` of a pass of ``image`` as maps ``(N, C, h, w)`` when it reads as maps (see
    :class:`~cnnviz_widgets.layers.MapLayout`), as it is otherwise; differentiable."""
    output = layer_output(outputs, name, module)
    layout = output_layout(model, image, output, module)
    return output if layout is None else layout.maps(output)


def layer_output(outputs: dict, name: str, module: nn.Module) -> Tensor:
    """The captured output of ``name``, or a ValueError when the forward pass never reached a tensor there."""
    output = outputs.get(name)
    if output is None:
        raise ValueError(f"layer: {name!r} ({type(module).__name__}) is not called by the model's forward pass")
    if not isinstance(output, Tensor):
        raise ValueError(f"layer: {name!r} returns a {type(output).__name__}, not a tensor; pick a layer inside it")
    return output
