from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnviz_widgets.probe import probe
from tests.model_state import ModelState, used_model


class Block(nn.Module):
    """conv -> BatchNorm -> in-place ReLU, then `out += x` and the same ReLU again (as in ResNet)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(2, 3)
        self.after = nn.Identity()

    def forward(self, x):
        out = self.bn(self.conv(x))
        out += x
        out = self.relu(out)
        return self.head(self.after(out).mean(dim=(2, 3)))


@pytest.fixture
def block():
    torch.manual_seed(0)
    return Block()


def layer(model, name):
    return name, dict(model.named_modules())[name]


def test_captures_a_copy_safe_from_later_in_place_ops(block):
    x = torch.randn(1, 2, 5, 5)
    with probe(block, outputs=[layer(block, "bn")]) as capture:
        capture.run(x)
    with torch.no_grad():
        block.eval()
        expected = block.bn(block.conv(x))
    torch.testing.assert_close(capture.outputs["bn"], expected)


def test_differentiable_output_gives_the_gradient_at_the_layer(block):
    x = torch.randn(1, 2, 5, 5)
    with probe(block, outputs=[layer(block, "bn")], differentiable=True) as capture:
        logits = capture.run(x)
        (gradient,) = torch.autograd.grad(logits[0, 1], capture.outputs["bn"])
    # By hand: d y_1 / d bn = head.weight[1, c] / 25 where the ReLU passes (bn + x > 0), else 0.
    block.eval()
    with torch.no_grad():
        passing = (block.bn(block.conv(x)) + x) > 0
    expected = block.head.weight[1].detach().reshape(1, 2, 1, 1) / 25 * passing
    torch.testing.assert_close(gradient, expected)


def test_differentiable_output_is_a_leaf_when_nothing_below_needs_gradients(block):
    """Parameters are frozen inside the probe: nothing below the layer is recorded."""
    with probe(block, outputs=[layer(block, "bn")], differentiable=True) as capture:
        capture.run(torch.randn(1, 2, 5, 5))
        assert capture.outputs["bn"].is_leaf and capture.outputs["bn"].requires_grad
        assert not any(p.requires_grad for p in block.parameters())


def test_guided_activations_pass_only_positive_gradients():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU6(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[2].weight.copy_(torch.tensor([[-1.0, 3.0]]))
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    with probe(model, guide_activations=True) as capture:
        (gradient,) = torch.autograd.grad(capture.run(x)[0, 0], x)
    torch.testing.assert_close(gradient, torch.tensor([[0.0, 3.0]]))


def test_stop_early_skips_the_rest_of_the_network(block):
    calls = []
    block.head.register_forward_pre_hook(lambda m, args: calls.append("head"))
    with probe(block, outputs=[layer(block, "bn")], stop_early=True) as capture:
        assert capture.run(torch.randn(1, 2, 5, 5)) is None
    assert "bn" in capture.outputs and calls == []


def test_captures_inputs(block):
    with probe(block, inputs=[layer(block, "head")]) as capture:
        capture.run(torch.randn(1, 2, 5, 5))
    assert capture.inputs["head"].shape == (1, 2)


def test_restores_everything_after_an_error_inside_the_block(block):
    used_model(block)
    state = ModelState(block)
    with pytest.raises(KeyError):
        with probe(
            block, outputs=[layer(block, "bn")], inputs=[layer(block, "head")], differentiable=True, guide_activations=True
        ) as capture:
            capture.run(torch.randn(1, 2, 5, 5, requires_grad=True))
            assert not block.training
            raise KeyError("inside")
    state.assert_unchanged()


def test_a_failing_network_becomes_a_value_error_about_x(block):
    used_model(block)
    state = ModelState(block)
    with pytest.raises(ValueError, match=r"x: Block cannot run on an input of shape \(1, 3, 5, 5\)"):
        with probe(block, outputs=[layer(block, "bn")]) as capture:
            capture.run(torch.randn(1, 3, 5, 5))
    state.assert_unchanged()
