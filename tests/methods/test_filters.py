from __future__ import annotations

import pytest
import torch

import cnnviz_widgets as cw
from cnnviz_widgets.probe import probe

DEMO_NORMALIZE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


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
