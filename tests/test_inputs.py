"""Bad input fails early, as a ValueError/TypeError naming the argument, the value given and what is accepted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.inputs import (
    check_baseline,
    check_filters,
    check_image,
    check_int,
    check_normalize,
    check_pair,
    check_target,
    check_window,
    input_channels,
    model_device,
)


class TinyNet(nn.Module):
    """3-channel conv, global pooling, 5 classes: big enough for every public function, fast."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyNet().eval()


X_CALLS = {
    "feature_maps": lambda m, x: cw.feature_maps(m, x, "conv"),
    "grad_cam": lambda m, x: cw.grad_cam(m, x, "conv", 0),
    "guided_backprop": lambda m, x: cw.guided_backprop(m, x, 0),
    "guided_grad_cam": lambda m, x: cw.guided_grad_cam(m, x, "conv", 0),
    "occlusion": lambda m, x: cw.occlusion(m, x, 0, window=4, stride=2),
}
BAD_X = [
    (np.zeros((3, 8, 8), np.float32), TypeError, "x: expected a torch.Tensor of shape .C, H, W. or .1, C, H, W., got nd"),
    (torch.zeros(8, 8), ValueError, r"x: expected shape \(C, H, W\) or \(1, C, H, W\), got \(8, 8\)"),
    (torch.zeros(1, 1, 3, 8, 8), ValueError, r"x: expected shape .*got \(1, 1, 3, 8, 8\)"),
    (torch.zeros(2, 3, 8, 8), ValueError, "x: expected one image, got a batch of 2"),
    (torch.zeros(1, 8, 8), ValueError, "x: TinyNet reads 3-channel images, got 1 channels"),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), TypeError, "x: expected a floating-point tensor .*got dtype torch.uint8"),
    (torch.full((3, 8, 8), float("nan")), ValueError, "x: contains NaN or infinite values"),
    (torch.full((3, 8, 8), float("inf")), ValueError, "x: contains NaN or infinite values"),
]


@pytest.mark.parametrize("name", X_CALLS)
@pytest.mark.parametrize("x, error, message", BAD_X, ids=[str(i) for i in range(len(BAD_X))])
def test_bad_x(model, name, x, error, message):
    with pytest.raises(error, match=message):
        X_CALLS[name](model, x)


