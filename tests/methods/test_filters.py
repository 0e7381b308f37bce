from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.methods.filters import map_weights, receptive_field
from cnnviz_widgets.probe import probe
from tests.model_state import ModelState

DEMO_NORMALIZE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# What cw.demo.digits_preprocess does: ink (dark on the displayed picture) is 1 for the network.
DIGITS_NORMALIZE = ((1.0,), (-1.0,))


def test_weights_equal_the_layer_weights_as_a_detached_copy(vgg11_bn):
    weights = cw.filter_weights(vgg11_bn, "features.0")
    assert weights.shape == (64, 3, 3, 3)
    assert torch.equal(weights, vgg11_bn.features[0].weight)
    assert not weights.requires_grad
    weights.zero_()
    assert vgg11_bn.features[0].weight.abs().sum() > 0


def test_weights_of_a_conv_subclass_given_as_module(efficientnet):
    head = efficientnet._conv_head
    assert torch.equal(cw.filter_weights(efficientnet, head), head.weight)


def test_weights_of_a_layer_without_conv_weights(resnet18):
    with pytest.raises(ValueError, match=r"layer: 'bn1' \(BatchNorm2d\) has no 2-D convolution weights"):
        cw.filter_weights(resnet18, "bn1")


def test_patterns_shape_range_and_determinism(resnet18):
    first = cw.filter_patterns(resnet18, "layer1.0.conv1", [3, 5, 7], size=40, steps=4)
    assert first.shape == (3, 3, 40, 40)
    assert 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, cw.filter_patterns(resnet18, resnet18.layer1[0].conv1, [3, 5, 7], size=40, steps=4))
    assert not torch.equal(first, cw.filter_patterns(resnet18, "layer1.0.conv1", [3, 5, 7], size=40, steps=4, seed=1))


def test_one_filter_index_and_one_input_channel(digits_model):
    patterns = cw.filter_patterns(digits_model, "features.conv2", 4, size=32, steps=3, normalize=((0.0,), (1.0,)))
    assert patterns.shape == (1, 1, 32, 32)


def test_starts_from_grey_with_small_noise(resnet18):
    seen = {}
    cw.filter_patterns(
        resnet18, "layer1.0.conv1", [0, 1], size=48, steps=1, checkpoint=lambda fraction, pictures: seen.update({fraction: pictures})
    )
    # After a single step of at most the learning rate per spectral coefficient, still close to grey.
    assert (seen[1.0] - 0.5).abs().mean() < 0.1


def test_the_checkpoint_sees_the_patterns_emerge(resnet18):
    calls = []
    final = cw.filter_patterns(
        resnet18,
        "layer2.0.conv1",
        [0, 1],
        size=32,
        steps=7,
        checkpoint=lambda fraction, images=None: images is not None and calls.append((round(fraction * 7), images)),
        preview_every=3,
    )
    assert [step for step, _ in calls] == [3, 6, 7]
    assert all(images.shape == (2, 3, 32, 32) for _, images in calls)
    assert torch.equal(calls[-1][1], final)


def test_layer_without_out_channels_counts_its_output(resnet18):
    patterns = cw.filter_patterns(resnet18, "layer1.0.relu", [63], size=32, steps=2)
    assert patterns.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="filters: index 64 is out of range; the layer has filters 0..63"):
        cw.filter_patterns(resnet18, "layer1.0.relu", [64], size=32, steps=2)


@pytest.mark.parametrize(
    "filters, error, message",
    [
        (64, ValueError, "filters: index 64 is out of range; the layer has filters 0..63"),
        ([0, -1], ValueError, "filters: index -1 is out of range"),
        ([], ValueError, "filters: expected at least one filter index"),
        (1.5, TypeError, "filters: expected an int, got float 1.5"),
        (["a"], TypeError, "filters: expected an int, got str 'a'"),
    ],
)
def test_bad_filters(resnet18, filters, error, message):
    with pytest.raises(error, match=message):
        cw.filter_patterns(resnet18, "layer1.0.conv1", filters, size=32, steps=1)


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (dict(size=0), ValueError, "size: expected a positive int, got 0"),
        (dict(steps=2.0), TypeError, "steps: expected an int, got float"),
        (dict(normalize=((0.5,), (0.0,))), ValueError, "normalize: std must not be zero"),
        (dict(normalize=((0.5, 0.5), (0.5, 0.5))), ValueError, "normalize: mean has 2 values for a model reading 3"),
        (dict(normalize=0.5), TypeError, r"normalize: expected a \(mean, std\) pair"),
        (dict(normalize=("grey", 0.5)), TypeError, "normalize: mean must be a number or a sequence of numbers"),
    ],
)
def test_bad_pattern_arguments(resnet18, arguments, error, message):
    with pytest.raises(error, match=message):
        cw.filter_patterns(resnet18, "layer1.0.conv1", 0, **dict(dict(size=32, steps=1), **arguments))


