"""The fast form of a replica, for work that runs one network hundreds of times (occlusion).

Three things make the same network cheaper to run on the CPU, and none changes what it computes beyond
rounding:

- a traced copy (``torch.fx``): the graph the incremental engine of ``methods/incremental.py`` follows, in
  which each ``nn.Conv2d`` is a plain ``conv2d`` call on its weights and in-place ops are made out-of-place
  (the engine keeps the intact image's value of every node; an in-place op would overwrite one). Only the
  in-place ops listed below are rewritten, and only where no other value shares the memory written to; a
  graph with any other in-place op is not used (fx itself refuses item assignment, ``x[:, 0] = 0``);
- each eval-mode BatchNorm folded into the convolution before it (an affine map per channel, so one pass
  over the activations less);
- the memory format (contiguous or channels_last), the batch size and the number of threads, measured on
  the work itself (:class:`Tuner`), once per replica. Threads count because an op of two threads waits for
  both: on a machine busy with other work, many short ops (the incremental engine's) lose more to that wait
  than they gain, and one thread can be twice as fast as two (on two cores busy with other work, a pass
  over 256 pictures through EfficientNet-Lite0 took 13.6 s on one thread and 22.2 s on two; a window 32,
  stride 8 occlusion map 9.4 s and 10.1 s).

The replica is never modified: the traced copy refers to the replica's layers, and what it changes
(folded weights, out-of-place activations) are new objects it owns. It is cached per replica (weakly keyed)
and made again when :func:`cnnviz_widgets.replica.weights_state` of the replica changes, i.e. when its
weights do. Each form is checked against the replica on the first input of each shape: a form whose
outputs differ by more than ``TOLERANCE`` of their largest magnitude, or that raises, is not used; one that
raises later, on a batch of another size, gives way to the replica for good (:meth:`FastCopy.__call__`).

Threads: ``torch.set_num_threads`` also sets the count of every thread started afterwards (ATen keeps it
process-wide), so it is never toggled around a batch: a panel's worker started meanwhile would keep one
thread for life. The count is read once, at import (``DEFAULT_THREADS``), and work measured faster on one
thread runs on a worker thread that set its own count to one once, when it started (:func:`on_threads`).
"""

from __future__ import annotations

import copy
import inspect
import operator
import os
import queue
import threading
import time
import weakref
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Callable, Hashable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.utils._pytree import tree_flatten

from .replica import weights_state

TOLERANCE = 1e-4
"""Largest difference allowed between a fast form's outputs and the replica's, relative to the largest
output magnitude. Folding BatchNorm moves the logits by 2e-7 of that on ResNet18 and 9e-7 on
EfficientNet-Lite0; channels_last by 3e-7 on ResNet18."""

MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last)

TRIALS = 2
"""Timed batches per candidate setting before the tuner settles: the fastest of two already rules out most
of the noise of a machine shared with other work."""

T = TypeVar("T")

DEFAULT_THREADS = torch.get_num_threads()
"""torch's intra-op thread count, read once, at import: the count of every batch not run on one thread."""

_OUT_OF_PLACE_FUNCTIONS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.imod: operator.mod,
    operator.ipow: operator.pow,
    torch.relu_: torch.relu,
    torch.sigmoid_: torch.sigmoid,
    torch.tanh_: torch.tanh,
    torch.clamp_: torch.clamp,
    torch.clip_: torch.clip,
    torch.exp_: torch.exp,
    torch.neg_: torch.neg,
    torch.selu_: torch.selu,
    torch.celu_: torch.celu,
    torch.threshold_: torch.threshold,
    F.hardtanh_: F.hardtanh,
    F.elu_: F.elu,
    F.leaky_relu_: F.leaky_relu,
}
"""In-place functions (``torch.relu_`` is also ``F.relu_``) and their out-of-place forms, same arguments."""

_OUT_OF_PLACE_METHODS = {
    name + "_": name
    for name in (
        "relu", "sigmoid", "tanh", "clamp", "clamp_min", "clamp_max", "clip", "exp", "neg", "abs", "sqrt", "pow",
        "add", "sub", "mul", "div", "masked_fill",
    )
}

