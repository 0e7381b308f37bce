"""The fast copy cut at a layer: for the CAM family, and for the pass over a test set.

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
folded into it, so the layer's own output stays in the graph. The cut is checked on the first image of each
shape against the replica run with a hook (the layer's output and the model's output, within
``fast.TOLERANCE``); a model that cannot be traced, or a cut that strays or raises, gives None and the caller
hooks the replica instead. A cut that raises later (on a batch of another size) answers that call by hooking
the replica itself, and is not used again.

The pass over a test set cuts at the input of the classifier, and runs both parts without autograd: the
fast copy's forward pass, which gives the embeddings on the way.
"""

from __future__ import annotations

import copy
import threading
import weakref
from dataclasses import dataclass, field
from typing import Hashable

import torch
from torch import Tensor, fx, nn

from .fast import MEMORY_FORMATS, candidates, fold_batch_norms, outputs_close, traced, tuner
from .probe import probe
from .replica import weights_state


@dataclass
class Cut:
    """The replica's traced copy cut at one layer's output or input; call :meth:`run` with the replica's lock
    held, on an input of a shape :func:`layer_cut` checked."""

    below: fx.GraphModule
    above: fx.GraphModule
    name: str
    side: str
    memory_formats: dict[tuple[int, ...], tuple[torch.memory_format, ...]] = field(default_factory=dict)
    """The memory formats checked faithful, by the shape of one input ``(C, H, W)``."""
    failed: bool = False
    """Whether a call raised: the cut is not used again."""

    def run(self, replica: nn.Module, image: Tensor, differentiable: bool) -> tuple[Tensor, object]:
        """The value at the cut for ``image`` (a leaf that requires grad when ``differentiable``) and the
        model's output, recorded from that leaf on; from the replica, hooked, if the cut raises."""
        settings = candidates(self.memory_formats[tuple(image.shape[1:])], (len(image),))
        chooser = tuner(replica, ("cut", self.name, self.side, tuple(image.shape), *settings), lambda: settings)
        setting = chooser.next()
        try:
            with torch.no_grad():
                values = chooser.timed(
                    setting, len(image), lambda: self.below(image.contiguous(memory_format=setting.memory_format))
                )
            at_cut = values[0].requires_grad_(differentiable)
            with torch.set_grad_enabled(differentiable):
                return at_cut, self.above(at_cut, *values[1:])
        except Exception:  # noqa: BLE001 - whatever the cut's failure, the hooked replica is the answer
            self.failed = True
        return self._hooked(replica, image, differentiable)

    def _hooked(self, replica: nn.Module, image: Tensor, differentiable: bool) -> tuple[Tensor, object]:
        layer = (self.name, replica.get_submodule(self.name))
        with probe(replica, **{f"{self.side}s": [layer]}, differentiable=differentiable) as capture:
            output = capture.run(image)
        return (capture.outputs if self.side == "output" else capture.inputs)[self.name], output


@dataclass
class _Cuts:
    weights: Hashable
    by_layer: dict[tuple[str, str], Cut | None] = field(default_factory=dict)


_CUTS: "weakref.WeakKeyDictionary[nn.Module, _Cuts]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def layer_cut(replica: nn.Module, name: str, image: Tensor, side: str = "output") -> Cut | None:
    """The replica cut at the ``side`` ("output" or "input") of the layer ``name``, for batches of images
    shaped like ``image``'s; None when there is no faithful cut (then hook the replica). The input side is that of a
    module called as one operation (a ``Linear``, a ``Conv2d``: the embeddings before a classifier)."""
    current = weights_state(replica)
    with _LOCK:
        cuts = _CUTS.get(replica)
        if cuts is None or cuts.weights != current:
            cuts = _CUTS[replica] = _Cuts(current)
    if (name, side) not in cuts.by_layer:
        graph = traced(replica)
        cuts.by_layer[name, side] = None if graph is None else _cut(graph, name, side)
    cut = cuts.by_layer[name, side]
    if cut is None or cut.failed:
        return None
    # Checked on one image: the traced graph is the same for any batch (fx cannot trace a forward that
    # branches on its input), and a batch of 16 would cost the pass over a test set a second before its start.
    shape = tuple(image.shape[1:])
    if shape not in cut.memory_formats:
        cut.memory_formats[shape] = _faithful_formats(cut, replica, name, side, image[:1])
    return cut if cut.memory_formats[shape] else None


def _faithful_formats(cut: Cut, replica: nn.Module, name: str, side: str, image: Tensor) -> tuple[torch.memory_format, ...]:
    module = replica.get_submodule(name)
    with probe(replica, **{f"{side}s": [(name, module)]}) as capture:
        expected_output = capture.run(image)
    expected = (capture.outputs if side == "output" else capture.inputs).get(name)
    if not isinstance(expected, Tensor):
        return ()
    faithful = []
    for memory_format in MEMORY_FORMATS:
        try:
            with torch.no_grad():
                values = cut.below(image.contiguous(memory_format=memory_format))
                output = cut.above(*values)
        except Exception:  # noqa: BLE001 - a cut that raises is one not to use, whatever it raises
            continue
        if outputs_close(values[0], expected) and outputs_close(output, expected_output):
            faithful.append(memory_format)
    return tuple(faithful)


def _cut(traced_graph: fx.GraphModule, name: str, side: str) -> Cut | None:
    gm = fx.GraphModule(traced_graph, copy.deepcopy(traced_graph.graph))
    point = _cut_point(gm, name, side)
    if point is None:
        return None
    fold_batch_norms(gm, keep=point)
    point = _cut_point(gm, name, side)
    if point is None:
        return None
    nodes = list(gm.graph.nodes)
    after = {point}
    for node in nodes:
        if node.op != "output" and any(argument in after for argument in node.all_input_nodes):
            after.add(node)
    # What the part above reads from below: the value at the cut first, then e.g. a skip connection around it.
    crossing = [point] + [
        argument
        for node in nodes
        if node in after and node is not point or node.op == "output"
        for argument in node.all_input_nodes
        if argument not in after and argument.op != "get_attr"
    ]
    crossing = list(dict.fromkeys(crossing))
    below_nodes = [node for node in nodes if (node not in after or node is point) and node.op != "output"]
    below = _subgraph(gm, below_nodes, [], crossing)
    above_nodes = [node for node in nodes if node in after and node is not point or node.op == "output"]
    above_nodes = [node for node in nodes if node.op == "get_attr"] + above_nodes
    above = _subgraph(gm, above_nodes, crossing, None)
    return Cut(below, above, name, side)


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


def _cut_point(gm: fx.GraphModule, name: str, side: str) -> fx.Node | None:
    """The node whose value is the layer's output (the last the module computes, as a hook sees its last
    call), or its input (the argument of a module called as one node)."""
    owned = [node for node in gm.graph.nodes if _computed_by(node, name)]
    if not owned:
        return None
    last = owned[-1]
    if side == "output":
        return last
    argument = last.args[0] if last.args else None
    if isinstance(argument, fx.Node) and not _computed_by(argument, name):
        return argument
    return None


def _computed_by(node: fx.Node, name: str) -> bool:
    """Whether the module ``name`` computes ``node`` (fx's record of the module calls it happened in)."""
    stack = node.meta.get("nn_module_stack") or {}
    return any(path == name for path, _ in stack.values())
