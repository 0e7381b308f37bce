"""The batched forward passes of occlusion, and incremental inference to make them cheap.

A patch changes a small part of the image, and a convolution's output at a place depends only on its input
around that place. So each layer of an occluded image differs from the intact image's only inside a region
that follows from the patch through each layer's kernel, stride, padding and dilation (Krypton: Nakandala,
Kumar & Papakonstantinou, "Incremental and Approximate Inference for Faster Occlusion-based Deep CNN
Explanations", SIGMOD 2019). :class:`IncrementalInference` computes the intact image's activations once;
then, for a batch of patch positions, each layer recomputes only its changed region per position: on a crop
of its input (the intact input, padded as the layer pads it at the true image border only, with the changed
region of the input pasted in). Point-wise ops, BatchNorm, activations, and sums, products and
concatenations of regions keep to the region; where the region grows over most of a layer, or at an op whose
output is not local (global pooling, flatten, linear layers, attention, a reshape), the rest of the network
runs on whole batches, the regions pasted into copies of the intact activations. The logits equal those of
whole forward passes up to rounding.

It follows the graph of the replica's traced fast copy (``cnnviz_widgets.fast``); a replica that cannot be
traced runs whole forward passes (:class:`FullRecompute`), the reference both engines are tested against.
The engine checks itself against that reference: ``CHECKED_POSITIONS`` of the first batch of each image
shape, patch positions and memory format also run whole, and on a difference beyond ``fast.TOLERANCE`` (an
op whose reach it misjudged), or if it raises, whole passes take over for the rest of the map and for later
maps of that shape. On EfficientNet-Lite0 at 224 px, a window 32, stride 8 map checks 8 positions in about
150 ms: 0.5 to 3.8 % of the first map, which tunes itself meanwhile (``bench/bench_methods.py
--first-batch-check``).
"""

from __future__ import annotations

import operator
import threading
import weakref
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.utils._pytree import tree_map

from ..fast import CONV_PARAMETERS, ChannelsLastMaxPool2d, FastCopy, attribute, conv_arguments, outputs_close

Box = tuple[int, int, int, int]
"""A patch ``(top, bottom, left, right)``: rows ``top:bottom`` and columns ``left:right`` of the image."""

REGION_LIMIT = 0.9
"""A layer is recomputed on whole batches once a patch's region covers more than this fraction of it."""

CHECKED_POSITIONS = 4
"""Positions of a first batch that whole passes check: its first, its last and two evenly between them. On
the coarsest level of a map (a 4 x 4 lattice) they run corner to corner: patches on every border of the
image, where the engine pads and cuts its regions."""

STATIC, REGION, FULL = "static", "region", "full"
"""How a node is computed for a batch: not at all (it does not depend on the image: its intact value
serves), on the changed region of each position, or on whole batches."""

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Threshold,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
)
_POINTWISE_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.clamp, torch.clip, torch.exp,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub, torch.mul,
    torch.div, torch.maximum, torch.minimum,
}
_POINTWISE_METHODS = {
    "relu", "sigmoid", "tanh", "clamp", "clip", "exp", "add", "sub", "mul", "div", "neg", "maximum", "minimum",
    "contiguous",
}
_CONCATENATIONS = {torch.cat, torch.concat}


@dataclass(frozen=True)
class Window:
    """A sliding-window op (convolution, pooling): output row ``o`` reads rows ``o * stride`` to
    ``o * stride + (kernel - 1) * dilation`` of its input padded by ``before`` rows (and columns)."""

    source: fx.Node
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    before: tuple[int, int]
    pad_value: float
    run: Callable[[Tensor], Tensor]
    """The op on an input already padded: no padding of its own."""

    def span(self, axis: int) -> int:
        return (self.kernel[axis] - 1) * self.dilation[axis] + 1


@dataclass(frozen=True)
class Shift:
    """Constant padding: the region moves by ``before`` rows and columns."""

    source: fx.Node
    before: tuple[int, int]