_INPLACE_FLAG_POSITIONS = {
    function: list(inspect.signature(function).parameters).index("inplace")
    for function in (
        F.relu, F.relu6, F.hardtanh, F.elu, F.selu, F.celu, F.leaky_relu, F.rrelu, F.threshold, F.silu, F.mish,
        F.hardswish, F.hardsigmoid, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
        F.feature_alpha_dropout,
    )
}
"""Functions taking an ``inplace`` flag, and its position: ``F.hardtanh(x, 0, 6, True)`` writes into ``x``."""

_WRITING_OPERATORS = {
    operator.setitem, operator.delitem, operator.imatmul, operator.iand, operator.ior, operator.ixor,
    operator.ilshift, operator.irshift, operator.iconcat,
}
"""Operators that write into their first argument and are not rewritten: the graph is not used."""

_NEW_VALUE_FUNCTIONS = {
    *_OUT_OF_PLACE_FUNCTIONS.values(),
    F.conv2d, torch.conv2d, F.linear, F.relu, F.relu6, F.hardtanh, F.elu, F.selu, F.celu, F.leaky_relu, F.gelu,
    F.silu, F.mish, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.softmax, F.log_softmax, F.interpolate,
    F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.batch_norm, F.layer_norm,
    F.group_norm, F.normalize, operator.neg, operator.matmul, torch.add, torch.sub, torch.mul, torch.div,
    torch.matmul, torch.cat, torch.concat, torch.stack, torch.maximum, torch.minimum, torch.where, torch.mean,
    torch.sum, torch.clone,
}
"""Functions whose result never shares memory with their arguments (with ``inplace`` off)."""

_NEW_VALUE_METHODS = {*_OUT_OF_PLACE_METHODS.values(), "mean", "sum", "amax", "softmax", "log_softmax", "clone", "matmul"}

_VIEW_MODULES = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
"""Modules that may give back their input itself, or a view of it (dropout in eval mode returns its input)."""


@dataclass
class FastCopy:
    """What to run a replica's many forward passes on: call it with a batch.

    module: the network to call for whole batches (the folded traced copy, or the replica itself).
    graph: the traced copy the incremental engine follows; None when the replica cannot be traced.
    memory_formats: the memory formats whose outputs stay within ``TOLERANCE`` of the replica's.
    replica: the replica, weakly (this is cached with the replica as its key).
    """

    module: nn.Module
    graph: fx.GraphModule | None
    memory_formats: tuple[torch.memory_format, ...]
    replica: "weakref.ref[nn.Module]" = field(repr=False)

    def __call__(self, batch: Tensor):
        """``module(batch)``; a traced copy that raises (it was checked on one shape, and a graph can fail on
        another batch size) gives way to the replica, for this call and every later one."""
        replica = self.replica()
        if self.module is not replica:
            try:
                return self.module(batch)
            except Exception:  # noqa: BLE001 - whatever the graph's failure, the replica is the answer
                self.module, self.graph = replica, None
        return replica(batch)


@dataclass
class _Entry:
    weights: Hashable
    candidates: list[fx.GraphModule]
    forms: dict[tuple[int, ...], FastCopy] = field(default_factory=dict)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, _Entry]" = weakref.WeakKeyDictionary()
_TUNERS: "weakref.WeakKeyDictionary[nn.Module, dict[Hashable, Tuner]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_TRACE_LOCK = threading.Lock()
"""One trace at a time: two would each save and restore the other's patch of ``nn.Module.__call__``,
leaving one in place for good."""


class _OwnThreadTracer(fx.Tracer):
    """fx's tracer, for the tracing thread only. While it traces, fx patches ``nn.Module.__call__`` and
    ``__getattr__`` for the whole process: without this, a panel or the user computing in another thread
    meanwhile would see its modules traced into this graph (and fail with "module is not installed as a
    submodule"). No function is auto-wrapped (fx wraps ``math`` by default): other threads' module calls
    would patch module globals under the tracing thread's patcher, which may already be undoing its patches."""

    def __init__(self):
        super().__init__(autowrap_modules=(), autowrap_functions=())
        self._thread = threading.get_ident()

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _trace(replica: nn.Module) -> fx.GraphModule:
    with _TRACE_LOCK:
        tracer = _OwnThreadTracer()
        graph = tracer.trace(replica)
    return fx.GraphModule(tracer.root, graph, type(replica).__name__)


