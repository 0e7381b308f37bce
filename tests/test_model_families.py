"""Models this package was not built around: a dozen torchvision families at random weights, and odd ones.

Each model is caught as a user leaves it mid-training (train mode, half its parameters frozen, ``.grad``
set). Every public function and every dashboard tab must work on it, or refuse with a message that says
what to do, and the model must come back exactly as it was.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.inputs import fixed_input_size
from cnnviz_widgets.layers import called_layers, heatmap_layer
from cnnviz_widgets.replica import borrow
from tests.model_state import ModelState, used_model

CLASSES = 10
SIDE = 112


def vision(name: str, **kwargs):
    return lambda: getattr(torchvision.models, name)(weights=None, num_classes=CLASSES, **kwargs)


class FunctionalReLUs(nn.Module):
    """ReLUs called as functions, not modules: guided backprop cannot guide them, everything else works."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class GreyNonSquare(nn.Module):
    """One input channel, pictures wider than tall, BatchNorm and dropout (train mode changes both)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16 * 20 * 28, CLASSES))

    def forward(self, x):
        return self.classifier(self.features(x))


@dataclass
class ClassifierOutput:
    """What Hugging Face image classifiers return: an object holding the logits among other things."""

    logits: torch.Tensor
    hidden: torch.Tensor


class ReturnsAnObject(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        hidden = self.body(x)
        return ClassifierOutput(logits=self.head(hidden.mean(dim=(2, 3))), hidden=hidden)


class FeaturesThenLogits(nn.Module):
    """Returns ``(feature maps, logits)``: the first item is not the logits, so ``output=`` must say where they are."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        maps = torch.relu(self.conv(x))
        return maps, self.head(maps.mean(dim=(2, 3)))


def timm_model(name: str, **kwargs):
    def build():
        import timm

        return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)

    return build


def hugging_face_vit():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=CLASSES,
    )  # fmt: skip
    return ViTForImageClassification(config)


# Vision transformers and hybrids, small enough to be quick: the same code paths as their full sizes.
TRANSFORMERS = {
    "timm_vit_tiny": (timm_model("vit_tiny_patch16_224", img_size=64), (3, 64, 64)),
    "timm_deit_distilled": (timm_model("deit_tiny_distilled_patch16_224", img_size=64), (3, 64, 64)),
    "timm_vit_registers": (timm_model("vit_tiny_patch16_224", img_size=64, reg_tokens=4, no_embed_class=True), (3, 64, 64)),
    "timm_swin": (
        timm_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4, depths=(1, 1, 1, 1), embed_dim=24),
        (3, 64, 64),
    ),
    "timm_mobilevit_xxs": (timm_model("mobilevit_xxs"), (3, 64, 64)),
    "torchvision_vit": (
        lambda: torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=CLASSES
        ),
        (3, 32, 32),
    ),
    "hugging_face_vit": (hugging_face_vit, (3, 32, 32)),
}

# name -> (builder, input (C, H, W))
MODELS = {
    "resnet18": (vision("resnet18"), (3, SIDE, SIDE)),
    "densenet121": (vision("densenet121"), (3, SIDE, SIDE)),
    "mobilenet_v3_small": (vision("mobilenet_v3_small"), (3, SIDE, SIDE)),
    "efficientnet_b0": (vision("efficientnet_b0"), (3, SIDE, SIDE)),
    "convnext_tiny": (vision("convnext_tiny"), (3, SIDE, SIDE)),
    "regnet_y_400mf": (vision("regnet_y_400mf"), (3, SIDE, SIDE)),
    "squeezenet1_1": (vision("squeezenet1_1"), (3, SIDE, SIDE)),
    "googlenet_aux": (vision("googlenet", aux_logits=True, init_weights=False), (3, SIDE, SIDE)),
    "inception_v3_299": (vision("inception_v3", aux_logits=True, init_weights=False), (3, 299, 299)),
    "shufflenet_v2": (vision("shufflenet_v2_x0_5"), (3, SIDE, SIDE)),
    "vgg11": (vision("vgg11"), (3, SIDE, SIDE)),
    "alexnet": (vision("alexnet"), (3, SIDE, SIDE)),
    "functional_relus": (FunctionalReLUs, (3, 48, 48)),
    "grey_non_square": (GreyNonSquare, (1, 40, 56)),
    "returns_an_object": (ReturnsAnObject, (3, 40, 40)),
    **TRANSFORMERS,
}

# Every tab of a dashboard on each family, but for the three whose parts the others already bring (plain conv
# stacks: squeezenet1_1; auxiliary heads: googlenet_aux) and whose size makes them the slowest (VGG's 100M
# classifier weights are copied into every replica): every function still runs on them above.
DASHBOARD_MODELS = [name for name in MODELS if name not in ("inception_v3_299", "vgg11", "alexnet")]


def build(name: str):
    torch.manual_seed(0)
    builder, shape = MODELS[name]
    return used_model(builder()), shape


def pictures_for(shape, count: int = 3):
    channels, height, width = shape
    rng = np.random.default_rng(0)
    size = (height, width) if channels == 1 else (height, width, 3)
    return [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(count)]


