"""Incremental inference and the fast copy: the same outputs as whole forward passes of the replica.

Each engine is compared on every patch position, in every memory format the fast copy kept, with a random
fill (a constant one could hide a region pasted in the wrong place), against whole forward passes of the
replica itself. The random-weight models run on small pictures, still large enough for each region to be
cut by the image's border and for the engine to switch to whole batches somewhere.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets import fast
from cnnviz_widgets.fast import FastCopy, Setting, Tuner, fast_copy, outputs_close
from cnnviz_widgets.methods import incremental
from cnnviz_widgets.methods.incremental import (
    FULL,
    REGION,
    FullRecompute,
    IncrementalInference,
    Window,
    engine_for,
    region_boxes,
)
from cnnviz_widgets.methods.occlusion import refinement_levels, window_boxes
from cnnviz_widgets.probe import probe
from cnnviz_widgets.replica import borrow
from method_helpers import assert_close_relative
from tests.model_state import ModelState, used_model


@pytest.fixture(scope="module")
def mobilenet_v3():
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v3_small(weights=None).eval()


@pytest.fixture(scope="module")
def densenet121():
    torch.manual_seed(0)
    return torchvision.models.densenet121(weights=None).eval()


class Zoo(nn.Module):
    """Every op the engine follows, in shapes that make the region logic work: asymmetric and negative-free
    constant padding, strides, dilation, groups, ceil-mode max pooling, an average pool with padding, a
    divisible adaptive pool, a product with a per-channel constant, a sum and a concatenation of regions of
    different sizes; then a global pool and a linear layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.norm = nn.BatchNorm2d(8)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False)
        self.pad = nn.ZeroPad2d((0, 1, 2, 1))
        self.strided = nn.Conv2d(8, 8, 3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1))
        self.head = nn.Linear(16, 5)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-0.5, 0.5)
            self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = F.silu(self.norm(self.stem(x)))
        x = x + self.dilated(x)
        x = self.pool(self.strided(self.pad(x))) * self.scale
        x = torch.cat([x, F.avg_pool2d(x, 3, stride=1, padding=1)], dim=1)
        x = F.adaptive_avg_pool2d(x, 6)
        return self.head(F.adaptive_avg_pool2d(torch.relu(x), 1).flatten(1))


class Tokens(nn.Module):
    """Convolutions around a self-attention over all places: its output at a place depends on the whole
    map, so the engine must follow regions up to it and recompute whole batches from there."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.after = nn.Conv2d(8, 4, 3, stride=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        mixed, _ = self.attention(tokens, tokens, tokens)
        x = mixed.transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.after(x).mean(dim=(2, 3)))


class Branching(nn.Module):
    """A forward that branches on the values of its input: not traceable."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0:
            x = -x
        return self.head(x.mean(dim=(2, 3)))