def fast_copy(replica: nn.Module, example: Tensor, reference=None) -> FastCopy:
    """The fast form of ``replica`` for inputs shaped like ``example``; call it with gradients off.

    reference: ``replica(example)``, if already computed (it is what the forms are checked against).
    """
    entry = _entry(replica)
    shape = tuple(example.shape)
    form = entry.forms.get(shape)
    if form is None:
        if reference is None:
            reference = replica(example)
        form = entry.forms[shape] = _checked_form(replica, entry.candidates, example, reference)
    return form


def traced(replica: nn.Module) -> fx.GraphModule | None:
    """The replica's traced copy, out-of-place and unfolded (None when it cannot be traced): the graph that
    :mod:`cnnviz_widgets.cut` cuts at a layer. Cached with the fast copy."""
    candidates = _entry(replica).candidates
    return candidates[-1] if candidates else None


def _entry(replica: nn.Module) -> _Entry:
    current = weights_state(replica)
    with _LOCK:
        entry = _CACHE.get(replica)
    if entry is None or entry.weights != current:
        entry = _Entry(current, _traced_forms(replica))
        with _LOCK:
            _CACHE[replica] = entry
    return entry


def _checked_form(replica: nn.Module, candidates: list[fx.GraphModule], example: Tensor, reference) -> FastCopy:
    for graph in candidates:
        formats = _faithful_formats(graph, example, reference)
        if formats:
            return FastCopy(graph, graph, formats, weakref.ref(replica))
    formats = _faithful_formats(replica, example, reference) or (torch.contiguous_format,)
    return FastCopy(replica, None, formats, weakref.ref(replica))


def _faithful_formats(module: nn.Module, example: Tensor, reference) -> tuple[torch.memory_format, ...]:
    """The memory formats in which ``module`` runs ``example`` without raising and within ``TOLERANCE`` of
    ``reference``."""
    faithful = []
    for memory_format in MEMORY_FORMATS:
        try:
            output = module(example.contiguous(memory_format=memory_format))
        except Exception:  # noqa: BLE001 - a form that raises is one not to use, whatever it raises
            continue
        if outputs_close(output, reference):
            faithful.append(memory_format)
    return tuple(faithful)


def outputs_close(output, reference) -> bool:
    """Whether ``output`` has ``reference``'s structure, shapes and dtypes, each floating-point tensor within
    ``TOLERANCE`` of the reference's largest magnitude and every other tensor equal."""
    ours, ours_spec = tree_flatten(output)
    theirs, theirs_spec = tree_flatten(reference)
    if ours_spec != theirs_spec:
        return False
    for mine, expected in zip(ours, theirs):
        if isinstance(expected, Tensor):
            if not isinstance(mine, Tensor) or mine.shape != expected.shape or mine.dtype != expected.dtype or mine.device != expected.device:
                return False
            if expected.is_floating_point():
                scale = float(expected.abs().max()) if expected.numel() else 0.0
                if not bool(((mine - expected).abs() <= TOLERANCE * scale).all()):
                    return False
            elif not torch.equal(mine, expected):
                return False
    return True


def _traced_forms(replica: nn.Module) -> list[fx.GraphModule]:
    """The folded traced copy and the traced copy without folding (the fallback if folding strays), or
    nothing when the replica's forward cannot be traced."""
    try:
        traced = _trace(replica)
    except Exception:  # noqa: BLE001 - fx fails in many ways (TraceError, TypeError, ...), all meaning "not traceable"
        return []
    if not _functional(traced, {id(module) for module in replica.modules()}):
        return []
    folded = fx.GraphModule(traced, copy.deepcopy(traced.graph))
    fold_batch_norms(folded)
    return [folded, traced]


