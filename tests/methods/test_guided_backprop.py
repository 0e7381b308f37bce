from __future__ import annotations

import copy

import pytest
import torch
from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam
from torch import nn

import cnnviz_widgets as cw
from method_helpers import EGYPTIAN_CAT, ESPRESSO, assert_close_relative, halves


def captum_guided_backprop(model, x, target):
    return GuidedBackprop(model).attribute(x.unsqueeze(0).clone().requires_grad_(True), target=target)[0].detach()


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11_bn", "digits_model"])
def test_equals_captum_guided_backprop(model_name, request, small_image, digit):
    model = request.getfixturevalue(model_name)
    x = digit[0] if model_name == "digits_model" else small_image
    for target in (1, 4):
        assert_close_relative(cw.guided_backprop(model, x, target), captum_guided_backprop(model, x, target))


class GuidedReLU6(torch.autograd.Function):
    """The oracle for ReLU6: clamp(x, 0, 6) forward; backward passes positive gradients where 0 < x < 6."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * ((x > 0) & (x < 6))


class GuidedReLU6Module(nn.Module):
    def forward(self, x):
        return GuidedReLU6.apply(x)


def test_guides_relu6_modules_reused_in_blocks(efficientnet, cat_and_coffee):
    x = cat_and_coffee[:, 64:160, 64:160]
    oracle = copy.deepcopy(efficientnet)
    for block in oracle._blocks:
        block._swish = GuidedReLU6Module()
    oracle._swish = GuidedReLU6Module()
    image = x.unsqueeze(0).clone().requires_grad_(True)
    oracle(image)[0, EGYPTIAN_CAT].backward()
    assert_close_relative(cw.guided_backprop(efficientnet, x, EGYPTIAN_CAT), image.grad[0])


def test_hand_computed_gradient():
    # y = w2 . relu(W1 x): guided, the ReLU passes back relu(w2) where W1 x > 0.
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))
        model[3].weight.copy_(torch.tensor([[2.0, -3.0, 0.5]]))
    x = torch.tensor([1.0, 2.0, -4.0]).reshape(3, 1, 1)
    # W1 x = (1, 2, -1): units 0 and 1 pass, unit 2 is off; guided weights (2, 0, 0) -> W1^T (2, 0, 0) = (2, 0, 0).
    expected = torch.tensor([2.0, 0.0, 0.0]).reshape(3, 1, 1)
    torch.testing.assert_close(cw.guided_backprop(model, x, 0), expected)
    plain = x.unsqueeze(0).clone().requires_grad_(True)
    model(plain)[0, 0].backward()
    # The plain gradient lets the negative weight through: (2, -3, 0).
    torch.testing.assert_close(plain.grad[0], torch.tensor([2.0, -3.0, 0.0]).reshape(3, 1, 1))


@pytest.mark.parametrize("target", [2, 7])
def test_guided_grad_cam_equals_captum_guided_backprop_times_upsampled_layer_grad_cam(resnet18, small_image, target):
    raw = LayerGradCam(resnet18, resnet18.layer3).attribute(small_image[None], target=target, relu_attributions=True)
    upsampled = LayerAttribution.interpolate(raw.detach(), (64, 64), interpolate_mode="bilinear")[0, 0]
    cam = (upsampled - upsampled.min()) / (upsampled.max() - upsampled.min())
    expected = captum_guided_backprop(resnet18, small_image, target) * cam
    assert_close_relative(cw.guided_grad_cam(resnet18, small_image, resnet18.layer3, target), expected)


def test_shape_device_and_input_ranks(digits_model, digit):
    x = digit[0]
    gradient = cw.guided_backprop(digits_model, x, 2)
    assert gradient.shape == (1, 32, 32) and gradient.device.type == "cpu" and not gradient.requires_grad
    assert torch.equal(gradient, cw.guided_backprop(digits_model, x.unsqueeze(0), 2))


def test_guided_grad_cam_lights_each_object(efficientnet, cat_and_coffee):
    cat_left, cat_right = halves(cw.guided_grad_cam(efficientnet, cat_and_coffee, "_conv_head", EGYPTIAN_CAT).abs())
    cup_left, cup_right = halves(cw.guided_grad_cam(efficientnet, cat_and_coffee, "_conv_head", ESPRESSO).abs())
    assert cat_left > 2 * cat_right
    assert cup_right > 2 * cup_left