def compare_engines(model: nn.Module, size: int, window: int, stride: int, batch: int = 7) -> IncrementalInference:
    """Every position, every kept memory format: incremental inference against whole passes of the replica."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, size, size, generator=generator)
    fill = torch.randn(1, 3, size, size, generator=generator)
    boxes, _, _ = window_boxes(size, size, (window, window), (stride, stride))
    with borrow(model) as replica, probe(replica):
        copy = fast_copy(replica, image)
        engine = engine_for(copy, image, fill, boxes)
        assert isinstance(engine, IncrementalInference)
        reference = FullRecompute(replica, image, fill, boxes)
        expected = torch.cat([reference(range(start, min(start + batch, len(boxes)))) for start in range(0, len(boxes), batch)])
        for memory_format in copy.memory_formats:
            ours = torch.cat(
                [engine(range(start, min(start + batch, len(boxes))), memory_format) for start in range(0, len(boxes), batch)]
            )
            assert_close_relative(ours, expected)
    return engine


def region_windows(engine: IncrementalInference) -> list[str]:
    return [step.node.name for step in engine.steps if step.mode == REGION and isinstance(step.op, Window)]


@pytest.mark.parametrize(
    "model_name, size, window, stride",
    [
        ("resnet18", 112, 24, 22),
        ("vgg11_bn", 64, 16, 12),
        ("mobilenet_v3", 96, 16, 16),
        ("densenet121", 64, 16, 16),
    ],
)
def test_incremental_inference_equals_whole_passes(request, model_name, size, window, stride):
    engine = compare_engines(request.getfixturevalue(model_name), size, window, stride)
    assert region_windows(engine), "some convolution ran on regions"
    assert any(step.mode == FULL for step in engine.steps), "the engine switched to whole batches"


def test_incremental_inference_equals_whole_passes_on_efficientnet_lite(efficientnet):
    """Its own modules (TensorFlow's "same" padding as a ZeroPad2d before each strided conv) at 224 px."""
    engine = compare_engines(efficientnet, 224, 48, 44, batch=9)
    assert len(region_windows(engine)) >= 15, "regions are followed through the first blocks"


def test_every_followed_op_keeps_to_its_region():
    torch.manual_seed(0)
    engine = compare_engines(Zoo().eval(), 96, 8, 11)
    modes = {step.node.name: step.mode for step in engine.steps}
    followed = ["conv2d", "silu", "conv2d_1", "add", "pad", "conv2d_2", "pool", "mul", "avg_pool2d", "cat", "adaptive_avg_pool2d", "relu"]
    assert [name for name in followed if modes[name] != REGION] == []
    assert modes["adaptive_avg_pool2d_1"] == FULL, "the global pool"


def test_an_op_it_cannot_follow_switches_to_whole_batches():
    torch.manual_seed(0)
    engine = compare_engines(Tokens().eval(), 24, 6, 4)
    modes = {step.node.name: step.mode for step in engine.steps}
    assert modes["relu"] == REGION
    assert modes["flatten"] == FULL and modes["attention"] == FULL and modes["conv2d_1"] == FULL


def test_an_untraceable_model_runs_whole_passes(small_image):
    torch.manual_seed(0)
    model = Branching().eval()
    with borrow(model) as replica, probe(replica):
        copy = fast_copy(replica, small_image.unsqueeze(0))
        assert copy.graph is None and copy.module is replica
        engine = engine_for(copy, small_image.unsqueeze(0), torch.zeros(1, 3, 64, 64), [(0, 8, 0, 8)])
    assert isinstance(engine, FullRecompute)
    ours = cw.occlusion(model, small_image, 1, window=16, stride=12)
    reference = cw.occlusion(model, small_image, 1, window=16, stride=12, incremental=False)
    torch.testing.assert_close(ours.scores, reference.scores)


def test_incremental_false_forces_whole_passes(resnet18, small_image):
    image = small_image.unsqueeze(0)
    with borrow(resnet18) as replica, probe(replica):
        copy = fast_copy(replica, image)
        assert isinstance(engine_for(copy, image, image, [(0, 8, 0, 8)], incremental=False), FullRecompute)
    ours = cw.occlusion(resnet18, small_image, 2, window=12, stride=10)
    whole = cw.occlusion(resnet18, small_image, 2, window=12, stride=10, incremental=False)
    assert_close_relative(ours.scores, whole.scores)
    assert_close_relative(ours.attribution, whole.attribution)


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11_bn", "mobilenet_v3", "densenet121", "efficientnet"])
def test_the_fast_copy_stays_within_tolerance_of_the_replica(request, model_name):
    model = request.getfixturevalue(model_name)
    size = 224 if model_name == "efficientnet" else 64
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    with borrow(model) as replica, probe(replica):
        copy = fast_copy(replica, image)
        norms = [node for node in copy.graph.graph.nodes if node.op == "call_module" and "BatchNorm" in type(copy.graph.get_submodule(node.target)).__name__]
        if model_name != "densenet121":  # DenseNet normalises concatenations, which no conv precedes
            assert not norms, "every BatchNorm after a convolution is folded"
        assert copy.memory_formats, "a memory format was kept"
        expected = replica(image)
        for memory_format in copy.memory_formats:
            assert_close_relative(copy.module(image.contiguous(memory_format=memory_format)), expected)


def test_a_fast_form_that_strays_is_not_kept(monkeypatch, vgg11_bn):
    """With no difference allowed, the folded copy (which rounds differently) gives way."""
    monkeypatch.setattr(fast, "TOLERANCE", -1.0)
    model = torchvision.models.vgg11_bn(weights=None).eval()
    image = torch.randn(1, 3, 32, 32)
    with borrow(model) as replica, probe(replica):
        copy = fast_copy(replica, image)
        assert copy.module is replica and copy.graph is None
        assert copy.memory_formats == (torch.contiguous_format,)


def test_the_fast_copy_is_kept_until_the_weights_change(small_image):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    image = small_image.unsqueeze(0)
    with borrow(model) as replica, probe(replica):
        first = fast_copy(replica, image)
        assert fast_copy(replica, image) is first
    before = cw.occlusion(model, small_image, 0, window=16, stride=16)
    with torch.no_grad():
        model.layer1[0].bn1.running_var.mul_(4.0)
        model.conv1.weight.mul_(-1.0)
    with borrow(model) as replica, probe(replica):
        assert fast_copy(replica, image) is not first
    after = cw.occlusion(model, small_image, 0, window=16, stride=16)
    whole = cw.occlusion(model, small_image, 0, window=16, stride=16, incremental=False)
    assert_close_relative(after.scores, whole.scores)
    assert not torch.allclose(after.scores, before.scores)


def test_neither_the_users_model_nor_the_replica_changes():
    torch.manual_seed(0)
    model = used_model(torchvision.models.resnet18(weights=None))
    state = ModelState(model)
    x = torch.randn(3, 64, 64)
    with borrow(model) as replica:
        replica_state = ModelState(replica)
    cw.occlusion(model, x, 3, window=16, stride=8)
    cw.occlusion(model, x, 3, window=16, stride=8, baseline="blurred")
    state.assert_unchanged()
    with borrow(model) as replica:
        replica_state.assert_unchanged()


def test_regions_follow_kernel_stride_padding_and_dilation():
    # A 3x3 conv, stride 2, padding 1: output o reads input rows 2o - 1 .. 2o + 1.
    conv = Window(None, (3, 3), (2, 2), (1, 1), (1, 1), 0.0, None)
    changed = np.array([[10, 20, 0, 1]])
    boxes = region_boxes(conv, {None: changed}, (32, 32))
    assert boxes.tolist() == [[5, 11, 0, 1]]
    # dilation 2, no padding: output o reads rows o, o + 2, o + 4; rows 10..19 reach outputs 6..19.
    dilated = Window(None, (3, 3), (1, 1), (2, 2), (0, 0), 0.0, None)
    assert region_boxes(dilated, {None: changed}, (28, 28)).tolist() == [[6, 20, 0, 1]]
    # A 1x1 conv with stride 2 steps over row 11 alone: the box keeps one row, computed like any other.
    strided = Window(None, (1, 1), (2, 2), (1, 1), (0, 0), 0.0, None)
    assert region_boxes(strided, {None: np.array([[11, 12, 3, 4]])}, (16, 16)).tolist() == [[6, 7, 2, 3]]


def test_the_tuner_tries_each_setting_in_turn_then_keeps_the_fastest():
    settings = [Setting(torch.contiguous_format, 4, 2), Setting(torch.channels_last, 8, 1)]
    tuner = Tuner(settings)
    seconds = {settings[0]: 0.4, settings[1]: 0.4}
    tried = []
    for _ in range(2 * fast.TRIALS):
        setting = tuner.next()
        tried.append(setting)
        tuner.record(setting, seconds[setting], setting.batch_size)
    assert tried == settings * fast.TRIALS
    assert tuner.next() == settings[1], "0.05 s per position beats 0.1 s"
    tuner.record(settings[0], 0.001, 1)
    assert tuner.next() == settings[1], "a batch cut short is not a fair measure"


def test_fast_copy_outputs_with_the_replicas_output_structure():
    """A model returning a tuple is checked leaf by leaf, and runs incrementally all the same."""

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            features = self.net(x)
            return self.head(features.mean(dim=(2, 3))), features

    torch.manual_seed(0)
    model = Pair().eval()
    x = torch.randn(3, 32, 32)
    ours = cw.occlusion(model, x, 1, window=8, stride=4)
    whole = cw.occlusion(model, x, 1, window=8, stride=4, incremental=False)
    assert_close_relative(ours.attribution, whole.attribution)
    with borrow(model) as replica, probe(replica):
        assert isinstance(fast_copy(replica, x.unsqueeze(0)), FastCopy)
        assert fast_copy(replica, x.unsqueeze(0)).graph is not None


@pytest.mark.slow
def test_tracing_leaves_other_threads_forward_passes_alone():
    """fx patches ``nn.Module.__call__`` for the whole process while it traces: a forward pass in another
    thread (a panel's, or the user's own) must still run its modules as plain modules, and give its usual
    output, however many traces start meanwhile."""
    torch.manual_seed(0)
    users_model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = users_model(x)
    traced_model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    stop, failures, passes = threading.Event(), [], []

    def user():
        with torch.no_grad():
            while not stop.is_set():
                try:
                    torch.testing.assert_close(users_model(x), expected)
                    passes.append(1)
                except Exception as error:  # noqa: BLE001 - every kind of failure is the finding
                    failures.append(repr(error))
                    return

    thread = threading.Thread(target=user)
    thread.start()
    try:
        traces = 0
        while (traces < 20 or len(passes) < 20) and thread.is_alive():
            graph = fast._trace(traced_model)
            assert isinstance(graph, torch.fx.GraphModule)
            traces += 1
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert type(nn.Module.__call__) is type(lambda: None) and nn.Module.__call__.__name__ == "_wrapped_call_impl"


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_max_pooling_in_channels_last_gives_torchs_values_in_the_inputs_layout(ceil_mode, memory_format):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 17, 14).contiguous(memory_format=memory_format)
    ours = fast.ChannelsLastMaxPool2d(3, 2, 1, ceil_mode=ceil_mode)(x)
    assert torch.equal(ours, nn.MaxPool2d(3, 2, 1, ceil_mode=ceil_mode)(x.contiguous()))
    assert ours.is_contiguous(memory_format=memory_format)