def _functional(gm: fx.GraphModule, replica_modules: set[int]) -> bool:
    """Rewrite ``gm`` in place so that no node writes into another node's value, each zero-padded
    ``nn.Conv2d`` is a ``conv2d`` call on the module's weights and each ``nn.MaxPool2d`` runs in channels_last
    (:class:`ChannelsLastMaxPool2d`). False if an in-place op cannot be undone faithfully
    (:func:`_undo_in_place`), or if a module that would need replacing is shared with the replica (never the
    case for a freshly traced module's parents)."""
    graph = gm.graph
    for node in list(graph.nodes):
        if not _undo_in_place(gm, node, replica_modules):
            return False
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if type(module) is nn.MaxPool2d and not module.return_indices:
            replacement = ChannelsLastMaxPool2d(
                module.kernel_size, module.stride, module.padding, module.dilation, ceil_mode=module.ceil_mode
            )
            if not _replace_module(gm, node.target, replacement, replica_modules):
                return False
        elif type(module) is nn.Conv2d and module.padding_mode == "zeros":
            with graph.inserting_before(node):
                weight = graph.get_attr(f"{node.target}.weight")
                bias = graph.get_attr(f"{node.target}.bias") if module.bias is not None else None
                conv = graph.call_function(
                    F.conv2d,
                    (node.args[0], weight, bias, module.stride, module.padding, module.dilation, module.groups),
                )
            # The conv keeps the module's place in the hierarchy: cut.py finds a layer's output by it.
            conv.meta = dict(node.meta)
            node.replace_all_uses_with(conv)
            graph.erase_node(node)
    _merge_zero_padding(gm)
    graph.lint()
    gm.recompile()
    return True


def _replace_module(gm: fx.GraphModule, target: str, replacement: nn.Module, replica_modules: set[int]) -> bool:
    parent, _, name = target.rpartition(".")
    owner = gm.get_submodule(parent)
    if id(owner) in replica_modules:
        return False
    setattr(owner, name, replacement)
    return True


def _undo_in_place(gm: fx.GraphModule, node: fx.Node, replica_modules: set[int]) -> bool:
    """If ``node`` writes into its first argument, make it compute a new value, which the nodes after it read
    in place of the argument. False where that is not done: an op that writes but is not in the lists above
    (:func:`_writes_in_place`), and a rewrite that would not be faithful (:func:`_written_alone`)."""
    writes = _writes_in_place(gm, node)
    if writes is None:
        return True
    written = node.args[0] if node.args else None
    if not writes or not isinstance(written, fx.Node) or not _written_alone(gm, node, written):
        return False
    if node.op == "call_module":
        replacement = copy.deepcopy(gm.get_submodule(node.target))
        replacement.inplace = False
        if not _replace_module(gm, node.target, replacement, replica_modules):
            return False
    elif node.op == "call_method":
        node.target = _OUT_OF_PLACE_METHODS[node.target]
    elif node.target in _OUT_OF_PLACE_FUNCTIONS:
        node.target = _OUT_OF_PLACE_FUNCTIONS[node.target]
    else:
        _clear_inplace_flag(node)
    order = {other: index for index, other in enumerate(gm.graph.nodes)}
    written.replace_all_uses_with(node, delete_user_cb=lambda user: order[user] > order[node])
    return True


def _writes_in_place(gm: fx.GraphModule, node: fx.Node) -> bool | None:
    """None if ``node`` writes into nothing; True if it writes into its first argument in a way
    :func:`_undo_in_place` rewrites: an in-place function or method of the lists above (``torch.relu_``,
    ``x.add_``), a function's ``inplace`` flag given by name or by position (``F.hardtanh(x, 0, 6, True)``), a
    module's ``inplace`` attribute; False if it writes (or may write) any other way: item assignment, a flag
    computed by the forward, a method or function not listed whose name ends in ``_``."""
    if node.op == "call_function":
        if node.target in _OUT_OF_PLACE_FUNCTIONS:
            return True
        if node.target in _INPLACE_FLAG_POSITIONS:
            flag = _inplace_flag(node)
            return False if isinstance(flag, fx.Node) else (True if flag else None)
        writes = node.target in _WRITING_OPERATORS or _in_place_name(getattr(node.target, "__name__", ""))
        return False if writes else None
    if node.op == "call_method":
        if node.target in _OUT_OF_PLACE_METHODS:
            return True
        return False if _in_place_name(node.target) else None
    if node.op == "call_module" and getattr(gm.get_submodule(node.target), "inplace", False):
        return True
    return None