@dataclass(frozen=True)
class Elementwise:
    """An op applied place by place (activations, BatchNorm, sums, products, concatenation along channels):
    its region is the union of its spatial operands' regions."""

    sources: tuple[fx.Node, ...]


Op = Window | Shift | Elementwise


@dataclass
class Step:
    node: fx.Node
    mode: str
    op: Op | None = None
    boxes: np.ndarray | None = None
    """(positions, 4): for each patch position, the rows ``[0]:[1]`` and columns ``[2]:[3]`` of this node's
    value that may differ from the intact image's."""
    size: tuple[int, int] = (0, 0)
    call: Callable | None = None


@dataclass
class Region:
    """A batch's value of a REGION node: equal to the intact value except, for sample ``i``, inside the
    ``patch.shape[-2:]`` box at ``rows[i]``, ``cols[i]``, where it is ``patch[i]``."""

    rows: list[int]
    cols: list[int]
    patch: Tensor


class FullRecompute:
    """Whole forward passes of the occluded images: the reference, and the path of untraceable models.
    ``module``: what runs a batch (the replica's :class:`~cnnviz_widgets.fast.FastCopy`, or a module)."""

    kind = "full"

    def __init__(self, module: Callable[[Tensor], object], image: Tensor, fill: Tensor, boxes: Sequence[Box]):
        self.module, self.image, self.fill, self.boxes = module, image, fill, boxes

    def __call__(self, positions: Sequence[int], memory_format: torch.memory_format = torch.contiguous_format):
        """The model's output for the occluded images at ``positions`` (indices into the boxes)."""
        batch = torch.empty((len(positions), *self.image.shape[1:]), dtype=self.image.dtype, device=self.image.device, memory_format=memory_format)
        batch.copy_(self.image.expand_as(batch))
        for row, position in enumerate(positions):
            top, bottom, left, right = self.boxes[position]
            batch[row, :, top:bottom, left:right] = self.fill[0, :, top:bottom, left:right]
        return self.module(batch)


_VERDICTS: "weakref.WeakKeyDictionary[fx.GraphModule, dict[Hashable, dict[torch.memory_format, bool]]]" = (
    weakref.WeakKeyDictionary()
)
"""Per traced graph (made anew when the weights change), per image shape and patch positions: whether the
engine's first batch in each memory format matched whole passes."""
_VERDICTS_LOCK = threading.Lock()


def _verdicts(graph: fx.GraphModule, image: Tensor, boxes: np.ndarray) -> dict[torch.memory_format, bool]:
    key = (tuple(image.shape), image.dtype, str(image.device), boxes.tobytes())
    with _VERDICTS_LOCK:
        return _VERDICTS.setdefault(graph, {}).setdefault(key, {})


