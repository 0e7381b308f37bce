"""Transformer layers shown as maps: ViT, DeiT, registers, torchvision, Hugging Face, Swin and MobileViT.

The truth here is the model's own forward pass, hooked in the test on a copy of the model, with the tokens
after the prefix laid out by hand as the patch grid (the patch embedding's row-major order).
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from transformers import ViTConfig, ViTForImageClassification

import cnnviz_widgets as cw
from cnnviz_widgets.inputs import check_image
from cnnviz_widgets.layers import called_layers, heatmap_layer
from tests.model_state import ModelState, used_model


def seeded(build):
    torch.manual_seed(0)
    return used_model(build())


def with_random_head(model):
    """torchvision starts its head at zero: no class score would depend on anything."""
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def timm_vit(**kwargs):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, patch_size=8, depth=3, num_classes=10, **kwargs)


# name -> (model builder, input (C, H, W), prefix tokens, grid (h, w), blocks, the default CAM layer)
MODELS = {
    "vit": (lambda: timm_vit(img_size=32), (3, 32, 32), 1, (4, 4), [f"blocks.{i}" for i in range(3)], "blocks.2.norm1"),
    "vit, 4 registers": (
        lambda: timm_vit(img_size=32, reg_tokens=4),
        (3, 32, 32),
        5,
        (4, 4),
        [f"blocks.{i}" for i in range(3)],
        "blocks.2.norm1",
    ),
    "vit, 32 x 64": (lambda: timm_vit(img_size=(32, 64)), (3, 32, 64), 1, (4, 8), [f"blocks.{i}" for i in range(3)], "blocks.2.norm1"),
    "deit distilled": (
        lambda: timm.create_model(
            "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10
        ),
        (3, 32, 32),
        2,
        (4, 4),
        ["blocks.0", "blocks.1"],
        "blocks.1.norm1",
    ),
    "torchvision vit": (
        lambda: with_random_head(
            torchvision.models.VisionTransformer(
                image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
            )
        ),
        (3, 32, 32),
        1,
        (4, 4),
        ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"],
        "encoder.layers.encoder_layer_1.ln_1",
    ),
    "hugging face vit": (
        lambda: ViTForImageClassification(
            ViTConfig(
                image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=10
            )
        ),
        (3, 32, 32),
        1,
        (4, 4),
        ["vit.layers.0", "vit.layers.1"],
        "vit.layers.1.layernorm_before",
    ),
}


def hooked_output(model, x, layer):
    """The layer's output in a plain forward pass of a copy of the model."""
    twin = copy.deepcopy(model).eval()
    seen = {}
    handle = twin.get_submodule(layer).register_forward_hook(lambda module, args, output: seen.update(output=output))
    with torch.no_grad():
        twin(x[None])
    handle.remove()
    return seen["output"]


def tokens_as_maps(tokens, prefix, grid):
    """``(1, T, D)`` tokens -> ``(D, h, w)``, patch by patch: patch (i, j) is token ``prefix + i * w + j``."""
    rows, columns = grid
    maps = torch.empty(tokens.shape[-1], rows, columns)
    for i in range(rows):
        for j in range(columns):
            maps[:, i, j] = tokens[0, prefix + i * columns + j]
    return maps


@pytest.mark.parametrize("name", MODELS)
def test_blocks_listed_as_maps_feature_maps_and_default_grad_cam(name):
    build, shape, prefix, grid, blocks, default = MODELS[name]
    model = seeded(build)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    state = ModelState(model)
    listed = dict(cw.map_layers(model, x))
    width = hooked_output(model, x, blocks[0]).shape[-1]
    for block in blocks:
        assert listed[block] == (width, *grid)
    assert default in listed
    state.assert_unchanged()

    middle = blocks[len(blocks) // 2]
    expected = tokens_as_maps(hooked_output(model, x, middle), prefix, grid)
    torch.testing.assert_close(cw.feature_maps(model, x, middle), expected, rtol=1e-4, atol=1e-5)
    state.assert_unchanged()

    replica = copy.deepcopy(model)
    image = check_image(replica, x)
    assert heatmap_layer(called_layers(replica, image), replica, image) == default
    activation_map = cw.grad_cam(model, x, default, 3, raw=True)
    assert activation_map.shape == grid
    assert activation_map.max() > 0
    state.assert_unchanged()


def test_the_last_vit_blocks_output_gives_a_null_map_its_first_norm_does_not():
    """The head reads the class token only: after the last block's attention nothing mixes the patch tokens
    into it, so their gradient there is zero, and so is every gradient-weighted map."""
    model = seeded(lambda: timm_vit(img_size=32))
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    for method in ("grad-cam", "grad-cam++", "layer-cam", "hires-cam"):
        assert cw.cam(model, x, "blocks.2", 3, method, raw=True).abs().max() == 0
        assert cw.cam(model, x, "blocks.2.norm1", 3, method, raw=True).max() > 0


def test_swin_blocks_are_read_channels_last():
    model = seeded(
        lambda: timm.create_model(
            "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2, depths=(1, 1, 1, 1), num_classes=10
        )
    )
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    state = ModelState(model)
    listed = dict(cw.map_layers(model, x))
    assert listed["layers.0.blocks.0"] == (96, 8, 8)
    assert listed["layers.3.blocks.0.norm1"] == (768, 1, 1)
    assert "layers.1.downsample.norm" not in listed
    expected = hooked_output(model, x, "layers.1.blocks.0")[0].permute(2, 0, 1)
    torch.testing.assert_close(cw.feature_maps(model, x, "layers.1.blocks.0"), expected, rtol=1e-4, atol=1e-5)
    replica = copy.deepcopy(model)
    image = check_image(replica, x)
    assert heatmap_layer(called_layers(replica, image), replica, image) == "layers.3.blocks.0.norm1"
    state.assert_unchanged()


def test_mobilevit_lists_its_convolutions_not_its_folded_tokens():
    """MobileViT's transformers see the pixels of each patch position as a batch of their own: no grid of one image."""
    model = seeded(lambda: timm.create_model("mobilevit_xxs", pretrained=False, num_classes=10))
    x = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1))
    state = ModelState(model)
    listed = cw.map_layers(model, x)
    assert listed == cw.conv_layers(model, x)
    assert not any(".transformer." in name for name, _ in listed)
    replica = copy.deepcopy(model)
    image = check_image(replica, x)
    default = heatmap_layer(called_layers(replica, image), replica, image)
    assert default == [name for name, _ in listed][-1]
    activation_map = cw.grad_cam(model, x, default, 3)
    assert activation_map.shape == (64, 64) and activation_map.max() == 1
    state.assert_unchanged()