def channel_means(model, layer, images):
    with probe(model, outputs=[(layer, dict(model.named_modules())[layer])]) as capture:
        capture.run(images)
    return capture.outputs[layer].flatten(2).mean(dim=2)


@pytest.mark.slow
def test_default_patterns_excite_their_filters_more_than_any_photo(efficientnet):
    """The issue's target: 8 patterns at 128 px with the default steps, each exciting its filter at least
    twice as much as the best of the demo photos does."""
    _, preprocess, _ = cw.demo.imagenet_model()
    photos = torch.cat([preprocess(photo) for photo in cw.demo.photos().values()])
    layer, filters = "_blocks.10._expand_conv", list(range(8))
    patterns = cw.filter_patterns(efficientnet, layer, filters, normalize=DEMO_NORMALIZE)
    assert patterns.shape == (8, 3, 128, 128)
    excited = channel_means(efficientnet, layer, (patterns - 0.5) / 0.5).diagonal()
    best_photo = channel_means(efficientnet, layer, photos)[:, filters].max(dim=0).values
    assert (excited > 0).all()
    assert (excited >= 2 * best_photo).all(), (excited, best_photo)


def test_patterns_for_units_of_a_linear_layer(digits_model):
    """Beyond conv filters: the 'filters' of a linear layer are its output units."""
    patterns = cw.filter_patterns(digits_model, "classifier", [3, 7], size=32, steps=20, normalize=((0.0,), (1.0,)))
    assert patterns.shape == (2, 1, 32, 32)
    with torch.no_grad():
        grey = digits_model(torch.full((1, 1, 32, 32), 0.5))[0]
        logits = digits_model(patterns)
    assert logits[0, 3] > grey[3] + 1 and logits[1, 7] > grey[7] + 1


def edge_detectors() -> nn.Sequential:
    """A first conv layer set by hand: filter 0 answers vertical edges, dark on the left and bright on the
    right (a Sobel kernel), filter 1 horizontal ones, dark above and bright below; both also add up the
    brightness of their window, as trained first layers do. Linear in the picture, so its map's mean
    is maximised by a flat bright picture."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([sobel, sobel.T]).unsqueeze(1) + 0.2)
    torch.manual_seed(0)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)).eval()


def middle(patterns):
    """The middle half of each picture (side and height), where a small-field pattern is drawn."""
    quarter = patterns.shape[-1] // 4
    return patterns[..., quarter:-quarter, quarter:-quarter]


def test_a_first_layer_edge_detector_draws_its_edge_not_a_flat_colour():
    patterns = cw.filter_patterns(edge_detectors(), "0", [0, 1], size=48, steps=32, normalize=((0.5,), (0.5,)))
    centre = middle(patterns)[:, 0]
    assert (centre.flatten(1).std(dim=1) > 0.1).all(), "the middle of the picture is one flat grey"
    # Orientation: the energy of the horizontal and of the vertical derivative.
    across = (centre[:, :, 1:] - centre[:, :, :-1]).pow(2).sum(dim=(1, 2))
    down = (centre[:, 1:, :] - centre[:, :-1, :]).pow(2).sum(dim=(1, 2))
    assert across[0] > 2 * down[0] and down[1] > 1.5 * across[1], (across, down)
    # Polarity: which side is brighter, from the first moments of the brightness.
    offsets = torch.arange(centre.shape[-1]) - (centre.shape[-1] - 1) / 2
    deviation = centre - centre.mean(dim=(1, 2), keepdim=True)
    rightwards = (deviation * offsets[None, None, :]).mean(dim=(1, 2))
    downwards = (deviation * offsets[None, :, None]).mean(dim=(1, 2))
    assert rightwards[0] > 3 * downwards[0].abs(), "filter 0's pattern is not brighter on the right"
    assert downwards[1] > 3 * rightwards[1].abs(), "filter 1's pattern is not brighter below"


def test_the_receptive_field_is_measured_through_the_layers():
    """Hand-computed fields: a 3x3 conv reads 3 px; the digits CNN's layout (conv, pool, conv, pool, conv)
    reads 3, then 3 + 1 = 4 after a 2x2 pooling, 4 + 2 * 2 = 8 after the next conv at stride 2, 10 after
    the second pooling and 10 + 2 * 4 = 18 after the last conv at stride 4."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(2)]
    stack = nn.Sequential(*layers, nn.Conv2d(4, 4, 3, padding=1))
    pictures = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert [receptive_field(stack[: depth + 1](pictures), pictures) for depth in (0, 1, 2, 3, 4)] == [3, 4, 8, 10, 18]