def _in_place_name(name: str) -> bool:
    """torch's naming of in-place ops (``relu_``), not a dunder."""
    return name.endswith("_") and not name.endswith("__")


def _inplace_flag(node: fx.Node):
    position = _INPLACE_FLAG_POSITIONS[node.target]
    if "inplace" in node.kwargs:
        return node.kwargs["inplace"]
    return node.args[position] if len(node.args) > position else False


def _clear_inplace_flag(node: fx.Node) -> None:
    position = _INPLACE_FLAG_POSITIONS[node.target]
    if "inplace" in node.kwargs:
        node.kwargs = {**node.kwargs, "inplace": False}
    else:
        node.args = (*node.args[:position], False, *node.args[position + 1 :])


def _written_alone(gm: fx.GraphModule, node: fx.Node, written: fx.Node) -> bool:
    """Whether ``node`` writing into ``written`` can be made out-of-place faithfully: nothing that may share
    ``written``'s memory (a view of it, or what it is a view of) is the forward's input or a weight, or is
    read after ``node``, when it would see the written values."""
    order = {other: index for index, other in enumerate(gm.graph.nodes)}
    for other in _sharing_memory(gm, written):
        if other.op in ("placeholder", "get_attr"):
            return False
        if other is not written and order[other] < order[node] and any(order[user] > order[node] for user in other.users):
            return False
    return True


def _sharing_memory(gm: fx.GraphModule, node: fx.Node) -> set[fx.Node]:
    """The nodes whose values may share memory with ``node``'s: up through what it may be a view of, and down
    through what may be a view of it."""
    found, pending = {node}, [node]
    while pending:
        current = pending.pop()
        linked = list(current.all_input_nodes) if _may_view_inputs(gm, current) else []
        linked += [user for user in current.users if _may_view_inputs(gm, user)]
        for other in linked:
            if other not in found:
                found.add(other)
                pending.append(other)
    return found


def _may_view_inputs(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s value may be one of its inputs or a view of one: any op not known to make a new tensor."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _VIEW_MODULES)
    if node.op == "call_function":
        return node.target not in _NEW_VALUE_FUNCTIONS
    if node.op == "call_method":
        return node.target not in _NEW_VALUE_METHODS
    return False


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """Max pooling computed in channels_last whatever the layout of its input, which it gives back. torch's
    kernel for contiguous maps runs one plane at a time: on ResNet18's first pool at batch 1 it takes 3.4 ms,
    against 0.3 ms in channels_last plus 0.4 ms for the two copies."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def _merge_zero_padding(gm: fx.GraphModule) -> None:
    """Make an even zero padding before an unpadded ``conv2d`` the conv's own padding ("same" padding as
    TensorFlow ports write it, e.g. EfficientNet-Lite): a padded copy of the activations less. In
    channels_last, a batch of 8 through EfficientNet-Lite0 then takes 185 ms instead of 250 (one thread)."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_module" or type(gm.get_submodule(node.target)) is not nn.ZeroPad2d or len(node.users) != 1:
            continue
        left, right, top, bottom = gm.get_submodule(node.target).padding
        conv = next(iter(node.users))
        if (left, top) != (right, bottom) or not _is_conv(conv) or conv.args[0] is not node:
            continue
        arguments = conv_arguments(conv)
        if arguments[4] not in (0, (0, 0), [0, 0]):
            continue
        arguments[0], arguments[4] = node.args[0], (top, left)
        conv.args, conv.kwargs = tuple(arguments), {}
        graph.erase_node(node)


