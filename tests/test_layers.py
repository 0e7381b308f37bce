from __future__ import annotations

import pytest
import torchvision
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.layers import conv_layers, last_conv_layer, last_linear_layer, resolve_layer


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


def test_conv_layers_include_subclasses():
    model, _, _ = cw.demo.imagenet_model()
    names = [name for name, _ in conv_layers(model)]
    assert names[0] == "_conv_stem" and names[-1] == "_conv_head"
    assert last_conv_layer(model) == "_conv_head"
    assert last_linear_layer(model) == "_fc"


def test_models_without_conv_or_linear():
    with pytest.raises(ValueError, match="model: Sequential has no nn.Conv2d layer"):
        last_conv_layer(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="model: Sequential has no nn.Linear layer"):
        last_linear_layer(nn.Sequential(nn.Conv2d(2, 2, 1)))
