"""The class-activation-map family: each method against pytorch-grad-cam, by hand on a tiny model, contrastive maps."""

from __future__ import annotations

import copy
import functools
import importlib

import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets import fast
from cnnviz_widgets.methods.grad_cam import CAM_METHODS, principal_projection
from method_helpers import EGYPTIAN_CAT, ESPRESSO, halves
from tests.model_state import ModelState, used_model

ORACLES = {
    "grad-cam": GradCAM,
    "grad-cam++": GradCAMPlusPlus,
    "xgrad-cam": XGradCAM,
    "layer-cam": LayerCAM,
    "hires-cam": HiResCAM,
    "score-cam": ScoreCAM,
    "eigen-cam": EigenCAM,
}
# Score-CAM runs the network once per channel of the layer: layers of 128 and 112 channels (rather than
# 256 and 1280) keep the test short.
LAYERS = {"resnet18": "layer3", "efficientnet": "_conv_head"}
SCORE_CAM_LAYERS = {"resnet18": "layer2", "efficientnet": "_blocks.10"}
TARGETS = {"resnet18": 5, "efficientnet": EGYPTIAN_CAT}


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def oracle_map(model, x, layer, target, method):
    """pytorch-grad-cam's map, on its own copy of the model: it hooks and puts in eval mode what it is given."""
    twin = copy.deepcopy(model)
    with ORACLES[method](model=twin, target_layers=[twin.get_submodule(layer)]) as oracle:
        return torch.from_numpy(oracle(input_tensor=x.unsqueeze(0), targets=[ClassifierOutputTarget(target)])[0])


def oracle_input(model_name, request):
    if model_name == "efficientnet":
        return request.getfixturevalue("cat_and_coffee")[:, 48:176, 48:176]
    return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("model_name", ["resnet18", "efficientnet"])
@pytest.mark.parametrize("method", [m for m in CAM_METHODS if m != "eigen-cam"])
def test_map_correlates_with_pytorch_grad_cam(method, model_name, request):
    """pytorch-grad-cam scales, then resizes with OpenCV: the same map up to resampling details."""
    model = request.getfixturevalue(model_name)
    x = oracle_input(model_name, request)
    layer = (SCORE_CAM_LAYERS if method == "score-cam" else LAYERS)[model_name]
    target = TARGETS[model_name]
    ours = cw.cam(model, x, layer, target, method)
    reference = oracle_map(model, x, layer, target, method)
    assert ours.shape == reference.shape == x.shape[-2:]
    assert pearson(ours, reference) >= 0.999


@pytest.mark.parametrize("model_name", ["resnet18", "efficientnet"])
def test_eigen_cam_is_pytorch_grad_cams_up_to_the_components_sign(model_name, request):
    """pytorch-grad-cam leaves the principal component's sign to LAPACK; ours rises with the total activation.

    The oracle's map is then either ours or the map of the opposite sign, ``ReLU(-projection)``.
    """
    model = request.getfixturevalue(model_name)
    x = oracle_input(model_name, request)
    layer, target = LAYERS[model_name], TARGETS[model_name]
    projection = principal_projection(cw.feature_maps(model, x, layer))
    ours = cw.cam(model, x, layer, target, "eigen-cam", raw=True)
    # The CAMs run on the fast copy (BatchNorm folded), which stays within fast.TOLERANCE of the replica.
    scale = float(projection.abs().max())
    torch.testing.assert_close(ours, torch.relu(projection), rtol=fast.TOLERANCE, atol=fast.TOLERANCE * scale)
    reference = oracle_map(model, x, layer, target, "eigen-cam")
    orientations = [cw.cam(model, x, layer, target, "eigen-cam"), upsampled(torch.relu(-projection), x.shape[-2:])]
    assert max(pearson(map_, reference) for map_ in orientations) >= 0.999