def fold_batch_norms(gm: fx.GraphModule, keep: fx.Node | None = None) -> None:
    """Fold each eval-mode ``BatchNorm2d`` whose input is a ``conv2d`` used by it alone into that conv;
    except after ``keep``, a conv whose own output is wanted."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_module" or len(node.args) != 1:
            continue
        norm = gm.get_submodule(node.target)
        conv = node.args[0]
        if keep is not None and keep in (node, conv):
            continue
        if not (_foldable(norm) and isinstance(conv, fx.Node) and _is_static_conv(conv) and len(conv.users) == 1):
            continue
        arguments = conv_arguments(conv)
        weight_node, bias_node = arguments[1], arguments[2]
        weight = attribute(gm, weight_node.target)
        bias = None if bias_node is None else attribute(gm, bias_node.target)
        folded_weight, folded_bias = fuse_conv_bn_weights(
            weight, bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
        )
        name = f"folded_{node.target.replace('.', '_')}"
        gm.register_buffer(f"{name}_weight", folded_weight.detach())
        gm.register_buffer(f"{name}_bias", folded_bias.detach())
        with graph.inserting_before(conv):
            new_weight = graph.get_attr(f"{name}_weight")
            new_bias = graph.get_attr(f"{name}_bias")
        arguments[1], arguments[2] = new_weight, new_bias
        conv.args, conv.kwargs = tuple(arguments), {}
        node.replace_all_uses_with(conv)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()


def _foldable(module: nn.Module) -> bool:
    return (
        type(module) is nn.BatchNorm2d
        and not module.training
        and module.running_mean is not None
        and module.running_var is not None
    )


CONV_PARAMETERS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = (None, None, None, 1, 0, 1, 1)


def conv_arguments(node: fx.Node) -> list:
    """The seven arguments of a ``conv2d`` call, in order, defaults filled in."""
    arguments = list(node.args) + list(_CONV_DEFAULTS[len(node.args) :])
    for key, value in node.kwargs.items():
        arguments[CONV_PARAMETERS.index(key)] = value
    return arguments


def _is_conv(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in (F.conv2d, torch.conv2d)


def _is_static_conv(node: fx.Node) -> bool:
    """A ``conv2d`` call whose weight and bias are attributes of the module (so they can be folded now)."""
    if not _is_conv(node):
        return False
    _, weight, bias, *_ = conv_arguments(node)
    return all(isinstance(a, fx.Node) and a.op == "get_attr" for a in (weight, *([bias] if bias is not None else [])))


def attribute(gm: nn.Module, target: str):
    """The attribute a ``get_attr`` node names (a dotted path)."""
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner), name)


@dataclass(frozen=True)
class Setting:
    memory_format: torch.memory_format
    batch_size: int
    threads: int
    """1, or ``DEFAULT_THREADS``: run on a one-thread worker, or on the calling thread (:func:`on_threads`)."""


class _OneThreadWorkers:
    """Threads that each set torch to one intra-op thread once, when they start, then run the work handed to
    them, one batch at a time each (as many workers as ``DEFAULT_THREADS``: two panels' one-thread batches
    run side by side)."""

    def __init__(self, count: int):
        self._work: "queue.SimpleQueue[tuple[Callable[[], object], Future]]" = queue.SimpleQueue()
        started = threading.Barrier(count + 1)
        for index in range(count):
            threading.Thread(target=self._serve, args=(started,), name=f"cnnviz-one-thread-{index}", daemon=True).start()
        started.wait()
        # Each worker's set_num_threads(1) also set the count that threads started from now on take: the
        # default goes back, and this thread's own count is that default already.
        torch.set_num_threads(DEFAULT_THREADS)

    def _serve(self, started: threading.Barrier) -> None:
        # A thread's count is initialised from the process-wide one at its first torch call; made first here,
        # that initialisation cannot undo the setting below later.
        torch.get_num_threads()
        torch.set_num_threads(1)
        _ON_ONE_THREAD.active = True
        started.wait()
        while True:
            work, future = self._work.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(work())
                except BaseException as error:  # noqa: BLE001 - handed to the caller, who raises it
                    future.set_exception(error)

    def run(self, work: Callable[[], T]) -> T:
        future: Future = Future()
        self._work.put((work, future))
        try:
            return future.result()
        finally:
            # A caller interrupted meanwhile (Ctrl-C) still waits for its batch: once it lets go of the
            # replica's lock, no work of its own may still be running on the replica.
            if not future.cancel():
                wait([future])


_ON_ONE_THREAD = threading.local()
_WORKERS_LOCK = threading.Lock()
_workers: _OneThreadWorkers | None = None


def _one_thread_workers() -> _OneThreadWorkers:
    global _workers
    with _WORKERS_LOCK:
        if _workers is None:
            _workers = _OneThreadWorkers(DEFAULT_THREADS)
        return _workers


def _forget_workers() -> None:
    """In a forked child: the parent's workers were not copied; the child starts its own when it needs them."""
    global _workers
    _workers = None


