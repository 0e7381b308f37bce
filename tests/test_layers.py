from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.layers import called_layers, conv_layers, embedding_layer, heatmap_layer, resolve_layer
from cnnviz_widgets.replica import borrow


@pytest.fixture(scope="module")
def resnet18():
    return torchvision.models.resnet18(weights=None)


def test_resolve_by_name_and_by_module(resnet18):
    assert resolve_layer(resnet18, "layer4.1.conv2") == ("layer4.1.conv2", resnet18.layer4[1].conv2)
    assert resolve_layer(resnet18, resnet18.layer3) == ("layer3", resnet18.layer3)


def test_misspelt_name_lists_the_closest(resnet18):
    with pytest.raises(ValueError, match=r"layer: no submodule named 'layer4.1.cnv2' .*closest names: layer4.1.conv2"):
        resolve_layer(resnet18, "layer4.1.cnv2")


def test_hopeless_name_lists_some_names(resnet18):
    with pytest.raises(ValueError, match=r"some names: conv1, bn1, relu"):
        resolve_layer(resnet18, "zzzzzz")


def test_the_model_itself_or_an_empty_name_is_not_a_layer(resnet18):
    with pytest.raises(ValueError, match="layer: no submodule named ''"):
        resolve_layer(resnet18, "")
    with pytest.raises(ValueError, match="layer: the module ResNet given is not a submodule"):
        resolve_layer(resnet18, resnet18)


def test_foreign_module_and_wrong_type(resnet18):
    with pytest.raises(ValueError, match="not a submodule of ResNet"):
        resolve_layer(resnet18, nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="target_layer: expected a submodule of the model or its dotted name"):
        resolve_layer(resnet18, 4.0, argument="target_layer")


class CalledOutOfOrder(nn.Module):
    """Registers its convolutions in another order than it calls them, one is never called, and one branch
    is computed and dropped: the layer lists must follow the forward pass, not the registration."""

    def __init__(self):
        super().__init__()
        self.early = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.dropped = nn.Conv2d(6, 2, 1)
        self.unused = nn.Conv2d(3, 3, 1)
        self.late = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        features = self.late(self.early(x))
        self.dropped(features)
        return self.head(features.mean(dim=(2, 3)))


def test_conv_layers_follow_the_forward_pass_with_output_shapes():
    model = CalledOutOfOrder()
    assert conv_layers(model, torch.zeros(3, 20, 30)) == [
        ("early", (4, 10, 15)),
        ("late", (6, 10, 15)),
        ("dropped", (2, 10, 15)),
    ]


def test_default_layers_skip_what_the_logits_do_not_depend_on():
    model = CalledOutOfOrder()
    with borrow(model) as replica:
        calls = called_layers(replica, torch.zeros(1, 3, 20, 30))
    assert heatmap_layer(calls, model) == "late"
    assert embedding_layer(calls, model) == ("input", "head")


@pytest.mark.slow
def test_googlenet_with_auxiliary_heads_defaults_to_its_main_path():
    model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    with borrow(model) as replica:
        calls = called_layers(replica, torch.zeros(1, 3, 224, 224))
    layer = heatmap_layer(calls, model)
    assert layer.startswith("inception5b.") and not layer.startswith("aux")
    assert embedding_layer(calls, model) == ("input", "fc")


def test_a_model_without_linear_layer_embeds_its_last_spatial_layer():
    model = torchvision.models.squeezenet1_1(weights=None, num_classes=7)
    with borrow(model) as replica:
        calls = called_layers(replica, torch.zeros(1, 3, 96, 96))
    assert embedding_layer(calls, model) == ("output", "classifier.1")


def test_conv_layers_of_efficientnet_lite0_in_call_order():
    model, _, _ = cw.demo.imagenet_model()
    names = [name for name, _ in conv_layers(model)]
    assert names[0] == "_conv_stem" and names[-1] == "_conv_head" and len(names) == 49


def test_models_without_conv_layers():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with borrow(model) as replica:
        calls = called_layers(replica, torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="model: Sequential calls no convolution with spatial maps; pass layer="):
        heatmap_layer(calls, model)