def test_small_fields_weigh_the_centre_and_wide_fields_the_whole_map(digits_model):
    pictures = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    conv1, conv3 = digits_model.features[:1], digits_model.features
    centre = map_weights(conv1(pictures), pictures)
    assert centre.shape == (64, 64) and torch.isclose(centre.sum(), torch.tensor(1.0))
    assert centre[31:33, 31:33].min() == centre.max() and centre[0, 0] < 1e-6 * centre.max()
    whole = map_weights(conv3(pictures), pictures)
    assert whole.shape == (16, 16) and torch.allclose(whole, torch.full((16, 16), 1 / 256))
    assert map_weights(torch.zeros(2, 10), pictures) is None


def test_first_layer_patterns_of_efficientnet_are_not_flat_squares(efficientnet):
    """The stem is linear in the picture: its map's mean was maximised by flat squares of one colour with
    blotched corners. Its middle must now hold a pattern: contrast, and more than one colour. Filters 0-7
    all have weights (11, 16, 28 and 31 are all zeros, and rightly stay grey)."""
    patterns = cw.filter_patterns(efficientnet, "_conv_stem", list(range(8)), size=64, steps=32, normalize=DEMO_NORMALIZE)
    centre = middle(patterns)
    contrast = centre.flatten(2).std(dim=2).max(dim=1).values
    assert (contrast > 0.1).all(), contrast
    levels = (centre * 3.999).long()
    colours = levels[:, 0] * 16 + levels[:, 1] * 4 + levels[:, 2]
    distinct = [int((torch.bincount(c.flatten(), minlength=64) >= 0.03 * c.numel()).sum()) for c in colours]
    assert min(distinct) >= 2, distinct


@pytest.mark.parametrize("layer", ["features.conv1", "features.conv2", "classifier"])
def test_digits_patterns_are_not_pinned_to_black_and_white(digits_model, layer):
    """With the digits CNN's own normalisation. Before: 6-8% of conv1's pixels within 0.02 of black or
    white, up to 15% of a classifier pattern's."""
    patterns = cw.filter_patterns(digits_model, layer, list(range(8)), size=64, steps=48, normalize=DIGITS_NORMALIZE)
    pinned = ((patterns < 0.02) | (patterns > 0.98)).flatten(1).float().mean(dim=1)
    assert (pinned < 0.02).all(), pinned
    assert (patterns.flatten(1).std(dim=1) > 0.05).all(), "a flat pattern is not saturated either"


def test_the_checkpoint_runs_after_every_step(resnet18):
    """A Stop waits for one step of the optimisation, not for the next preview of the patterns."""
    calls = []
    cw.filter_patterns(
        resnet18,
        "layer2.0.conv1",
        [0],
        size=32,
        steps=5,
        preview_every=5,
        checkpoint=lambda fraction, pictures=None: calls.append((round(fraction * 5), pictures is not None)),
    )
    assert calls == [(1, False), (2, False), (3, False), (4, False), (5, True)]


def test_a_transformer_blocks_filter_is_one_of_its_token_channels():
    """The digits ViT's second block: 48 channels of 8 x 8 patch tokens. Each pattern excites its channel, the
    mean over the patch tokens read by a plain hook, far more than the grey picture the optimisation starts from."""
    vit = cw.demo.digits_vit()
    state = ModelState(vit)
    block = "encoder.layers.encoder_layer_1"
    patterns = cw.filter_patterns(vit, block, [0, 5], steps=64)
    assert patterns.shape == (2, 3, 32, 32)
    seen = {}
    hook = vit.get_submodule(block).register_forward_hook(lambda module, args, output: seen.__setitem__("tokens", output))
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    try:
        with torch.no_grad():
            vit((torch.cat([patterns, torch.full((1, 3, 32, 32), 0.5)]) - mean) / std)
    finally:
        hook.remove()
    patches = seen["tokens"][:, 1:]
    for row, channel in enumerate((0, 5)):
        assert patches[row, :, channel].mean() > 2 * patches[2, :, channel].mean().abs() + 1.0
    state.assert_unchanged()