def on_threads(count: int, work: Callable[[], T]) -> T:
    """``work()`` with torch on ``count`` intra-op threads: on the calling thread, or for one thread (when
    torch has more), on a worker that set its count to one when it started. The calling thread's gradient
    and inference modes go with the work. Work on a worker must not wait for a lock the caller holds."""
    if count != 1 or DEFAULT_THREADS == 1 or getattr(_ON_ONE_THREAD, "active", False):
        return work()
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def in_callers_modes():
        # In this order: leaving inference mode (inference_mode(False)) turns gradients on.
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return work()

    return _one_thread_workers().run(in_callers_modes)


if DEFAULT_THREADS > 1:
    # Started now, at import, rather than at the first one-thread batch: between a worker's set_num_threads(1)
    # and the default's return, a thread starting elsewhere (a panel's worker) would take one thread for life.
    _one_thread_workers()
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_workers)


class Tuner:
    """Picks the fastest setting by timing the real work: the first batches try each candidate in turn
    (``TRIALS`` times each, round-robin so a burst of load elsewhere hits them alike), then the setting
    with the lowest time per item is used from then on."""

    def __init__(self, settings: list[Setting]):
        self.settings = settings
        self.times: dict[Setting, list[float]] = {setting: [] for setting in settings}

    def next(self) -> Setting:
        fewest = min(self.settings, key=lambda setting: len(self.times[setting]))
        if len(self.times[fewest]) < TRIALS:
            return fewest
        return min(self.settings, key=lambda setting: min(self.times[setting]))

    def record(self, setting: Setting, seconds: float, items: int) -> None:
        """A batch of ``items`` took ``seconds``; a batch cut short (the last one) says nothing fair."""
        if items == setting.batch_size:
            self.times[setting].append(seconds / items)

    def timed(self, setting: Setting, items: int, work: Callable[[], T]) -> T:
        """``work()``, a batch of ``items`` run with ``setting`` (its memory format is the caller's to use),
        on the setting's threads, its time recorded."""
        start = time.perf_counter()
        result = on_threads(setting.threads, work)
        self.record(setting, time.perf_counter() - start, items)
        return result


def candidates(memory_formats, batch_sizes) -> list[Setting]:
    """The settings a tuner tries: each memory format with each batch size, on one thread or on torch's.
    One thread first, because it never stalls: on two cores busy with other work, the first batch of an
    occlusion map (the panel's first picture) took 3 to 10 s on two threads and 0.15 to 0.4 s on one."""
    threads = sorted({DEFAULT_THREADS, 1})
    return [Setting(f, size, count) for f in memory_formats for size in batch_sizes for count in threads]


def tuner(replica: nn.Module, key: Hashable, settings: Callable[[], list[Setting]]) -> Tuner:
    """The tuner of ``replica`` for the work ``key`` (made with ``settings()`` the first time)."""
    with _LOCK:
        tuners = _TUNERS.setdefault(replica, {})
        found = tuners.get(key)
        if found is None:
            found = tuners[key] = Tuner(settings())
        return found


def forwarder(replica: nn.Module, example: Tensor, work: Hashable, batch_size: int) -> Callable[[Tensor], object]:
    """A function running batches of ``batch_size`` inputs shaped like ``example`` (perturbed copies of it:
    Score-CAM's masked pictures, deletion and insertion) through the replica's fast copy, each batch in the
    memory format and on the threads the first batches of this ``work`` measured fastest, for this replica.
    Call it with gradients off."""
    fast = fast_copy(replica, example)
    settings = candidates(fast.memory_formats, (batch_size,))
    chooser = tuner(replica, (work, tuple(example.shape), *settings), lambda: settings)

    def run(batch: Tensor):
        setting = chooser.next()
        return chooser.timed(setting, len(batch), lambda: fast(batch.contiguous(memory_format=setting.memory_format)))

    return run