class IncrementalInference:
    """The occluded images' outputs, recomputing only the regions the patches change (module docstring).
    ``whole``: the same outputs by whole passes, which check the engine and take over if it strays."""

    kind = "incremental"

    def __init__(self, graph: fx.GraphModule, image: Tensor, fill: Tensor, boxes: Sequence[Box], whole: FullRecompute):
        self.graph, self.image, self.fill, self.whole = graph, image, fill, whole
        self.boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        self._verdicts = _verdicts(graph, image, self.boxes)
        values = run_graph(graph, image.contiguous())
        self.steps = plan(graph, values, self.boxes)
        self._modes = {step.node: step.mode for step in self.steps}
        # Whole-batch nodes never read their intact value: it is not kept.
        self._kept = {step.node for step in self.steps if step.mode != FULL}
        self._intact = {torch.contiguous_format: {node: values[node] for node in self._kept}}
        self._padded_inputs: dict[torch.memory_format, dict[fx.Node, Tensor]] = {}
        order = {step.node: index for index, step in enumerate(self.steps)}
        self._last_use = {node: max((order[user] for user in node.users), default=i) for node, i in order.items()}

    @property
    def follows_regions(self) -> bool:
        """Whether any sliding-window op runs on regions (otherwise whole passes are as cheap)."""
        return any(step.mode == REGION and isinstance(step.op, Window) for step in self.steps)

    def _intact_values(self, memory_format: torch.memory_format) -> dict[fx.Node, object]:
        found = self._intact.get(memory_format)
        if found is None:
            values = run_graph(self.graph, self.image.contiguous(memory_format=memory_format))
            found = self._intact[memory_format] = {node: values[node] for node in self._kept}
        return found

    def _padded(self, step: Step, memory_format: torch.memory_format) -> Tensor:
        """The intact input of a REGION window op, padded as the op pads it (and cut where it reads no further)."""
        values = self._intact[memory_format]
        padded = self._padded_inputs.setdefault(memory_format, {})
        found = padded.get(step.node)
        if found is None:
            op = step.op
            source = values[op.source]
            height, width = source.shape[-2:]
            out_height, out_width = values[step.node].shape[-2:]
            bottom = (out_height - 1) * op.stride[0] + op.span(0) - height - op.before[0]
            right = (out_width - 1) * op.stride[1] + op.span(1) - width - op.before[1]
            found = F.pad(source, (op.before[1], right, op.before[0], bottom), value=op.pad_value)
            padded[step.node] = found
        return found

    @property
    def checked_faithful(self) -> bool:
        """False once a first batch strayed from whole passes, or raised: whole passes run from then on."""
        return all(self._verdicts.values())

    def __call__(self, positions: range, memory_format: torch.memory_format = torch.contiguous_format):
        """The model's output for the occluded images at ``positions`` (indices into the boxes); the first
        batch in each memory format is checked against whole passes, on ``CHECKED_POSITIONS`` of its
        positions."""
        if not self.checked_faithful:
            return self.whole(positions, memory_format)
        try:
            ours = self._incremental(positions, memory_format)
        except Exception:  # noqa: BLE001 - whatever the engine's failure, whole passes are the answer
            self._verdicts[memory_format] = False
            return self.whole(positions, memory_format)
        if memory_format not in self._verdicts:
            self._verdicts[memory_format] = self._matches_whole_passes(ours, positions, memory_format)
            if not self._verdicts[memory_format]:
                return self.whole(positions, memory_format)
        return ours

    def _matches_whole_passes(self, ours, positions: range, memory_format: torch.memory_format) -> bool:
        """Whether the batch's outputs at ``CHECKED_POSITIONS`` of its positions are those of whole passes.
        One position at a time: the fast copy has run batches of one already (its own check), so torch pays
        no first run of a new batch shape (on EfficientNet-Lite0, 4 images in one batch of a new size took
        as long as 16 images)."""
        rows = sorted(set(np.linspace(0, len(positions) - 1, CHECKED_POSITIONS).round().astype(int).tolist()))
        return all(
            outputs_close(tree_map(lambda value: _row(value, row), ours), self.whole([positions[row]], memory_format))
            for row in rows
        )

    def _incremental(self, positions: range, memory_format: torch.memory_format):
        intact = self._intact_values(memory_format)
        selection = slice(positions.start, positions.stop)
        env: dict[fx.Node, object] = {}
        materialized: dict[fx.Node, Tensor] = {}

        def value(node: fx.Node):
            mode = self._modes[node]
            if mode == STATIC:
                return intact[node]
            if mode == FULL:
                return env[node]
            if node not in materialized:
                materialized[node] = paste(intact[node], env[node], memory_format)
            return materialized[node]

        for index, step in enumerate(self.steps):
            node = step.node
            if step.mode == REGION:
                env[node] = self._region(step, selection, intact, env, memory_format)
            elif step.mode == FULL:
                args = fx.node.map_arg(node.args, value)
                kwargs = fx.node.map_arg(node.kwargs, value)
                env[node] = args[0] if node.op == "output" else step.call(*args, **kwargs)
            for source in node.all_input_nodes:
                if self._last_use[source] == index:
                    env.pop(source, None)
                    materialized.pop(source, None)
        return env[self.steps[-1].node]

    def _region(self, step: Step, selection: slice, intact: dict, env: dict, memory_format) -> Region:
        rows, cols, height, width = uniform(step.boxes[selection], *step.size)
        op = step.op
        if op is None:
            patch = crop(self.image, rows, cols, height, width, None, 0, 0, memory_format)
            for sample, (top, bottom, left, right) in enumerate(self.boxes[selection].tolist()):
                patch[sample, :, top - rows[sample] : bottom - rows[sample], left - cols[sample] : right - cols[sample]] = (
                    self.fill[0, :, top:bottom, left:right]
                )
            return Region(rows, cols, patch)
        if isinstance(op, Window):
            source = env[op.source]
            padded = self._padded(step, memory_format)
            crop_rows = [row * op.stride[0] for row in rows]
            crop_cols = [col * op.stride[1] for col in cols]
            crop_height = (height - 1) * op.stride[0] + op.span(0)
            crop_width = (width - 1) * op.stride[1] + op.span(1)
            inputs = crop(padded, crop_rows, crop_cols, crop_height, crop_width, source, *op.before, memory_format)
            return Region(rows, cols, op.run(inputs))
        if isinstance(op, Shift):
            source = env[op.source]
            return Region([row + op.before[0] for row in source.rows], [col + op.before[1] for col in source.cols], source.patch)

        def operand(node: fx.Node):
            if node in op.sources:
                return crop(intact[node], rows, cols, height, width, env.get(node), 0, 0, memory_format)
            return intact[node]

        node = step.node
        args = fx.node.map_arg(node.args, operand)
        kwargs = fx.node.map_arg(node.kwargs, operand)
        return Region(rows, cols, step.call(*args, **kwargs))


