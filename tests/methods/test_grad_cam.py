from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.layers import resolve_layer
from method_helpers import EGYPTIAN_CAT, ESPRESSO, assert_close_relative, halves

ORACLE_CASES = [
    ("resnet18", "layer4.1.conv2"),
    ("resnet18", "layer4"),
    ("resnet18", "layer1.0.bn2"),  # `out += identity` rewrites this output in place just after
    ("resnet18", "layer2.0.relu"),  # an in-place ReLU the block calls twice
    ("vgg11_bn", "features.25"),
    ("vgg11_bn", "features.14"),
    ("efficientnet", "_conv_head"),
    ("efficientnet", "_blocks.10"),
    ("digits_model", "features.conv3"),
]


def captum_grad_cam(model, x, layer, target):
    _, module = resolve_layer(model, layer)
    return LayerGradCam(model, module).attribute(x.unsqueeze(0), target=target, relu_attributions=True)[0, 0]


def image_for(name, request):
    """A picture the model sees something in: on noise the pretrained models' maps are often all zero."""
    if name == "digits_model":
        return request.getfixturevalue("digit")[0]
    if name == "efficientnet":
        return request.getfixturevalue("cat_and_coffee")[:, 48:176, 48:176]
    return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1))


TARGETS = {"efficientnet": (EGYPTIAN_CAT,), "digits_model": (0, 7)}


@pytest.mark.parametrize("model_name, layer", ORACLE_CASES)
def test_raw_map_equals_captum_layer_grad_cam(model_name, layer, request):
    model = request.getfixturevalue(model_name)
    x = image_for(model_name, request)
    for target in TARGETS.get(model_name, (0, 7)):
        reference = captum_grad_cam(model, x, layer, target)
        assert_close_relative(cw.grad_cam(model, x, layer, target, raw=True), reference)


@pytest.mark.parametrize("model_name, layer", [("resnet18", "layer4.1.conv2"), ("efficientnet", "_conv_head")])
def test_resized_map_is_captum_map_upsampled_and_scaled(model_name, layer, request):
    model = request.getfixturevalue(model_name)
    x = image_for(model_name, request)
    target = TARGETS.get(model_name, (3,))[0]
    raw = captum_grad_cam(model, x, layer, target).detach()
    resized = F.interpolate(raw[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    expected = (resized - resized.min()) / (resized.max() - resized.min())
    cam = cw.grad_cam(model, x, layer, target)
    assert cam.shape == x.shape[-2:]
    torch.testing.assert_close(cam, expected, rtol=0, atol=1e-4)
    assert cam.min() == 0 and cam.max() == 1


def test_agrees_with_pytorch_grad_cam(resnet18):
    """pytorch-grad-cam scales, then resizes with OpenCV: the same map up to resampling details."""
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    other = copy.deepcopy(resnet18)
    with GradCAM(model=other, target_layers=[other.layer3]) as cam:
        reference = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(5)])[0])
    ours = cw.grad_cam(resnet18, x, "layer3", 5)
    assert (ours - reference).abs().max() < 0.03
    assert torch.corrcoef(torch.stack([ours.flatten(), reference.flatten()]))[0, 1] > 0.999


class TwoChannelNet(nn.Module):
    """conv (1 -> 2 channels, 1x1, weights 1 and -1) -> global mean -> linear: Grad-CAM by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
            self.head.weight.copy_(torch.tensor([[2.0, 1.0], [-1.0, -1.0]]))

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_hand_computed_map():
    # A_0 = x, A_1 = -x; dy_0/dA_c = W[0, c] / 4 on a 2x2 map -> weights 0.5 and 0.25.
    x = torch.tensor([[[1.0, 2.0], [3.0, -4.0]]])
    expected = torch.relu(0.5 * x[0] + 0.25 * -x[0])
    torch.testing.assert_close(cw.grad_cam(TwoChannelNet(), x, "conv", 0, raw=True), expected)


def test_constant_map_scales_to_zeros():
    # For class 1 both channel weights are negative on a positive input: the ReLU leaves nothing.
    x = torch.ones(1, 4, 4)
    model = TwoChannelNet()
    assert cw.grad_cam(model, x, "conv", 1, raw=True).abs().max() == 0
    assert torch.equal(cw.grad_cam(model, x, "conv", 1), torch.zeros(4, 4))


def test_layer_as_module_or_name_and_both_input_ranks(resnet18, small_image):
    by_name = cw.grad_cam(resnet18, small_image, "layer3.1.conv2", 2, raw=True)
    by_module = cw.grad_cam(resnet18, small_image.unsqueeze(0), resnet18.layer3[1].conv2, 2, raw=True)
    # The first calls try the memory formats and thread counts in turn, which round differently.
    torch.testing.assert_close(by_name, by_module, rtol=1e-5, atol=1e-6 * float(by_name.max()))


def test_fully_frozen_model(digits_model, digit):
    """No parameter asks for gradients (a frozen feature extractor): the layer's gradient still exists."""
    frozen = copy.deepcopy(digits_model).requires_grad_(False)
    x = digit[0]
    expected = cw.grad_cam(digits_model, x, "features.conv2", 3, raw=True)
    # Equal up to rounding: each model's fast copy picks its memory format and threads by timing.
    torch.testing.assert_close(cw.grad_cam(frozen, x, "features.conv2", 3, raw=True), expected, rtol=1e-5, atol=1e-6)


def test_result_is_detached_on_cpu(resnet18, small_image):
    cam = cw.grad_cam(resnet18, small_image, "layer4", 1)
    assert not cam.requires_grad and cam.device.type == "cpu"


def test_layer_that_the_output_does_not_use():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(3, 4, 3)
            self.ignored = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            self.ignored(x)
            return self.head(self.used(x).mean(dim=(2, 3)))

    with pytest.raises(ValueError, match="layer: .*does not depend on 'ignored'"):
        cw.grad_cam(Unused(), torch.randn(3, 8, 8), "ignored", 0)


def test_a_quantized_head_is_named_as_what_stops_the_gradient():
    model = cw.demo.digits_model()
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    x = torch.rand(1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"^model: no gradient reaches 'features.conv3' through the quantized layers \(embedding.fc, classifier\)"):
        cw.grad_cam(quantized, x, "features.conv3", 0)
    # The same model unquantized has its map: the message is about the quantized layers, not the layer.
    assert cw.grad_cam(model, x, "features.conv3", 0).shape == (32, 32)


def test_layer_without_spatial_maps(resnet18, small_image):
    with pytest.raises(ValueError, match=r"layer: Grad-CAM needs .*'fc' outputs \(1, 1000\)"):
        cw.grad_cam(resnet18, small_image, "fc", 0)


def test_each_class_lights_its_own_object(efficientnet, cat_and_coffee):
    """The article's two-object photo: the cat's map on the cat (left), the espresso's on the cup (right)."""
    cat_left, cat_right = halves(cw.grad_cam(efficientnet, cat_and_coffee, "_conv_head", EGYPTIAN_CAT))
    cup_left, cup_right = halves(cw.grad_cam(efficientnet, cat_and_coffee, "_conv_head", ESPRESSO))
    assert cat_left > 2 * cat_right
    assert cup_right > 2 * cup_left