def fresh_resnet18():
    """A model of the test's own: what the engine learns about a graph (its verdicts) stays with it."""
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def occlusion_boxes(size: int, window: int, stride: int):
    """The boxes in the order occlusion hands them to its engine (coarse to fine)."""
    boxes, rows, cols = window_boxes(size, size, (window, window), (stride, stride))
    return [boxes[position] for level in refinement_levels(rows, cols) for position in level]


def test_an_engine_that_misjudges_a_reach_gives_way_to_whole_passes(monkeypatch, small_image):
    """The engine believes that each sliding window's output changes only under the changed place of its
    input, ignoring the kernel's extent: its first batch differs from whole passes, so whole passes give
    the map, and the next map of that shape runs whole passes from the start."""
    counted = incremental.region_boxes

    def too_small(op, regions, size):
        boxes = counted(op, regions, size)
        if isinstance(op, Window):
            boxes = boxes.copy()
            boxes[:, 1], boxes[:, 3] = boxes[:, 0] + 1, boxes[:, 2] + 1
        return boxes

    monkeypatch.setattr(incremental, "region_boxes", too_small)
    model = fresh_resnet18()
    image, fill = small_image.unsqueeze(0), torch.zeros(1, 3, 64, 64)
    boxes = occlusion_boxes(64, 12, 10)
    with borrow(model) as replica, probe(replica):
        copy = fast_copy(replica, image)
        engine = engine_for(copy, image, fill, boxes)
        assert isinstance(engine, IncrementalInference)
        first = range(16)
        assert not outputs_close(engine._incremental(first, torch.contiguous_format), engine.whole(first)), (
            "unchecked, the engine would be wrong"
        )
    ours = cw.occlusion(model, small_image, 2, window=12, stride=10)
    whole = cw.occlusion(model, small_image, 2, window=12, stride=10, incremental=False)
    assert_close_relative(ours.scores, whole.scores)
    with borrow(model) as replica, probe(replica):
        assert isinstance(engine_for(fast_copy(replica, image), image, fill, boxes), FullRecompute)