def _row(value, row: int):
    """Row ``row`` of a batched output's tensor, as a batch of one; anything else as it is."""
    return value[row : row + 1] if isinstance(value, Tensor) and value.dim() > 0 else value


def engine_for(fast: FastCopy, image: Tensor, fill: Tensor, boxes: Sequence[Box], incremental: bool = True):
    """The batched forward occlusion runs: incremental inference where the replica's graph lets regions be
    followed through at least one sliding-window op and the engine has not strayed on this shape before,
    whole forward passes otherwise (or if not ``incremental``)."""
    whole = FullRecompute(fast, image, fill, boxes)
    graph = fast.graph
    if incremental and graph is not None:
        if not all(_verdicts(graph, image, np.asarray(boxes, dtype=np.int64).reshape(-1, 4)).values()):
            return whole
        engine = IncrementalInference(graph, image, fill, boxes, whole)
        if engine.follows_regions:
            return engine
    return whole


def run_graph(graph: fx.GraphModule, image: Tensor) -> dict[fx.Node, object]:
    """Every node's value for one forward pass of ``image``."""
    values: dict[fx.Node, object] = {}
    first = True
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            values[node] = image if first else (node.args[0] if node.args else None)
            first = False
            continue
        args = fx.node.map_arg(node.args, values.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, values.__getitem__)
        values[node] = args[0] if node.op == "output" else caller(graph, node)(*args, **kwargs)
    return values


def caller(graph: fx.GraphModule, node: fx.Node) -> Callable:
    """What computes ``node`` from its arguments."""
    if node.op == "call_module":
        return graph.get_submodule(node.target)
    if node.op == "call_function":
        return node.target
    if node.op == "call_method":
        return lambda self, *args, **kwargs: getattr(self, node.target)(*args, **kwargs)
    if node.op == "get_attr":
        found = attribute(graph, node.target)
        return lambda: found
    raise ValueError(f"node: unexpected op {node.op!r}")


