"""The fast copy: in-place ops made out-of-place faithfully or refused, and a traced graph that raises gives way.

Every answer is checked against the user's model run eagerly by hand (occlusion scores, a batch's logits, a
Grad-CAM map computed with a hook of the test's own), and each test asserts which path ran: the traced copy
(``fast_copy(...).graph``, the incremental engine, the cut) or the replica.
"""

from __future__ import annotations

import copy
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import cnnviz_widgets as cw
from cnnviz_widgets import cut, fast
from cnnviz_widgets.methods.incremental import IncrementalInference, engine_for
from cnnviz_widgets.replica import borrow
from tests.model_state import ModelState
from tests.stand_ins import BatchLimited

SIZE, WINDOW, STRIDE, TARGET = 24, 8, 4, 2


class InPlace(nn.Module):
    """A conv, then ``write(y)``, an in-place op on the conv's output; the rest reads ``y`` itself, not what
    the op returned, so the op's writing matters."""

    def __init__(self, write):
        super().__init__()
        self.write = write
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        y = self.conv(x)
        self.write(y)
        return self.head(torch.relu(self.conv2(y)).mean(dim=(2, 3)))


def _relu_flag(y):
    F.relu(y, True)


def _hardtanh_flags(y):
    F.hardtanh(y, 0.0, 0.3, True)


def _dropout_flags(y):
    F.relu(y, inplace=True)
    F.dropout(y, 0.5, False, True)


def _torch_relu_(y):
    torch.relu_(y)


def _functional_hardtanh_(y):
    F.hardtanh_(y, -0.2, 0.2)


def _methods(y):
    y.clamp_(-0.5, 0.3).mul_(2.0).add_(0.1)


def _item_assignment(y):
    y[:, 0] = 0.0


def _setitem(y):
    operator.setitem(y, (slice(None), 1), 0.5)


def _unlisted_method(y):
    y.lerp_(torch.zeros_like(y), 0.5)


def _view_written(y):
    y[:, :3].relu_()


HANDLED = [_relu_flag, _hardtanh_flags, _dropout_flags, _torch_relu_, _functional_hardtanh_, _methods]
REFUSED = [_item_assignment, _setitem, _unlisted_method, _view_written]


def occlusion_by_hand(model, x):
    scores = []
    with torch.no_grad():
        for top in range(0, SIZE - WINDOW + 1, STRIDE):
            for left in range(0, SIZE - WINDOW + 1, STRIDE):
                occluded = x.clone()
                occluded[:, top : top + WINDOW, left : left + WINDOW] = 0.0
                scores.append(torch.softmax(model(occluded[None]), dim=1)[0, TARGET])
    rows = (SIZE - WINDOW) // STRIDE + 1
    return torch.stack(scores).reshape(rows, rows)


def grad_cam_by_hand(model, x, layer):
    """Grad-CAM's raw map: ReLU(sum_c mean_hw(d y / d A_c) A_c), the layer's output ``A`` taken by a hook that
    hands the network a copy (the in-place op after the layer must not write into ``A``)."""
    captured = {}

    def hook(module, args, output):
        captured["A"] = output.detach().requires_grad_(True)
        return captured["A"].clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        score = model(x[None])[0, TARGET]
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(score, captured["A"])
    return torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * captured["A"]).sum(dim=1))[0].detach()


def assert_close_to_scale(ours, expected, tolerance=1e-5):
    scale = float(expected.abs().max())
    torch.testing.assert_close(ours, expected, rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize("write", HANDLED + REFUSED, ids=[write.__name__.strip("_") for write in HANDLED + REFUSED])
def test_in_place_ops_are_made_out_of_place_or_refused(write):
    torch.manual_seed(0)
    model = InPlace(write).eval()
    twin = copy.deepcopy(model)
    state = ModelState(model)
    x = torch.randn(3, SIZE, SIZE)
    batch = torch.randn(4, 3, SIZE, SIZE)
    handled = write in HANDLED

    with borrow(model) as replica, torch.no_grad():
        copy_ = fast.fast_copy(replica, x[None])
        assert (copy_.graph is not None) is handled
        assert (copy_.module is replica) is not handled
        engine = engine_for(copy_, x[None], torch.zeros(1, 3, SIZE, SIZE), [(0, WINDOW, 0, WINDOW)])
        assert isinstance(engine, IncrementalInference) is handled
        assert (cut.layer_cut(replica, "conv", x[None]) is not None) is handled
        logits = fast.forwarder(replica, x[None], "test", len(batch))(batch)
        if handled:
            assert not any(fast._writes_in_place(copy_.graph, node) for node in copy_.graph.graph.nodes)

    with torch.no_grad():
        assert_close_to_scale(logits, twin(batch))
    occlusion = cw.occlusion(model, x, TARGET, window=WINDOW, stride=STRIDE)
    torch.testing.assert_close(occlusion.scores, occlusion_by_hand(twin, x), rtol=0, atol=1e-5)
    assert_close_to_scale(cw.grad_cam(model, x, "conv", TARGET, raw=True), grad_cam_by_hand(twin, x, "conv"))
    state.assert_unchanged()


def test_item_assignment_in_a_graph_is_refused():
    """fx does not trace ``x[i] = v`` today; a graph that holds an ``operator.setitem`` all the same is not used."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.call_function(operator.setitem, (x, 0, 0.0))
    graph.output(graph.call_function(torch.relu, (x,)))
    assert fast._functional(fx.GraphModule(nn.Module(), graph), set()) is False


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)
    ).eval()


def with_raising_forms(monkeypatch, largest_batch):
    traced_forms = fast._traced_forms
    monkeypatch.setattr(fast, "_traced_forms", lambda replica: [BatchLimited(form, largest_batch) for form in traced_forms(replica)])


def test_a_graph_that_raises_on_the_check_is_not_used(monkeypatch):
    with_raising_forms(monkeypatch, largest_batch=0)
    model = small_model()
    x = torch.randn(3, SIZE, SIZE)
    with borrow(model) as replica, torch.no_grad():
        copy_ = fast.fast_copy(replica, x[None])
        assert copy_.module is replica and copy_.graph is None
    ours = cw.occlusion(model, x, TARGET, window=WINDOW, stride=STRIDE, incremental=False)
    torch.testing.assert_close(ours.scores, occlusion_by_hand(model, x), rtol=0, atol=1e-5)


def test_a_graph_that_raises_on_another_batch_size_gives_way_to_the_replica(monkeypatch):
    with_raising_forms(monkeypatch, largest_batch=1)
    model = small_model()
    x = torch.randn(3, SIZE, SIZE)
    batch = torch.randn(4, 3, SIZE, SIZE)
    with borrow(model) as replica, torch.no_grad():
        copy_ = fast.fast_copy(replica, x[None])
        assert isinstance(copy_.module, BatchLimited), "checked on one image, the traced copy is used"
        logits = fast.forwarder(replica, x[None], "test", len(batch))(batch)
        assert copy_.module is replica and copy_.graph is None, "after it raised, the replica runs"
        assert_close_to_scale(logits, model(batch))
    ours = cw.occlusion(model, x, TARGET, window=WINDOW, stride=STRIDE, incremental=False, batch_size=4)
    torch.testing.assert_close(ours.scores, occlusion_by_hand(model, x), rtol=0, atol=1e-5)
