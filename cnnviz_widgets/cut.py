"""The fast copy cut at a layer, for the CAM family.

A class activation map needs a layer's activations and the gradient of the class score with respect to them:
a forward pass, and a backward pass from the score down to the layer only. Below the layer nothing needs
autograd, so the traced copy of :mod:`cnnviz_widgets.fast` is cut in two there:

- ``below``: the input to the layer's output (and to any other value the rest reads, such as a skip
  connection around the layer). It runs without autograd, BatchNorm folded into the convolutions, in the
  memory format a :class:`~cnnviz_widgets.fast.Tuner` measures fastest for it;
- ``above``: from those values to the model's output, run with autograd from the layer's output, which is
  a leaf: the backward pass reads only what ``above`` records.

The layer's output is the last node of the graph that the layer's module computes (fx records each node's
place in the module hierarchy; the last call, as a hook sees it). A BatchNorm right after the layer is not
folded into it, so the layer's own output stays in the graph. The cut is checked on the first input of each
shape against the replica run with a hook (the layer's output and the model's output, within
``fast.TOLERANCE``); a model that cannot be traced, or a cut that strays, gives None and the caller hooks
the replica instead.
"""

from __future__ import annotations

import copy
import threading
import weakref
from dataclasses import dataclass, field
from typing import Hashable

import torch
from torch import Tensor, fx, nn

from .fast import outputs_close, candidates, fold_batch_norms, traced, tuner
from .replica import weights_state
from .probe import probe


@dataclass
class Cut:
    """The replica's traced copy cut at one layer; call :meth:`run` with the replica's lock held."""

    below: fx.GraphModule
    above: fx.GraphModule
    key: tuple
    memory_formats: tuple[torch.memory_format, ...] = ()

    def run(self, replica: nn.Module, image: Tensor, differentiable: bool) -> tuple[Tensor, object]:
        """The layer's output for ``image`` (a leaf that requires grad when ``differentiable``) and the
        model's output, recorded from that leaf on."""
        settings = candidates(self.memory_formats, (len(image),))
        chooser = tuner(replica, (self.key, tuple(image.shape), *settings), lambda: settings)
        setting = chooser.next()
        with torch.no_grad():
            values = chooser.timed(
                setting, len(image), lambda: self.below(image.contiguous(memory_format=setting.memory_format))
            )
        layer_output = values[0].requires_grad_(differentiable)
        with torch.set_grad_enabled(differentiable):
            return layer_output, self.above(layer_output, *values[1:])


@dataclass
class _Cuts:
    weights: Hashable
    by_layer: dict[str, Cut | None] = field(default_factory=dict)
    checked: dict[tuple[str, tuple[int, ...]], bool] = field(default_factory=dict)


_CUTS: "weakref.WeakKeyDictionary[nn.Module, _Cuts]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def layer_cut(replica: nn.Module, name: str, image: Tensor) -> Cut | None:
    """The replica cut at the layer ``name``, checked on inputs shaped like ``image``; None when there is no
    faithful cut (then hook the replica)."""
    current = weights_state(replica)
    with _LOCK:
        cuts = _CUTS.get(replica)
        if cuts is None or cuts.weights != current:
            cuts = _CUTS[replica] = _Cuts(current)
    if name not in cuts.by_layer:
        graph = traced(replica)
        cuts.by_layer[name] = None if graph is None else _cut(graph, name)
    cut = cuts.by_layer[name]
    if cut is None:
        return None
    shape = (name, tuple(image.shape))
    if shape not in cuts.checked:
        formats = _faithful_formats(cut, replica, name, image)
        cuts.checked[shape] = bool(formats)
        cut.memory_formats = formats
    return cut if cuts.checked[shape] else None


def _faithful_formats(cut: Cut, replica: nn.Module, name: str, image: Tensor) -> tuple[torch.memory_format, ...]:
    module = replica.get_submodule(name)
    with probe(replica, outputs=[(name, module)]) as capture:
        expected_output = capture.run(image)
    expected_layer = capture.outputs.get(name)
    if not isinstance(expected_layer, Tensor):
        return ()
    faithful = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        with torch.no_grad():
            values = cut.below(image.contiguous(memory_format=memory_format))
            output = cut.above(*values)
        if outputs_close(values[0], expected_layer) and outputs_close(output, expected_output):
            faithful.append(memory_format)
    return tuple(faithful)


def _cut(traced_graph: fx.GraphModule, name: str) -> Cut | None:
    gm = fx.GraphModule(traced_graph, copy.deepcopy(traced_graph.graph))
    nodes = list(gm.graph.nodes)
    owned = [node for node in nodes if _computed_by(node, name)]
    if not owned:
        return None
    fold_batch_norms(gm, keep=owned[-1])
    nodes = list(gm.graph.nodes)
    layer = next((node for node in reversed(nodes) if _computed_by(node, name)), None)
    if layer is None:
        return None
    after = {layer}
    for node in nodes:
        if node.op != "output" and any(argument in after for argument in node.all_input_nodes):
            after.add(node)
    # What the part above reads from below: the layer's output first, then e.g. a skip connection around it.
    crossing = [layer] + [
        argument
        for node in nodes
        if node in after and node is not layer or node.op == "output"
        for argument in node.all_input_nodes
        if argument not in after and argument.op != "get_attr"
    ]
    crossing = list(dict.fromkeys(crossing))
    below_nodes = [node for node in nodes if (node not in after or node is layer) and node.op != "output"]
    below = _subgraph(gm, below_nodes, [], crossing)
    above_nodes = [node for node in nodes if node in after and node is not layer or node.op == "output"]
    above_nodes = [node for node in nodes if node.op == "get_attr"] + above_nodes
    above = _subgraph(gm, above_nodes, crossing, None)
    return Cut(below, above, ("cut", name))


def _subgraph(gm: fx.GraphModule, nodes: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node] | None) -> fx.GraphModule:
    """A module of ``gm``'s ``nodes`` (in order), reading ``inputs`` as its arguments; it returns ``outputs``
    as a tuple, or the graph's own output when None."""
    graph = fx.Graph()
    values: dict[fx.Node, fx.Node] = {}
    for node in inputs:
        values[node] = graph.placeholder(node.name)
    for node in nodes:
        values[node] = graph.node_copy(node, lambda argument: values[argument])
    if outputs is not None:
        graph.output(tuple(values[node] for node in outputs))
    module = fx.GraphModule(gm, graph)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


def _computed_by(node: fx.Node, name: str) -> bool:
    """Whether the module ``name`` computes ``node`` (fx's record of the module calls it happened in)."""
    stack = node.meta.get("nn_module_stack") or {}
    return any(path == name for path, _ in stack.values())
