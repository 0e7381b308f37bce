"""The CAM family on ViT and Swin layers against pytorch-grad-cam, given the ``reshape_transform`` that lays
the layer's output out as maps (written here, by hand, from each model's layout)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from test_cams import ORACLES

import cnnviz_widgets as cw
from cnnviz_widgets.methods.grad_cam import CAM_METHODS, principal_projection
from tests.model_state import ModelState, used_model

TARGET = 3


def vit_tokens_as_maps(tokens):
    """ViT at 32 px, patches of 8: a class token, then a 4 x 4 grid of patches, row by row."""
    return tokens[:, 1:].reshape(len(tokens), 4, 4, tokens.shape[-1]).permute(0, 3, 1, 2)


def swin_channels_last_as_maps(output):
    return output.permute(0, 3, 1, 2)


def build_vit():
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3, embed_dim=48, num_heads=3, num_classes=10
    )


def build_swin():
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=64,
        window_size=4,
        depths=(1, 1, 1, 1),
        embed_dim=16,
        num_heads=(1, 1, 2, 2),
        num_classes=10,
    )


# model -> (builder, input side, layout as maps, layers: the default one and a middle one)
MODELS = {
    "vit": (build_vit, 32, vit_tokens_as_maps, ["blocks.2.norm1", "blocks.1"]),
    "swin": (build_swin, 64, swin_channels_last_as_maps, ["layers.3.blocks.0.norm1", "layers.2.blocks.0"]),
}


@pytest.fixture(scope="module")
def models():
    built = {}
    for name, (build, *_) in MODELS.items():
        torch.manual_seed(0)
        built[name] = used_model(build())
    return built


def pearson(a, b):
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def oracle_map(model, x, layer, method, reshape):
    """pytorch-grad-cam's map, on its own copy of the model: it hooks and puts in eval mode what it is given."""
    twin = copy.deepcopy(model)
    with ORACLES[method](model=twin, target_layers=[twin.get_submodule(layer)], reshape_transform=reshape) as oracle:
        return torch.from_numpy(oracle(input_tensor=x[None], targets=[ClassifierOutputTarget(TARGET)])[0])


def case(model_name, models):
    _, side, reshape, layers = MODELS[model_name]
    x = torch.randn(3, side, side, generator=torch.Generator().manual_seed(3))
    return models[model_name], x, reshape, layers


@pytest.mark.slow
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", [m for m in CAM_METHODS if m != "eigen-cam"])
def test_map_correlates_with_pytorch_grad_cam(method, model_name, models):
    model, x, reshape, layers = case(model_name, models)
    state = ModelState(model)
    for layer in layers:
        ours = cw.cam(model, x, layer, TARGET, method)
        reference = oracle_map(model, x, layer, method, reshape)
        assert ours.shape == reference.shape == x.shape[-2:]
        assert ours.std() > 0.05, "a flat map would agree with anything"
        assert pearson(ours, reference) >= 0.999, (layer, pearson(ours, reference))
    state.assert_unchanged()


@pytest.mark.parametrize("model_name", MODELS)
def test_eigen_cam_is_pytorch_grad_cams_up_to_the_components_sign(model_name, models):
    """pytorch-grad-cam leaves the principal component's sign to LAPACK: its map is ours or the opposite sign's."""
    model, x, reshape, layers = case(model_name, models)
    for layer in layers:
        reference = oracle_map(model, x, layer, "eigen-cam", reshape)
        projection = principal_projection(cw.feature_maps(model, x, layer))
        orientations = [cw.cam(model, x, layer, TARGET, "eigen-cam"), upsampled(torch.relu(-projection), x.shape[-2:])]
        assert max(pearson(map_, reference) for map_ in orientations) >= 0.999


def upsampled(activation_map, size):
    resized = F.interpolate(activation_map[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return (resized - resized.min()) / (resized.max() - resized.min())
