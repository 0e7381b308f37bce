"""The fast form of a replica, for work that runs one network hundreds of times (occlusion).

Three things make the same network cheaper to run on the CPU, and none changes what it computes beyond
rounding:

- a traced copy (``torch.fx``): the graph the incremental engine of ``methods/incremental.py`` follows, in
  which each ``nn.Conv2d`` is a plain ``conv2d`` call on its weights and in-place ops are made out-of-place
  (the engine keeps the intact image's value of every node; an in-place op would overwrite one);
- each eval-mode BatchNorm folded into the convolution before it (an affine map per channel, so one pass
  over the activations less);
- the memory format (contiguous or channels_last), the batch size and the number of threads, measured on
  the work itself (:class:`Tuner`), once per replica. Threads count because an op of two threads waits for
  both: on a machine busy with other work, many short ops (the incremental engine's) lose more to that wait
  than they gain, and one thread can be twice as fast as two.

The replica is never modified: the traced copy refers to the replica's layers, and what it changes
(folded weights, out-of-place activations) are new objects it owns. It is cached per replica (weakly keyed)
and made again when :func:`cnnviz_widgets.replica.weights_state` of the replica changes, i.e. when its
weights do. Each form is checked against the replica on the first input of each shape: a form whose
outputs differ by more than ``TOLERANCE`` of their largest magnitude is not used.
"""

from __future__ import annotations

import copy
import operator
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterator, TypeVar

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

_IN_PLACE_FUNCTIONS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


@dataclass
class FastCopy:
    """What to run a replica's many forward passes on.

    module: the network to call for whole batches (the folded traced copy, or the replica itself).
    graph: the traced copy the incremental engine follows; None when the replica cannot be traced.
    memory_formats: the memory formats whose outputs stay within ``TOLERANCE`` of the replica's.
    """

    module: nn.Module
    graph: fx.GraphModule | None
    memory_formats: tuple[torch.memory_format, ...]


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
            return FastCopy(graph, graph, formats)
    return FastCopy(replica, None, _faithful_formats(replica, example, reference) or (torch.contiguous_format,))


def _faithful_formats(module: nn.Module, example: Tensor, reference) -> tuple[torch.memory_format, ...]:
    return tuple(f for f in MEMORY_FORMATS if outputs_close(module(example.contiguous(memory_format=f)), reference))


def outputs_close(output, reference) -> bool:
    ours, ours_spec = tree_flatten(output)
    theirs, theirs_spec = tree_flatten(reference)
    if ours_spec != theirs_spec:
        return False
    for mine, expected in zip(ours, theirs):
        if isinstance(expected, Tensor):
            if not isinstance(mine, Tensor) or mine.shape != expected.shape:
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
    (:class:`ChannelsLastMaxPool2d`). False if a module that would need
    replacing is shared with the replica (never the case for a freshly traced module's parents)."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in _IN_PLACE_FUNCTIONS:
            node.target = _IN_PLACE_FUNCTIONS[node.target]
        elif node.op == "call_function" and node.kwargs.get("inplace"):
            node.kwargs = {**node.kwargs, "inplace": False}
        elif node.op == "call_method" and node.target.endswith("_") and not node.target.endswith("__"):
            if hasattr(Tensor, node.target[:-1]):
                node.target = node.target[:-1]
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            replacement = None
            if getattr(module, "inplace", False) is True:
                replacement = copy.deepcopy(module)
                replacement.inplace = False
            elif type(module) is nn.MaxPool2d and not module.return_indices:
                replacement = ChannelsLastMaxPool2d(
                    module.kernel_size, module.stride, module.padding, module.dilation, ceil_mode=module.ceil_mode
                )
            if replacement is not None:
                parent, _, name = node.target.rpartition(".")
                owner = gm.get_submodule(parent)
                if id(owner) in replica_modules:
                    return False
                setattr(owner, name, replacement)
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


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run the block's torch ops on ``count`` threads. The setting belongs to the calling thread (OpenMP),
    so other threads of the process keep theirs; it is given back on the way out."""
    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
        with intra_op_threads(setting.threads):
            result = work()
        self.record(setting, time.perf_counter() - start, items)
        return result


def candidates(memory_formats, batch_sizes) -> list[Setting]:
    """The settings a tuner tries: each memory format with each batch size, on torch's threads or on one."""
    threads = sorted({torch.get_num_threads(), 1}, reverse=True)
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
        return chooser.timed(setting, len(batch), lambda: fast.module(batch.contiguous(memory_format=setting.memory_format)))

    return run
