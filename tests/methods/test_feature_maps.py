from __future__ import annotations

import pytest
import torch

import cnnviz_widgets as cw
from cnnviz_widgets.layers import resolve_layer

CASES = [
    ("resnet18", "conv1"),
    ("resnet18", "layer1.0.bn2"),  # `out += identity` rewrites this output in place just after
    ("resnet18", "layer1.0.relu"),  # called twice per block: the second call is the one kept
    ("resnet18", "layer4"),
    ("vgg11_bn", "features.10"),
    ("efficientnet", "_blocks.3._depthwise_conv"),
    ("digits_model", "features.relu2"),
]


def plain_hook_output(model, x, layer):
    """The oracle: a forward hook keeping a copy of every call's output (the last one survives)."""
    _, module = resolve_layer(model, layer)
    kept = {}
    handle = module.register_forward_hook(lambda m, args, output: kept.update(output=output.detach().clone()))
    try:
        with torch.no_grad():
            model(x.unsqueeze(0))
    finally:
        handle.remove()
    return kept["output"][0]


@pytest.mark.parametrize("model_name, layer", CASES)
def test_equals_plain_forward_hook(model_name, layer, request, small_image, digit):
    model = request.getfixturevalue(model_name)
    x = digit[0] if model_name == "digits_model" else small_image
    maps = cw.feature_maps(model, x, layer)
    torch.testing.assert_close(maps, plain_hook_output(model, x, layer), rtol=0, atol=0)


def test_reused_module_gives_its_last_call(resnet18, small_image):
    """layer1.0.relu runs after bn1 and after the residual sum; the maps are the block's output."""
    block_output = cw.feature_maps(resnet18, small_image, "layer1.0")
    assert torch.equal(cw.feature_maps(resnet18, small_image, "layer1.0.relu"), block_output)


def test_module_or_name_and_both_input_ranks(vgg11_bn, small_image):
    by_name = cw.feature_maps(vgg11_bn, small_image, "features.3")
    by_module = cw.feature_maps(vgg11_bn, small_image.unsqueeze(0), vgg11_bn.features[3])
    assert by_name.shape == (64, 32, 32)
    assert torch.equal(by_name, by_module)


def test_hand_computed_maps():
    conv = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).reshape(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, 0.0]))
    model = torch.nn.Sequential(conv, torch.nn.Flatten(), torch.nn.Linear(8, 3))
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    expected = torch.stack([2 * x[0] + 0.5, -x[0]])
    torch.testing.assert_close(cw.feature_maps(model, x, "0"), expected)


def test_result_is_a_detached_cpu_copy(resnet18, small_image):
    maps = cw.feature_maps(resnet18, small_image, "layer2")
    assert not maps.requires_grad and maps.device.type == "cpu"
    maps.zero_()
    assert cw.feature_maps(resnet18, small_image, "layer2").abs().sum() > 0


def test_layer_the_forward_never_calls(resnet18, small_image):
    class WithSpare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = resnet18
            self.spare = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.network(x)

    model = WithSpare()
    with pytest.raises(ValueError, match="layer: 'spare' .*not called"):
        cw.feature_maps(model, small_image, "spare")