def test_x_too_small_for_the_network():
    model = nn.Sequential(nn.Conv2d(3, 2, 5), nn.Flatten(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"x: Sequential cannot run on an input of shape \(1, 3, 4, 4\)"):
        cw.feature_maps(model, torch.zeros(3, 4, 4), "0")


TARGET_CALLS = {
    "grad_cam": lambda m, target: cw.grad_cam(m, torch.zeros(3, 8, 8), "conv", target),
    "guided_backprop": lambda m, target: cw.guided_backprop(m, torch.zeros(3, 8, 8), target),
    "guided_grad_cam": lambda m, target: cw.guided_grad_cam(m, torch.zeros(3, 8, 8), "conv", target),
    "occlusion": lambda m, target: cw.occlusion(m, torch.zeros(3, 8, 8), target, window=4, stride=2),
}
BAD_TARGETS = [
    (5, ValueError, "target: class index 5 is out of range; the model has classes 0..4"),
    (-1, ValueError, "target: class index -1 is out of range"),
    (1.0, TypeError, "target: expected an int, got float 1.0"),
    ("cat", TypeError, "target: expected an int, got str 'cat'"),
    (True, TypeError, "target: expected an int, got bool True"),
    (None, TypeError, "target: expected an int, got NoneType"),
]


@pytest.mark.parametrize("name", TARGET_CALLS)
@pytest.mark.parametrize("target, error, message", BAD_TARGETS, ids=[str(t) for t, _, _ in BAD_TARGETS])
def test_bad_target(model, name, target, error, message):
    with pytest.raises(error, match=message):
        TARGET_CALLS[name](model, target)


LAYER_CALLS = {
    "feature_maps": lambda m, layer: cw.feature_maps(m, torch.zeros(3, 8, 8), layer),
    "grad_cam": lambda m, layer: cw.grad_cam(m, torch.zeros(3, 8, 8), layer, 0),
    "guided_grad_cam": lambda m, layer: cw.guided_grad_cam(m, torch.zeros(3, 8, 8), layer, 0),
    "filter_weights": lambda m, layer: cw.filter_weights(m, layer),
    "filter_patterns": lambda m, layer: cw.filter_patterns(m, layer, 0, size=8, steps=1),
}
BAD_LAYERS = [
    ("cnv", ValueError, "layer: no submodule named 'cnv' in TinyNet; .*closest names: conv"),
    (nn.Conv2d(3, 4, 3), ValueError, "layer: the module Conv2d given is not a submodule of TinyNet"),
    (3, TypeError, "layer: expected a submodule of the model or its dotted name .str., got int"),
]


@pytest.mark.parametrize("name", LAYER_CALLS)
@pytest.mark.parametrize("layer, error, message", BAD_LAYERS, ids=["misspelt", "foreign", "int"])
def test_bad_layer(model, name, layer, error, message):
    with pytest.raises(error, match=message):
        LAYER_CALLS[name](model, layer)


@pytest.mark.parametrize("name", [*X_CALLS, "filter_weights", "filter_patterns"])
def test_model_that_is_not_a_module(name):
    calls = dict(
        X_CALLS,
        filter_weights=lambda m, x: cw.filter_weights(m, "conv"),
        filter_patterns=lambda m, x: cw.filter_patterns(m, "conv", 0),
    )
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got function"):
        calls[name](lambda x: x, torch.zeros(3, 8, 8))


def test_model_that_does_not_return_logits():
    model = nn.Sequential(nn.Conv2d(3, 2, 1))
    with pytest.raises(TypeError, match=r"model: expected its forward to return class logits \(N, K\).* returned Tensor of shape \(1, 2, 8, 8\); pass output="):
        cw.grad_cam(model, torch.zeros(3, 8, 8), "0", 0)


def test_check_image_returns_a_fresh_batch_of_one(model):
    x = torch.rand(3, 8, 8, requires_grad=True)
    image = check_image(model, x)
    assert image.shape == (1, 3, 8, 8) and not image.requires_grad
    image.zero_()
    assert x.abs().sum() > 0


def test_check_image_moves_to_the_model_device():
    on_meta = TinyNet().to("meta")
    assert model_device(on_meta).type == "meta"
    assert check_image(on_meta, torch.zeros(3, 8, 8)).device.type == "meta"
    assert model_device(nn.Identity()).type == "cpu"


def test_input_channels():
    assert input_channels(TinyNet()) == 3
    assert input_channels(nn.Sequential(nn.Flatten(), nn.Linear(4, 2))) is None


def test_integers_of_every_kind():
    assert check_int(np.int64(3), "target") == 3
    assert check_int(torch.tensor(4), "target") == 4
    with pytest.raises(TypeError, match="target: expected an int, got Tensor"):
        check_int(torch.tensor(4.0), "target")
    assert check_target(np.int32(2), 3) == 2


def test_pairs_and_windows():
    assert check_pair(5, "window") == (5, 5)
    assert check_pair((3, 4), "window") == (3, 4)
    assert check_pair([3, 4], "stride") == (3, 4)
    assert check_window(8, 8, 8, 16) == ((8, 8), (8, 8))
    # The stride may exceed the window along an axis the window covers entirely: one position only.
    assert check_window((8, 2), (20, 2), 8, 16) == ((8, 2), (20, 2))
    with pytest.raises(ValueError, match="stride: .*longer than the window"):
        check_window((8, 2), (2, 3), 8, 16)


def test_baselines():
    image = torch.zeros(1, 3, 4, 4)
    assert torch.equal(check_baseline(1, image), torch.ones(1, 3, 4, 4))
    per_channel = check_baseline(torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1, 1), image)
    assert per_channel.shape == (1, 3, 4, 4) and per_channel[0, 2, 3, 3] == 3
    with pytest.raises(ValueError, match="baseline: contains NaN"):
        check_baseline(torch.full((3, 1, 1), float("nan")), image)
    with pytest.raises(TypeError, match="baseline: expected a number or a tensor"):
        check_baseline(True, image)


def test_filters():
    assert check_filters(3, 4) == [3]
    assert check_filters(range(2), 4) == [0, 1]
    assert check_filters(torch.tensor([1, 2]), 4) == [1, 2]
    assert check_filters((np.int64(0),), 4) == [0]
    with pytest.raises(TypeError, match="filters: expected an int, got str"):
        check_filters("0", 4)


def test_normalize():
    mean, std = check_normalize(None, 3)
    torch.testing.assert_close(mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    mean, std = check_normalize((0.5, 0.25), 1)
    assert mean.shape == std.shape == (1, 1, 1, 1) and float(std) == 0.25
    mean, std = check_normalize(None, 1)
    assert float(mean) == 0 and float(std) == 1