def plan(graph: fx.GraphModule, values: dict, boxes: np.ndarray) -> list[Step]:
    """How each node is computed for a batch, and the region each patch position changes in each REGION node."""
    steps: list[Step] = []
    modes: dict[fx.Node, str] = {}
    regions: dict[fx.Node, np.ndarray] = {}
    first = True
    for node in graph.graph.nodes:
        step = Step(node, FULL, call=None if node.op in ("placeholder", "output") else caller(graph, node))
        inputs = node.all_input_nodes
        if node.op == "placeholder":
            # The image is followed even under a patch too large for it: the first layer decides.
            step.mode = REGION if first else STATIC
            if first:
                step.boxes = boxes
                step.size = tuple(values[node].shape[-2:])
                regions[node] = boxes
            first = False
        elif node.op != "output" and all(modes[source] == STATIC for source in inputs):
            step.mode = STATIC
        elif node.op != "output" and all(modes[source] != FULL for source in inputs):
            op = classify(graph, node, values, modes)
            if op is not None:
                step.size = tuple(values[node].shape[-2:])
                step.boxes = region_boxes(op, regions, step.size)
                area = (step.boxes[:, 1] - step.boxes[:, 0]) * (step.boxes[:, 3] - step.boxes[:, 2])
                if area.max() <= REGION_LIMIT * step.size[0] * step.size[1]:
                    step.op, step.mode = op, REGION
                    regions[node] = step.boxes
        if step.mode != STATIC:
            step.call = in_place(graph, node) or step.call
        modes[node] = step.mode
        steps.append(step)
    return steps