def upsampled(activation_map, size):
    resized = F.interpolate(activation_map[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return (resized - resized.min()) / (resized.max() - resized.min())


def test_eigen_cam_rises_with_the_layers_total_activation(resnet18, small_image):
    maps = cw.feature_maps(resnet18, small_image, "layer2")
    projection = principal_projection(maps)
    assert pearson(projection, maps.sum(dim=0)) > 0
    # The convention holds whatever sign the decomposition returns: flipping the maps flips the projection.
    torch.testing.assert_close(principal_projection(-maps), -projection)


class FlatHead(nn.Module):
    """conv (1 -> 2 channels, 1x1, weights 1 and -1) -> flatten -> linear to one score: the score's gradient
    at the conv's output is the linear layer's weights, a different number at each position."""

    GRADIENTS = torch.tensor([[[1.0, 0.0], [-1.0, 2.0]], [[0.5, 0.25], [-2.0, -1.0]]])

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.head = nn.Linear(8, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
            self.head.weight.copy_(self.GRADIENTS.reshape(1, 8))

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))


# A_0 = x = [[1, 2], [3, -4]], A_1 = -x; g_0 = [[1, 0], [-1, 2]], g_1 = [[0.5, 0.25], [-2, -1]];
# sum_hw A_0 = 2, sum_hw A_1 = -2.
HAND_X = torch.tensor([[[1.0, 2.0], [3.0, -4.0]]])
HAND_MAPS = {
    # weights mean(g_0) = 0.5, mean(g_1) = -0.5625: 0.5 x + 0.5625 x = 1.0625 x
    "grad-cam": [[1.0625, 2.125], [3.1875, 0.0]],
    # g_0 A_0 + g_1 A_1 = [[1, 0], [-3, -8]] + [[-0.5, -0.5], [6, -4]]
    "hires-cam": [[0.5, 0.0], [3.0, 0.0]],
    # relu(g_0) A_0 + relu(g_1) A_1 = [[1, 0], [0, -8]] + [[-0.5, -0.5], [0, 0]]
    "layer-cam": [[0.5, 0.0], [0.0, 0.0]],
    # weights sum(g_0 A_0) / 2 = -10 / 2 = -5, sum(g_1 A_1) / -2 = 1 / -2 = -0.5: -5 x + 0.5 x = -4.5 x
    "xgrad-cam": [[0.0, 0.0], [0.0, 18.0]],
    # alpha = 1 / (2 + S g) where g != 0: channel 0: g = 1 -> 1/4, g = 2 -> 1/6, weight 1/4 + 2/6 = 7/12;
    # channel 1: g = 0.5 -> 1, g = 0.25 -> 2/3, weight 0.5 + 1/6 = 2/3; 7/12 x - 2/3 x = -x / 12
    "grad-cam++": [[0.0, 0.0], [0.0, 1 / 3]],
}


@pytest.mark.parametrize("method", HAND_MAPS)
def test_hand_computed_maps(method):
    expected = torch.tensor(HAND_MAPS[method])
    # Within the small constants the formulas add to their denominators (1e-6 for Grad-CAM++).
    torch.testing.assert_close(cw.cam(FlatHead(), HAND_X, "conv", 0, method, raw=True), expected, rtol=0, atol=1e-4)


def test_hand_computed_score_cam():
    # Masks: each channel min-max scaled: (x + 4) / 7 and (-x + 3) / 7. The score is sum((g_0 - g_1) * x * mask)
    # with g_0 - g_1 = [[0.5, -0.25], [1, 3]]: 3 - 1/14 = 41/14 for the first mask, -12 + 1/14 = -167/14.
    weights = torch.softmax(torch.tensor([41 / 14, -167 / 14]), dim=0)
    expected = torch.relu((weights[0] - weights[1]) * HAND_X[0])
    torch.testing.assert_close(cw.cam(FlatHead(), HAND_X, "conv", 0, "score-cam", raw=True), expected)


def test_hires_cam_adds_up_to_the_score_through_a_pooled_linear_head(small_image):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[4].weight.abs_()  # non-negative activations and weights: the ReLU of the map takes nothing away
        score = model(small_image[None])[0, 0] - model[4].bias[0]
    hires = cw.cam(model, small_image, "1", 0, "hires-cam", raw=True)
    assert float(hires.sum()) == pytest.approx(float(score), rel=1e-5)


def test_grad_cam_is_the_family_default(resnet18, small_image):
    # The first calls try the fast copy's memory formats and thread counts in turn, which round differently.
    same = functools.partial(torch.testing.assert_close, rtol=1e-5, atol=1e-6)
    expected = cw.cam(resnet18, small_image, "layer3", 2)
    same(cw.grad_cam(resnet18, small_image, "layer3", 2), expected)
    same(cw.cam(resnet18, small_image, "layer3", 2, "grad-cam"), expected)
    contrasted = cw.cam(resnet18, small_image, "layer3", 2, contrast=4)
    same(cw.grad_cam(resnet18, small_image, "layer3", 2, contrast=4), contrasted)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_shapes_range_and_result(method, digits_model, digit):
    x, label = digit
    raw = cw.cam(digits_model, x, "features.relu2", label, method, raw=True)
    resized = cw.cam(digits_model, x, "features.relu2", label, method)
    assert raw.shape == (16, 16) and resized.shape == x.shape[-2:]
    assert raw.min() >= 0 and resized.min() == 0 and resized.max() == 1
    for result in (raw, resized):
        assert not result.requires_grad and result.device.type == "cpu"


@pytest.mark.parametrize("method", [m for m in CAM_METHODS if m != "eigen-cam"])
def test_contrast_is_the_map_of_the_logit_difference(method, digits_model, digit):
    x = digit[0]
    contrasted = cw.cam(digits_model, x, "features.conv3", 2, method, raw=True, contrast=7)
    difference = cw.cam(digits_model, x, "features.conv3", 0, method, raw=True, output=lambda y: y[:, [2]] - y[:, [7]])
    torch.testing.assert_close(contrasted, difference, rtol=1e-5, atol=1e-6)
    assert not torch.equal(contrasted, cw.cam(digits_model, x, "features.conv3", 2, method, raw=True))


@pytest.mark.slow
def test_contrast_lights_the_object_of_the_target_rather_than_the_other(efficientnet, cat_and_coffee):
    """Chelsea on the left half, the espresso on the right: "coffee rather than cat" looks right, and back.
    Measured: 0.51 on the right against 0.008 on the left, and 0.54 on the left against 0.006 on the right."""
    coffee_left, coffee_right = halves(cw.grad_cam(efficientnet, cat_and_coffee, "_conv_head", ESPRESSO, contrast=EGYPTIAN_CAT))
    cat_left, cat_right = halves(cw.grad_cam(efficientnet, cat_and_coffee, "_conv_head", EGYPTIAN_CAT, contrast=ESPRESSO))
    assert coffee_right > 10 * coffee_left
    assert cat_left > 10 * cat_right
    # Against the other class, the evidence the plain map finds on the other object fades.
    plain_coffee_left, _ = halves(cw.grad_cam(efficientnet, cat_and_coffee, "_conv_head", ESPRESSO))
    _, plain_cat_right = halves(cw.grad_cam(efficientnet, cat_and_coffee, "_conv_head", EGYPTIAN_CAT))
    assert coffee_left < plain_coffee_left / 4 and cat_right < plain_cat_right / 4


@pytest.mark.parametrize(
    "contrast, error, message",
    [
        (10, ValueError, r"contrast: class index 10 is out of range; the model has classes 0\.\.9"),
        (3, ValueError, "contrast: class 3 is the target itself"),
        (1.0, TypeError, "contrast: expected an int, got float"),
    ],
)
def test_bad_contrast(digits_model, digit, contrast, error, message):
    with pytest.raises(error, match=message):
        cw.cam(digits_model, digit[0], "features.conv3", 3, contrast=contrast)


def test_eigen_cam_refuses_a_contrast(digits_model, digit):
    with pytest.raises(ValueError, match="contrast: eigen-cam is the same map for every class"):
        cw.cam(digits_model, digit[0], "features.conv3", 3, "eigen-cam", contrast=1)


def test_unknown_method_lists_the_methods(digits_model, digit):
    with pytest.raises(ValueError, match="method: expected one of grad-cam, grad-cam\\+\\+, .*eigen-cam; got 'gradcam'"):
        cw.cam(digits_model, digit[0], "features.conv3", 3, "gradcam")


def test_layer_without_spatial_maps_names_the_method(digits_model, digit):
    with pytest.raises(ValueError, match=r"layer: Score-CAM needs a layer with spatial maps .*'embedding.fc' outputs \(1, 64\)"):
        cw.cam(digits_model, digit[0], "embedding.fc", 3, "score-cam")


def test_bad_batch_size(digits_model, digit):
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got 0"):
        cw.cam(digits_model, digit[0], "features.conv3", 3, "score-cam", batch_size=0)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_target_is_checked_by_every_method(method, digits_model, digit):
    with pytest.raises(ValueError, match="target: class index 10 is out of range"):
        cw.cam(digits_model, digit[0], "features.conv3", 10, method)


def test_score_cam_batches_and_reports_progress(digits_model, digit):
    fractions = []
    one_by_one = cw.cam(digits_model, digit[0], "features.conv3", 3, "score-cam", raw=True, batch_size=1)
    batched = cw.cam(
        digits_model, digit[0], "features.conv3", 3, "score-cam", raw=True, batch_size=24, checkpoint=fractions.append
    )
    torch.testing.assert_close(batched, one_by_one)
    # conv3 has 64 channels: batches start at 0, 24 and 48 of them.
    assert fractions == [0.0, 24 / 64, 48 / 64]


def test_a_raising_checkpoint_stops_score_cam(digits_model, digit):
    def stop(fraction):
        if fraction > 0:
            raise KeyboardInterrupt

    state = ModelState(digits_model)
    with pytest.raises(KeyboardInterrupt):
        cw.cam(digits_model, digit[0], "features.conv3", 3, "score-cam", batch_size=8, checkpoint=stop)
    state.assert_unchanged()


@pytest.fixture
def user_model():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    return used_model(net)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_the_model_is_left_as_it_was(method, user_model, small_image):
    state = ModelState(user_model)
    contrast = None if method == "eigen-cam" else 1
    cw.cam(user_model, small_image[:, :16, :16], "3", 2, method, contrast=contrast)
    state.assert_unchanged()
    with pytest.raises(ValueError, match="target"):
        cw.cam(user_model, small_image[:, :16, :16], "3", 7, method)
    state.assert_unchanged()


@pytest.mark.parametrize("method", ["grad-cam", "hires-cam", "eigen-cam"])
def test_a_map_of_one_place_is_zero_everywhere_not_stripes_of_rounding(method, small_image):
    """A layer after global pooling has 1 x 1 maps: resized bilinearly, the map is one value up to the last
    bit of a float, which min-max scaling used to stretch into stripes from 0 to 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[4].weight.abs_()  # a positive score's gradient: Grad-CAM's one value is positive, not cut by its ReLU
    assert float(cw.cam(model, small_image, "2", 0, "grad-cam", raw=True)) > 0
    assert not cw.cam(model, small_image, "2", 0, method).any()


def test_without_the_cut_the_map_is_the_hooked_passs_up_to_rounding(efficientnet, monkeypatch):
    """cut=False takes the activations with a hook on the replica: the same map as through the fast copy
    (BatchNorm folded there), and no cut is looked for."""
    _, preprocess, _ = cw.demo.imagenet_model()
    x = preprocess(cw.demo.photos()["chelsea"])[0]
    module = importlib.import_module("cnnviz_widgets.methods.grad_cam")
    cuts = []
    monkeypatch.setattr(module, "layer_cut", lambda *arguments: cuts.append(arguments))
    hooked = cw.cam(efficientnet, x, "_conv_head", EGYPTIAN_CAT, cut=False)
    assert cuts == []
    monkeypatch.undo()
    torch.testing.assert_close(hooked, cw.cam(efficientnet, x, "_conv_head", EGYPTIAN_CAT), rtol=0, atol=1e-4)
    with pytest.raises(TypeError, match="cut: expected True or False, got 'no'"):
        cw.cam(efficientnet, x, "_conv_head", EGYPTIAN_CAT, cut="no")
