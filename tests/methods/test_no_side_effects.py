"""Every public method leaves the model as it found it, after success and after a failure.

The model is a user's model caught mid-training: train mode, half its parameters frozen, ``.grad``
fields set. A forward pass in train mode would rewrite the BatchNorm running statistics, so any slip
shows up as a changed buffer.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import cnnviz_widgets as cw
from method_helpers import ArmedFailure
from tests.model_state import ModelState, used_model

CALLS = {
    "feature_maps": lambda m, x, target: cw.feature_maps(m, x, "0.layer3"),
    "grad_cam": lambda m, x, target: cw.grad_cam(m, x, "0.layer4", target),
    "guided_backprop": lambda m, x, target: cw.guided_backprop(m, x, target),
    "guided_grad_cam": lambda m, x, target: cw.guided_grad_cam(m, x, "0.layer4.1.conv2", target),
    "occlusion": lambda m, x, target: cw.occlusion(m, x, target, window=32, stride=32),
    "filter_weights": lambda m, x, target: cw.filter_weights(m, "0.conv1"),
    "filter_patterns": lambda m, x, target: cw.filter_patterns(m, "0.layer1.0.conv1", [0, 1], size=32, steps=2),
}
TAKES_TARGET = ("grad_cam", "guided_backprop", "guided_grad_cam", "occlusion")
RUNS_MODEL = ("feature_maps", *TAKES_TARGET)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return used_model(nn.Sequential(torchvision.models.resnet18(weights=None), ArmedFailure()))


@pytest.fixture
def user_image():
    """The user's own tensor, even one that asks for gradients: it must come back untouched."""
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)


def assert_image_untouched(image: torch.Tensor, copy: torch.Tensor) -> None:
    assert torch.equal(image.detach(), copy)
    assert image.requires_grad and image.grad is None


@pytest.mark.parametrize("name", CALLS)
def test_success_leaves_model_unchanged(model, user_image, name):
    state = ModelState(model)
    copy = user_image.detach().clone()
    CALLS[name](model, user_image, 3)
    state.assert_unchanged()
    assert_image_untouched(user_image, copy)


@pytest.mark.parametrize("name", TAKES_TARGET)
def test_target_error_after_forward_leaves_model_unchanged(model, user_image, name):
    state = ModelState(model)
    with pytest.raises(ValueError, match="target"):
        CALLS[name](model, user_image, 1000)
    state.assert_unchanged()


@pytest.mark.parametrize("name", RUNS_MODEL)
def test_failing_forward_leaves_model_unchanged(model, user_image, name):
    state = ModelState(model)
    model[1].armed = True
    try:
        # The network's own error reaches the user as it is: it is not about their input.
        with pytest.raises(RuntimeError, match="provoked failure"):
            CALLS[name](model, user_image, 3)
    finally:
        model[1].armed = False
    state.assert_unchanged()


def test_failing_pattern_checkpoint_leaves_model_unchanged(model):
    state = ModelState(model)

    def fail(fraction, partial=None):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cw.filter_patterns(model, "0.layer1.0.conv1", 0, size=32, steps=3, checkpoint=fail, preview_every=1)
    state.assert_unchanged()


BAD_LAYER_CALLS = {
    "feature_maps": lambda m, x: cw.feature_maps(m, x, "0.layer9"),
    "grad_cam": lambda m, x: cw.grad_cam(m, x, "0.fc", 3),
    "guided_grad_cam": lambda m, x: cw.guided_grad_cam(m, x, "0.fc", 3),
    "filter_weights": lambda m, x: cw.filter_weights(m, "0.bn1"),
    "filter_patterns": lambda m, x: cw.filter_patterns(m, "0.layer1.0.conv1", 64, size=32, steps=2),
}


@pytest.mark.parametrize("name", BAD_LAYER_CALLS)
def test_bad_layer_leaves_model_unchanged(model, user_image, name):
    state = ModelState(model)
    with pytest.raises(ValueError):
        BAD_LAYER_CALLS[name](model, user_image)
    state.assert_unchanged()


def test_state_check_catches_a_forward_in_train_mode(model):
    """The check itself can fail: a plain forward in train mode moves the BatchNorm statistics."""
    state = ModelState(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(AssertionError):
        state.assert_unchanged()
    model.load_state_dict(state.tensors)
    state.assert_unchanged()