def in_place(graph: fx.GraphModule, node: fx.Node) -> Callable[[Tensor], Tensor] | None:
    """The in-place form of an activation module applied to a convolution's output that nothing else reads
    (a batch's conv output is a fresh tensor; the intact pass keeps every value and never runs this). An
    in-place clamp takes a quarter of the time of ``hardtanh``, ReLU6's out-of-place form (0.25 vs 0.85 ms
    on 16 x 480 x 14 x 14), and an in-place ReLU half that of an out-of-place one."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    (source,) = node.args
    if not (isinstance(source, fx.Node) and source.op == "call_function" and source.target in (F.conv2d, torch.conv2d)):
        return None
    if len(source.users) != 1:
        return None
    module = graph.get_submodule(node.target)
    if type(module) is nn.ReLU:
        return torch.relu_
    if type(module) is nn.ReLU6:
        return lambda x: x.clamp_(0.0, 6.0)
    if type(module) is nn.Hardtanh:
        return lambda x: x.clamp_(module.min_val, module.max_val)
    if type(module) is nn.SiLU:
        return lambda x: F.silu(x, inplace=True)
    if type(module) is nn.Hardswish:
        return lambda x: F.hardswish(x, inplace=True)
    return None


def region_boxes(op: Op, regions: dict[fx.Node, np.ndarray], size) -> np.ndarray:
    """The box of each position that may change in the op's output, from the boxes of its inputs."""
    height, width = size
    if isinstance(op, Elementwise):
        inputs = [regions[source] for source in op.sources if source in regions]
        stacked = np.stack(inputs)
        return np.stack([stacked[:, :, 0].min(0), stacked[:, :, 1].max(0), stacked[:, :, 2].min(0), stacked[:, :, 3].max(0)], axis=1)
    source = regions[op.source]
    if isinstance(op, Shift):
        return nonempty(source + np.repeat(op.before, 2), height, width)
    boxes = np.empty_like(source)
    for axis, (start, stop) in enumerate(((0, 1), (2, 3))):
        first = source[:, start] + op.before[axis]
        last = source[:, stop] - 1 + op.before[axis]
        # Output o reads padded rows o * stride .. o * stride + span - 1: the first that reaches `first`,
        # the last that starts before `last`.
        boxes[:, start] = -((op.span(axis) - 1 - first) // op.stride[axis])
        boxes[:, stop] = last // op.stride[axis] + 1
    return nonempty(boxes, height, width)


def nonempty(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes clipped to the map, each at least one pixel (a stride can step over every changed row; the extra
    pixel is computed from its input like any other)."""
    boxes = boxes.copy()
    for (start, stop), limit in (((0, 1), height), ((2, 3), width)):
        boxes[:, start] = np.clip(boxes[:, start], 0, limit - 1)
        boxes[:, stop] = np.clip(boxes[:, stop], boxes[:, start] + 1, limit)
    return boxes


def uniform(boxes: np.ndarray, height: int, width: int) -> tuple[list[int], list[int], int, int]:
    """One box size for a batch (the largest), each box moved inward where it would cross the map's edge."""
    box_height = int((boxes[:, 1] - boxes[:, 0]).max())
    box_width = int((boxes[:, 3] - boxes[:, 2]).max())
    rows = np.minimum(boxes[:, 0], height - box_height).tolist()
    cols = np.minimum(boxes[:, 2], width - box_width).tolist()
    return rows, cols, box_height, box_width


def crop(source: Tensor, rows, cols, height: int, width: int, region: Region | None, shift_rows: int, shift_cols: int, memory_format) -> Tensor:
    """``(N, C, height, width)``: for sample ``i``, ``source[0]`` at ``rows[i]``, ``cols[i]`` with the
    region's patch pasted in (its box moved by ``shift_rows``, ``shift_cols``, the padding before it)."""
    if region is not None:
        patch_rows = [row + shift_rows for row in region.rows]
        patch_cols = [col + shift_cols for col in region.cols]
        patch_height, patch_width = region.patch.shape[-2:]
        if patch_rows == rows and patch_cols == cols and (patch_height, patch_width) == (height, width):
            return region.patch
    # One stacking of views, not a copy per sample: on a busy machine each op of two threads waits for both.
    if memory_format == torch.channels_last:
        planes = source[0].permute(1, 2, 0)
        batch = torch.stack([planes[row : row + height, col : col + width] for row, col in zip(rows, cols)])
        batch = batch.permute(0, 3, 1, 2)
    else:
        batch = torch.stack([source[0, :, row : row + height, col : col + width] for row, col in zip(rows, cols)])
    if region is None:
        return batch
    for sample, (row, col, patch_row, patch_col) in enumerate(zip(rows, cols, patch_rows, patch_cols)):
        top, bottom = max(row, patch_row), min(row + height, patch_row + patch_height)
        left, right = max(col, patch_col), min(col + width, patch_col + patch_width)
        if top < bottom and left < right:
            batch[sample, :, top - row : bottom - row, left - col : right - col] = (
                region.patch[sample, :, top - patch_row : bottom - patch_row, left - patch_col : right - patch_col]
            )
    return batch


def paste(intact: Tensor, region: Region, memory_format) -> Tensor:
    """The whole batch value of a REGION node: copies of the intact value with each sample's patch in place."""
    batch = torch.empty((len(region.rows), *intact.shape[1:]), dtype=intact.dtype, device=intact.device, memory_format=memory_format)
    batch.copy_(intact.expand_as(batch))
    height, width = region.patch.shape[-2:]
    for sample, (row, col) in enumerate(zip(region.rows, region.cols)):
        batch[sample, :, row : row + height, col : col + width] = region.patch[sample]
    return batch


def classify(graph: fx.GraphModule, node: fx.Node, values: dict, modes: dict[fx.Node, str]) -> Op | None:
    """How ``node`` keeps to regions, or None when its output at a place depends on more than the input
    around that place (or on something this engine does not follow)."""
    output = values[node]
    if not _spatial(output):
        return None
    module = graph.get_submodule(node.target) if node.op == "call_module" else None
    if module is not None:
        return _module_op(module, node, values)
    if node.op == "call_function":
        if node.target in (F.conv2d, torch.conv2d):
            return _conv(node, values, modes)
        if node.target in (F.max_pool2d, torch.max_pool2d, F.avg_pool2d):
            return _pool(node, values)
        if node.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            return _adaptive(node.args[0], node.target, values[node.args[0]], output)
        if node.target is F.pad:
            return _pad(node, values)
        if node.target in _CONCATENATIONS:
            return _concatenation(node, values, modes)
        if node.target in _POINTWISE_FUNCTIONS:
            return _elementwise(node, values, modes)
    if node.op == "call_method" and node.target in _POINTWISE_METHODS:
        return _elementwise(node, values, modes)
    return None


def _spatial(value) -> bool:
    return isinstance(value, Tensor) and value.dim() == 4 and value.is_floating_point()


def _module_op(module: nn.Module, node: fx.Node, values: dict) -> Op | None:
    source = node.args[0] if node.args else None
    if len(node.args) != 1 or node.kwargs or not isinstance(source, fx.Node) or not _spatial(values[source]):
        return None
    if type(module) in (nn.MaxPool2d, ChannelsLastMaxPool2d, nn.AvgPool2d):
        options = {name: getattr(module, name) for name in ("stride", "padding", "ceil_mode")}
        if isinstance(module, nn.MaxPool2d):
            options.update(dilation=module.dilation, return_indices=module.return_indices)
        else:
            options.update(count_include_pad=module.count_include_pad, divisor_override=module.divisor_override)
        return _window_pool(source, isinstance(module, nn.MaxPool2d), module.kernel_size, options, values[source], values[node])
    if type(module) in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        if getattr(module, "return_indices", False):
            return None
        target = F.adaptive_avg_pool2d if type(module) is nn.AdaptiveAvgPool2d else F.adaptive_max_pool2d
        return _adaptive(source, target, values[source], values[node])
    if type(module) in (nn.ZeroPad2d, nn.ConstantPad2d):
        return _shift(source, module.padding, values[source], values[node])
    if type(module) is nn.BatchNorm2d:
        return Elementwise((source,)) if module.running_mean is not None and not module.training else None
    if type(module) in _POINTWISE_MODULES and not module.training and values[node].shape[-2:] == values[source].shape[-2:]:
        return Elementwise((source,))
    return None


def _arguments(node: fx.Node, names: Sequence[str], defaults: dict) -> dict:
    arguments = dict(defaults)
    arguments.update(zip(names, node.args))
    arguments.update(node.kwargs)
    return arguments


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _conv(node: fx.Node, values: dict, modes: dict) -> Window | None:
    arguments = dict(zip(CONV_PARAMETERS, conv_arguments(node)))
    source, weight_node, bias_node = arguments["input"], arguments["weight"], arguments["bias"]
    if not isinstance(source, fx.Node) or modes[source] != REGION:
        return None
    if any(isinstance(n, fx.Node) and modes[n] != STATIC for n in (weight_node, bias_node)):
        return None
    weight = values[weight_node] if isinstance(weight_node, fx.Node) else weight_node
    bias = values[bias_node] if isinstance(bias_node, fx.Node) else bias_node
    kernel = tuple(weight.shape[-2:])
    stride, dilation, groups = _pair(arguments["stride"]), _pair(arguments["dilation"]), arguments["groups"]
    padding = arguments["padding"]
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        padding = tuple(((k - 1) * d) // 2 for k, d in zip(kernel, dilation))
    padding = _pair(padding)
    run = lambda crop: F.conv2d(crop, weight, bias, stride, 0, dilation, groups)  # noqa: E731
    return _window(source, kernel, stride, dilation, padding, 0.0, run, values[source], values[node])


def _pool(node: fx.Node, values: dict) -> Window | None:
    maximum = node.target is not F.avg_pool2d
    if maximum:
        names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    else:
        names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
    arguments = _arguments(node, names, {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                                         "count_include_pad": True, "divisor_override": None, "return_indices": False})
    source = arguments.pop("input")
    if not isinstance(source, fx.Node) or not _spatial(values[source]):
        return None
    return _window_pool(source, maximum, arguments.pop("kernel_size"), arguments, values[source], values[node])


def _window_pool(source: fx.Node, maximum: bool, kernel, options: dict, value: Tensor, output: Tensor) -> Window | None:
    kernel = _pair(kernel)
    stride = _pair(options["stride"] or kernel)
    padding = _pair(options["padding"])
    if maximum:
        if options.get("return_indices"):
            return None
        dilation = _pair(options.get("dilation", 1))
        run = lambda crop: F.max_pool2d(crop, kernel, stride, 0, dilation)  # noqa: E731
        # max_pool2d pads with -inf, and a ceil_mode window that runs past the padding ignores the rest.
        return _window(source, kernel, stride, dilation, padding, float("-inf"), run, value, output, overhang=True)
    if any(padding) and not options["count_include_pad"]:
        return None
    divisor = options.get("divisor_override")
    run = lambda crop: F.avg_pool2d(crop, kernel, stride, 0, divisor_override=divisor)  # noqa: E731
    # A ceil_mode average window that runs past the padding divides by what is left of it: not followed.
    return _window(source, kernel, stride, (1, 1), padding, 0.0, run, value, output)


def _adaptive(source: fx.Node, target, value: Tensor, output: Tensor) -> Window | None:
    """An adaptive pool whose output divides its input pools fixed windows; a global pool covers the whole
    map and so is never followed (its region is the whole map)."""
    height, width = value.shape[-2:]
    out_height, out_width = output.shape[-2:]
    if height % out_height or width % out_width:
        return None
    kernel = (height // out_height, width // out_width)
    if target is F.adaptive_max_pool2d:
        run = lambda crop: F.max_pool2d(crop, kernel, kernel)  # noqa: E731
    else:
        run = lambda crop: F.avg_pool2d(crop, kernel, kernel)  # noqa: E731
    return _window(source, kernel, kernel, (1, 1), (0, 0), 0.0, run, value, output)


def _window(source, kernel, stride, dilation, padding, pad_value, run, value, output, overhang: bool = False) -> Window | None:
    """The window op, if its output size is the one its geometry gives; ``overhang``: windows may run past
    the padding (a max pool in ceil_mode), which padding with ``pad_value`` reproduces."""
    window = Window(source, kernel, stride, dilation, padding, pad_value, run)
    for axis in (0, 1):
        size, out = value.shape[-2 + axis], output.shape[-2 + axis]
        needed = (out - 1) * stride[axis] + window.span(axis)
        if needed > size + 2 * padding[axis] and not overhang:
            return None
    return window


def _pad(node: fx.Node, values: dict) -> Shift | None:
    arguments = _arguments(node, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})
    source = arguments["input"]
    if arguments["mode"] != "constant" or not isinstance(source, fx.Node):
        return None
    return _shift(source, arguments["pad"], values[source], values[node])


def _shift(source: fx.Node, padding, value: Tensor, output: Tensor) -> Shift | None:
    padding = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
    # Negative padding crops: a region could then fall off the map; not followed.
    if len(padding) < 2 or any(padding[4:]) or min(padding) < 0 or not _spatial(value):
        return None
    top = padding[2] if len(padding) > 2 else 0
    return Shift(source, (top, padding[0]))


def _elementwise(node: fx.Node, values: dict, modes: dict) -> Elementwise | None:
    """Place-by-place ops on operands of the output's size; other tensor operands may only broadcast
    without a spatial extent (a per-channel scale, a number)."""
    size = values[node].shape[-2:]
    sources = []
    for operand in node.all_input_nodes:
        value = values[operand]
        if not isinstance(value, Tensor):
            return None
        if value.dim() == 4 and value.shape[-2:] == size:
            sources.append(operand)
        elif modes[operand] != STATIC or (value.dim() != 0 and (value.dim() != 4 or value.shape[-2:] != (1, 1))):
            return None
    if not any(modes[source] == REGION for source in sources):
        return None
    return Elementwise(tuple(sources))


def _concatenation(node: fx.Node, values: dict, modes: dict) -> Elementwise | None:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if dim not in (1, -3):
        return None
    return _elementwise(node, values, modes)