def test_the_session_lists_the_blocks_and_picks_transformer_defaults():
    from cnnviz_widgets.session import Session
    from cnnviz_widgets.widgets.base import LayerChooser

    model = seeded(lambda: timm_vit(img_size=32))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    state = ModelState(model)
    session = Session(model, images)
    expected = [("patch_embed.proj", (192, 4, 4))]
    for i in range(3):
        expected += [(f"blocks.{i}.norm1", (192, 4, 4)), (f"blocks.{i}", (192, 4, 4))]
    assert session.conv_layers() == expected
    assert session.heatmap_layer() == "blocks.2.norm1"
    assert session.first_layer() == "patch_embed.proj"
    assert [value for _, value in LayerChooser(session).options] == [name for name, _ in expected]
    state.assert_unchanged()


def test_sanity_cascade_and_deletion_curves_on_a_vit_block():
    model = seeded(lambda: timm_vit(img_size=32))
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    state = ModelState(model)
    result = cw.sanity_check(model, x, 3, "grad-cam", layers=["head", "blocks.2"])
    torch.testing.assert_close(result.original, cw.grad_cam(model, x, "blocks.2.norm1", 3))
    assert result.original.max() == 1
    assert len(result.maps) == 2
    faithfulness = cw.deletion_insertion(model, x, 3, cw.grad_cam(model, x, "blocks.1", 3), steps=4)
    with torch.no_grad():
        probability = torch.softmax(copy.deepcopy(model).eval()(x[None]), dim=1)[0, 3]
    torch.testing.assert_close(faithfulness.deletion[0], probability, rtol=1e-4, atol=1e-6)
    assert faithfulness.deletion.shape == faithfulness.insertion.shape == (5,)
    state.assert_unchanged()


class Mixer(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.mix = torch.nn.Linear(width, width)

    def forward(self, tokens):
        mixed = self.mix(self.norm(tokens))
        return tokens + mixed + mixed.mean(dim=1, keepdim=True)


class UnnamedPrefixTransformer(torch.nn.Module):
    """A transformer whose one prefix token has a name no library uses: the count is guessed from the input."""

    def __init__(self, width=8):
        super().__init__()
        self.patches = torch.nn.Conv2d(3, width, 8, stride=8)
        self.start = torch.nn.Parameter(torch.randn(1, 1, width))
        self.blocks = torch.nn.Sequential(Mixer(width), Mixer(width))
        self.head = torch.nn.Linear(width, 10)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.start.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.blocks(tokens)[:, 0])


def test_prefix_and_grid_guessed_from_a_non_square_input():
    model = seeded(UnnamedPrefixTransformer)
    x = torch.randn(3, 32, 48, generator=torch.Generator().manual_seed(1))
    state = ModelState(model)
    assert cw.map_layers(model, x) == [
        ("patches", (8, 4, 6)),
        ("blocks.0.norm", (8, 4, 6)),
        ("blocks.0", (8, 4, 6)),
        ("blocks.1.norm", (8, 4, 6)),
        ("blocks.1", (8, 4, 6)),
    ]
    expected = tokens_as_maps(hooked_output(model, x, "blocks.0"), 1, (4, 6))
    torch.testing.assert_close(cw.feature_maps(model, x, "blocks.0"), expected, rtol=1e-4, atol=1e-5)
    assert cw.grad_cam(model, x, "blocks.1.norm", 3, raw=True).max() > 0
    state.assert_unchanged()


def test_embeddings_of_a_token_layer_average_its_patch_tokens():
    model = seeded(lambda: timm_vit(img_size=32))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    state = ModelState(model)
    embeddings = cw.embed(model, images, layer="blocks.1")
    expected = torch.stack([hooked_output(model, image, "blocks.1")[0, 1:].mean(dim=0) for image in images])
    torch.testing.assert_close(torch.from_numpy(embeddings), expected, rtol=1e-4, atol=1e-5)
    state.assert_unchanged()