def test_an_engine_that_raises_gives_way_to_whole_passes(monkeypatch, small_image):
    def failing_crop(*args, **kwargs):
        raise RuntimeError("a region the engine cannot cut")

    monkeypatch.setattr(incremental, "crop", failing_crop)
    model = fresh_resnet18()
    ours = cw.occlusion(model, small_image, 2, window=12, stride=10)
    whole = cw.occlusion(model, small_image, 2, window=12, stride=10, incremental=False)
    assert_close_relative(ours.scores, whole.scores)


@pytest.mark.slow
def test_a_faithful_engine_is_checked_once_per_shape_and_memory_format(monkeypatch, small_image):
    """``CHECKED_POSITIONS`` of the first batch in each memory format also run whole; once the tuner has
    tried every setting, a map of the same shape runs no whole pass at all."""
    model = fresh_resnet18()
    whole_batches = []
    run = FullRecompute.__call__
    monkeypatch.setattr(FullRecompute, "__call__", lambda self, *args: whole_batches.append(args) or run(self, *args))
    images = [small_image, torch.flip(small_image, dims=(2,)), torch.flip(small_image, dims=(1,)), -small_image]
    maps = [cw.occlusion(model, image, 2, window=12, stride=10).scores for image in images]
    with borrow(model) as replica, probe(replica):
        formats = fast_copy(replica, small_image.unsqueeze(0)).memory_formats
    assert all(len(positions) == 1 for positions, _ in whole_batches), "checked one position at a time"
    checked = {str(memory_format): 0 for memory_format in formats}
    for _, memory_format in whole_batches:
        checked[str(memory_format)] += 1
    # A first batch cut short by the end of a level has fewer positions than CHECKED_POSITIONS: all are checked.
    assert all(1 <= count <= incremental.CHECKED_POSITIONS for count in checked.values())
    whole_batches.clear()
    again = cw.occlusion(model, small_image, 2, window=12, stride=10).scores
    assert whole_batches == []
    whole = cw.occlusion(model, small_image, 2, window=12, stride=10, incremental=False).scores
    assert_close_relative(maps[0], whole)
    assert_close_relative(again, whole)
