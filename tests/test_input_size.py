"""Models that read one input size (ViTs with fixed position embeddings): detected, generated inputs made at
that size, and any other size refused with a ValueError naming the argument, before the model's own error."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from transformers import ViTConfig, ViTForImageClassification

import cnnviz_widgets as cw
from cnnviz_widgets.inputs import IMAGENET_MEAN, IMAGENET_STD, fixed_input_size
from cnnviz_widgets.widgets.filters import pattern_grid
from tests.model_state import ModelState
from tests.widgets.panel_support import pixels


def timm_vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()


def timm_swin():
    # 32 px is Swin-T's smallest input: four stages halve 8 x 8 patches down to one.
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32).eval()


def torchvision_vit():
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ).eval()


def hugging_face_vit():
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return ViTForImageClassification(config).eval()


# (build, the size the model is built for, its patch embedding convolution)
FIXED = {
    "timm ViT": (timm_vit, (64, 64), "patch_embed.proj"),
    "timm Swin": (timm_swin, (32, 32), "patch_embed.proj"),
    "torchvision ViT": (torchvision_vit, (32, 32), "conv_proj"),
    "Hugging Face ViT": (hugging_face_vit, (32, 32), "vit.embeddings.patch_embeddings.projection"),
}


@pytest.fixture(scope="module", params=list(FIXED))
def fixed(request):
    build, size, layer = FIXED[request.param]
    return build(), size, layer


def refuses(model, height: int, width: int) -> bool:
    """Whether the model's own forward fails on a picture of that size."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width))
    except (AssertionError, ValueError, RuntimeError):
        return True
    return False


def test_the_size_found_is_the_one_the_model_reads(fixed):
    model, size, _ = fixed
    assert fixed_input_size(model) == size
    assert not refuses(model, *size)
    assert refuses(model, size[0] + 16, size[1] + 16)


@pytest.mark.parametrize(
    "build",
    [
        lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, dynamic_img_size=True),
        lambda: torchvision.models.resnet18(),
    ],
    ids=["timm ViT with dynamic_img_size", "resnet18"],
)
def test_models_that_read_many_sizes_have_none(build):
    model = build().eval()
    assert fixed_input_size(model) is None
    assert not refuses(model, 64, 64) and not refuses(model, 96, 80)


def test_a_model_reading_no_pictures_of_a_fixed_size_is_not_run():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args))
    assert fixed_input_size(model) is None and calls == []


def test_another_size_is_refused_with_the_argument_named(fixed):
    model, (height, width), layer = fixed
    state = ModelState(model)
    wrong = torch.rand(3, height + 8, width + 16)
    message = rf"^x: {type(model).__name__} reads only {height} x {width} inputs, got {height + 8} x {width + 16}; "
    with pytest.raises(ValueError, match=message + r"resize .*preprocess="):
        cw.grad_cam(model, wrong, layer, 0)
    with pytest.raises(ValueError, match=message):
        cw.feature_maps(model, wrong, layer)
    state.assert_unchanged()


def test_the_right_size_goes_through(fixed):
    model, (height, width), layer = fixed
    state = ModelState(model)
    x = torch.rand(3, height, width)
    with torch.no_grad():
        expected = model.get_submodule(layer)(x[None])[0]
    assert torch.allclose(cw.feature_maps(model, x, layer), expected, atol=1e-6)
    state.assert_unchanged()


def patch_means(model, patterns: torch.Tensor, filters: list[int]) -> torch.Tensor:
    """Each filter's mean response, at the patch embedding, to its own picture (ImageNet normalisation)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        maps = model.patch_embed.proj((patterns - mean) / std)
    return maps[torch.arange(len(filters)), filters].mean(dim=(-2, -1))


def test_patterns_are_made_at_the_size_the_model_reads_and_excite_their_filter():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 48)).eval()
    state = ModelState(model)
    filters = [0, 5, 9]
    patterns = cw.filter_patterns(model, "patch_embed.proj", filters, steps=16)
    assert patterns.shape == (3, 3, 32, 48)
    assert torch.equal(
        cw.filter_patterns(model, "patch_embed.proj", filters, steps=1),
        cw.filter_patterns(model, "patch_embed.proj", filters, size=(32, 48), steps=1),
    )
    # The optimisation starts from grey: its pictures must excite their filters more than grey does.
    grey = torch.full_like(patterns, 0.5)
    assert (patch_means(model, patterns, filters) > patch_means(model, grey, filters) + 0.05).all()
    state.assert_unchanged()


def test_patterns_of_another_size_are_refused_naming_size():
    model = timm_vit()
    state = ModelState(model)
    with pytest.raises(ValueError, match=r"^size: 48 does not fit VisionTransformer, which reads only 64 x 64 .*size=64"):
        cw.filter_patterns(model, "patch_embed.proj", 0, size=48, steps=1)
    with pytest.raises(ValueError, match=r"^size: \(64, 32\) does not fit"):
        cw.filter_patterns(model, "patch_embed.proj", 0, size=(64, 32), steps=1)
    assert cw.filter_patterns(model, "patch_embed.proj", 0, size=64, steps=1).shape == (1, 3, 64, 64)
    state.assert_unchanged()


def test_patterns_of_a_cnn_keep_any_size():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 5))
    assert cw.filter_patterns(model, "2", [1], size=(24, 40), steps=1).shape == (1, 3, 24, 40)
    assert cw.filter_patterns(model, "2", [1], steps=1).shape == (1, 3, 128, 128)


def test_the_filters_panel_grows_patterns_of_the_size_the_model_reads():
    model = torchvision_vit()
    state = ModelState(model)
    pictures = [np.full((32, 32, 3), shade, dtype=np.uint8) for shade in (40, 200)]
    panel = cw.FiltersPanel(model, pictures, lambda picture: torch.tensor(np.array(picture)).permute(2, 0, 1) / 255.0)
    try:
        assert panel.wait_prefetched(60)
        panel.count.value = 2
        panel.steps.value = 8
        assert panel.wait_prefetched(60)
        panel.find.click()
        assert panel.wait_prefetched(60)
        assert panel.error == "" and "done" in panel.patterns_label.value
        shown = pixels(panel.patterns_view.value)
        assert shown.shape == pattern_grid(torch.zeros(2, 3, 32, 32)).shape
    finally:
        panel.close()
    state.assert_unchanged()