def preprocess_for(shape):
    channels = shape[0]

    def preprocess(picture: Image.Image) -> torch.Tensor:
        picture = picture.convert("L") if channels == 1 else picture
        return torchvision.transforms.functional.to_tensor(picture).unsqueeze(0)

    return preprocess


def default_heatmap_layer(model, x):
    with borrow(model) as replica:
        return heatmap_layer(called_layers(replica, x[None]), model, x[None])


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_every_function_works_and_leaves_the_model_as_it_was(name):
    model, shape = build(name)
    state = ModelState(model)
    x = torch.rand(shape)
    layers = cw.conv_layers(model, x)
    assert layers and all(len(layer_shape) == 3 for _, layer_shape in layers)
    first, heat = layers[0][0], default_heatmap_layer(model, x)
    assert cw.feature_maps(model, x, first).shape == layers[0][1]
    shown = cw.map_layers(model, x)
    assert set(layers) <= set(shown)
    assert cw.feature_maps(model, x, heat).shape == dict(shown)[heat]
    cam = cw.grad_cam(model, x, heat, 3)
    assert cam.shape == shape[1:] and torch.isfinite(cam).all()
    assert cw.guided_backprop(model, x, 3).shape == shape
    assert cw.guided_grad_cam(model, x, heat, 3).shape == shape
    window = shape[1] // 2
    result = cw.occlusion(model, x, 3, window=window, stride=window)
    assert result.scores.shape == tuple(-(-(side - window) // window) + 1 for side in shape[1:])
    assert cw.filter_weights(model, first).shape[0] == layers[0][1][0]
    # Patterns at the one size a ViT with fixed position embeddings reads, else at 32 px.
    size = fixed_input_size(model) or (32, 32)
    assert cw.filter_patterns(model, first, [0], size=size, steps=2).shape == (1, shape[0], *size)
    batch = torch.rand(2, *shape)
    embeddings = cw.embed(model, batch, progress=False)
    assert embeddings.shape[0] == 2 and np.isfinite(embeddings).all()
    evaluation = cw.evaluate(model, batch, [1, 2], progress=False)
    assert evaluation.confusion.sum() == 2
    state.assert_unchanged()


@pytest.mark.slow
@pytest.mark.parametrize("name", DASHBOARD_MODELS)
def test_every_dashboard_tab_works_and_leaves_the_model_as_it_was(name):
    model, shape = build(name)
    state = ModelState(model)
    dashboard = cw.explore(model, pictures_for(shape), labels=[0, 1, 2], preprocess=preprocess_for(shape))
    try:
        for index, (title, panel) in enumerate(dashboard.panels.items()):
            dashboard.tabs.selected_index = index
            assert dashboard.wait(1800), f"{title} did not finish"
            assert panel.error == "", f"{title}: {panel.error}"
        state.assert_unchanged()
    finally:
        dashboard.close()
    assert not any(panel.threads_alive for panel in dashboard.panels.values())
    state.assert_unchanged()


def test_a_model_whose_output_hides_its_logits_asks_for_output():
    model = used_model(FeaturesThenLogits())
    state = ModelState(model)
    x = torch.rand(3, 16, 16)
    with pytest.raises(TypeError, match=r"model: expected its forward to return class logits .* pass output="):
        cw.grad_cam(model, x, "conv", 1)
    with pytest.raises(TypeError, match="pass output="):
        cw.explore(model, pictures_for((3, 16, 16)), preprocess=preprocess_for((3, 16, 16)))
    with pytest.raises(TypeError, match="output: expected a callable"):
        cw.guided_backprop(model, x, 1, output="logits")
    with pytest.raises(TypeError, match=r"output: the callable given returned Tensor of shape \(1, 8, 16, 16\)"):
        cw.occlusion(model, x, 1, window=8, stride=8, output=lambda value: value[0])
    logits_only = lambda value: value[1]  # noqa: E731 - the user's one-liner
    cam = cw.grad_cam(model, x, "conv", 1, output=logits_only)
    reference = hand_grad_cam(model, x, 1)
    assert torch.allclose(cam, reference, atol=1e-5)
    dashboard = cw.explore(model, pictures_for((3, 16, 16)), preprocess=preprocess_for((3, 16, 16)), output=logits_only)
    try:
        assert dashboard.wait(120) and dashboard.grad_cam.error == ""
    finally:
        dashboard.close()
    state.assert_unchanged()


def hand_grad_cam(model: FeaturesThenLogits, x: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM written out by hand for this two-layer model, on a copy: the paper's formula, resized and scaled."""
    clone = copy.deepcopy(model).eval()
    maps = clone.conv(x[None]).detach().requires_grad_(True)
    score = clone.head(torch.relu(maps).mean(dim=(2, 3)))[0, target]
    (gradient,) = torch.autograd.grad(score, maps)
    cam = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * maps).sum(dim=1))[0].detach()
    resized = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return (resized - resized.min()) / (resized.max() - resized.min())


def test_a_model_that_cannot_be_copied_is_refused_with_a_clear_message():
    class HoldsALock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.lock = threading.Lock()

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    with pytest.raises(TypeError, match="model: cannot make a private copy of HoldsALock"):
        cw.grad_cam(HoldsALock(), torch.rand(3, 8, 8), "conv", 1)
