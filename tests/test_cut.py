"""The fast copy cut at a layer: the CAM family's activations and gradients, against Captum's hooks on the model.

HiResCAM's map before its ReLU is ``sum_c dy/dA_c * A_c``, which Captum's ``LayerGradientXActivation`` gives
per channel: one comparison checks the layer's output and the score's gradient at every position.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import LayerActivation, LayerGradientXActivation
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets import cut
from cnnviz_widgets.replica import borrow
from tests.stand_ins import BatchLimited

TARGET = 3


def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def densenet121():
    torch.manual_seed(0)
    return torchvision.models.densenet121(weights=None).eval()


def efficientnet():
    return cw.demo.imagenet_model()[0]


CASES = [
    # A residual stage's output.
    (resnet18, "layer4"),
    # A conv inside a residual block: the skip connection crosses the cut; its BatchNorm is not folded into it.
    (resnet18, "layer4.0.conv1"),
    # A BatchNorm (not folded away) and a ReLU module called twice in its block (the last call counts).
    (resnet18, "layer3.1.bn2"),
    (resnet18, "layer4.1.relu"),
    # A dense layer whose output is concatenated with everything before it.
    (densenet121, "features.denseblock4.denselayer3"),
    # A 1x1 conv followed by BatchNorm and ReLU6 (EfficientNet-Lite0's default CAM layer).
    (efficientnet, "_conv_head"),
]


def captum_map(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    attribution = LayerGradientXActivation(model, model.get_submodule(layer)).attribute(x[None], target=TARGET)
    return torch.relu(attribution[0].sum(dim=0)).detach()


@pytest.mark.parametrize("make_model, layer", CASES, ids=[f"{make.__name__}-{layer}" for make, layer in CASES])
def test_the_cut_gives_the_layers_output_and_gradient(make_model, layer):
    model = make_model()
    x = torch.rand(3, 96, 112)
    ours = cw.cam(model, x, layer, TARGET, "hires-cam", raw=True)
    with borrow(model) as replica:
        assert cut.layer_cut(replica, layer, x[None]) is not None
    expected = captum_map(model, x, layer)
    assert float(expected.max()) > 0
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4 * float(expected.max()))


class SideValue(nn.Module):
    """Returns its conv's output but computes something else last, which the model reads: its last node is
    not its output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.brightness = None

    def forward(self, x):
        y = self.conv(x)
        self.brightness = x.mean()
        return y


class Branching(nn.Module):
    """Its forward depends on the values: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if y.mean() > 0:
            y = y * 2
        return self.fc(y.mean(dim=(2, 3)))


class WithSideValue(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = SideValue()
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        features = torch.relu(self.block(x))
        return self.fc(features.mean(dim=(2, 3)) * self.block.brightness)


@pytest.mark.parametrize("model_class, layer", [(Branching, "conv"), (WithSideValue, "block")])
def test_without_a_faithful_cut_the_replica_is_hooked(model_class, layer):
    torch.manual_seed(1)
    model = model_class().eval()
    x = torch.rand(3, 16, 16)
    with borrow(model) as replica:
        assert cut.layer_cut(replica, layer, x[None]) is None
    expected = captum_map(model, x, layer)
    assert float(expected.max()) > 0
    torch.testing.assert_close(cw.cam(model, x, layer, TARGET, "hires-cam", raw=True), expected)


def test_the_cut_follows_the_users_weights():
    model = resnet18()
    x = torch.rand(3, 64, 64)
    before = cw.cam(model, x, "layer4", TARGET, "hires-cam", raw=True)
    with torch.no_grad():
        model.layer4[1].conv2.weight.mul_(-1.0)
        model.layer4[1].bn2.running_var.mul_(4.0)
    after = cw.cam(model, x, "layer4", TARGET, "hires-cam", raw=True)
    expected = captum_map(model, x, "layer4")
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-4 * float(expected.max()))


@pytest.mark.parametrize("make_model, layer", [(resnet18, "fc"), (densenet121, "classifier"), (efficientnet, "_fc")])
def test_the_cut_at_a_classifiers_input_gives_the_embeddings_and_the_logits(make_model, layer):
    model = make_model()
    batch = torch.rand(4, 3, 64, 80)
    with borrow(model) as replica:
        at_input = cut.layer_cut(replica, layer, batch, side="input")
        assert at_input is not None
        with torch.no_grad():
            embeddings, logits = at_input.run(replica, batch, differentiable=False)
    expected = LayerActivation(model, model.get_submodule(layer)).attribute(batch, attribute_to_layer_input=True)
    with torch.no_grad():
        expected_logits = model(batch)
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-4 * float(expected_logits.abs().max()))


def with_limited_cuts(monkeypatch, largest_batch: int) -> None:
    made = cut._cut

    def limited(traced_graph, name, side):
        found = made(traced_graph, name, side)
        if found is not None:
            found.below = BatchLimited(found.below, largest_batch)
        return found

    monkeypatch.setattr(cut, "_cut", limited)


def test_a_cut_that_raises_on_its_check_is_not_used(monkeypatch):
    with_limited_cuts(monkeypatch, largest_batch=0)
    model = resnet18()
    x = torch.rand(3, 64, 64)
    with borrow(model) as replica:
        assert cut.layer_cut(replica, "layer4", x[None]) is None
    expected = captum_map(model, x, "layer4")
    torch.testing.assert_close(cw.cam(model, x, "layer4", TARGET, "hires-cam", raw=True), expected, rtol=0, atol=1e-4 * float(expected.max()))


@pytest.mark.parametrize("layer, side, differentiable", [("fc", "input", False), ("layer4", "output", True)])
def test_a_cut_that_raises_on_a_batch_answers_by_hooking_the_replica(monkeypatch, layer, side, differentiable):
    with_limited_cuts(monkeypatch, largest_batch=1)
    model = resnet18()
    batch = torch.rand(4, 3, 64, 64)
    with borrow(model) as replica, torch.set_grad_enabled(differentiable):
        at_layer = cut.layer_cut(replica, layer, batch, side)
        assert at_layer is not None and isinstance(at_layer.below, BatchLimited), "checked on one image, the cut is used"
        seen, logits = at_layer.run(replica, batch, differentiable)
        assert cut.layer_cut(replica, layer, batch, side) is None, "after it raised, the cut is not used again"
        if differentiable:
            (gradient,) = torch.autograd.grad(logits[:, TARGET].sum(), seen)
    module = model.get_submodule(layer)
    expected = LayerActivation(model, module).attribute(batch, attribute_to_layer_input=side == "input")
    with torch.no_grad():
        expected_logits = model(batch)
    torch.testing.assert_close(seen.detach(), expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    torch.testing.assert_close(logits.detach(), expected_logits, rtol=0, atol=1e-4 * float(expected_logits.abs().max()))
    if differentiable:
        expected_product = LayerGradientXActivation(model, module).attribute(batch, target=TARGET)
        torch.testing.assert_close(
            gradient * seen.detach(), expected_product, rtol=0, atol=1e-4 * float(expected_product.abs().max())
        )
