from __future__ import annotations

import pytest
import torch
from captum.attr import Occlusion

import cnnviz_widgets as cw
from cnnviz_widgets.methods.occlusion import refinement_levels, spread_over_windows, window_boxes
from method_helpers import EGYPTIAN_CAT, ESPRESSO, assert_close_relative, halves


def captum_occlusion(model, x, target, window, stride, baseline):
    channels = x.shape[0]
    attribution = Occlusion(lambda batch: torch.softmax(model(batch), dim=1)).attribute(
        x.unsqueeze(0),
        sliding_window_shapes=(channels, *window),
        strides=(channels, *stride),
        target=target,
        baselines=baseline,
        perturbations_per_eval=64,
    )[0]
    assert torch.equal(attribution[0], attribution[-1]), "Captum's map is the same on every channel"
    return attribution[0]


@pytest.mark.parametrize(
    "window, stride",
    [
        (16, 8),  # positions fall exactly on the far edge
        ((20, 12), (7, 5)),  # the last window hangs over the edge and is cut
        (64, 1),  # the window covers the whole image: one position
    ],
)
def test_attribution_equals_captum_on_softmax(resnet18, small_image, window, stride):
    pair = lambda value: value if isinstance(value, tuple) else (value, value)
    result = cw.occlusion(resnet18, small_image, 3, window=window, stride=stride)
    expected = captum_occlusion(resnet18, small_image, 3, pair(window), pair(stride), 0.0)
    assert_close_relative(result.attribution, expected)


def test_tensor_baselines_equal_captum(digits_model, digit):
    x = digit[0]
    mean_per_channel = x.mean(dim=(1, 2), keepdim=True)
    blurred = torch.nn.functional.avg_pool2d(x.unsqueeze(0), 5, stride=1, padding=2)
    for baseline in (0.5, mean_per_channel, blurred):
        result = cw.occlusion(digits_model, x, digit[1], window=8, stride=4, baseline=baseline)
        expected = captum_occlusion(digits_model, x, digit[1], (8, 8), (4, 4), baseline)
        assert_close_relative(result.attribution, expected)


def test_scores_are_probabilities_with_the_patch_in_place(digits_model, digit):
    x, label = digit
    result = cw.occlusion(digits_model, x, label, window=(12, 8), stride=(10, 6), baseline=0.25)
    # rows: starts 0, 10, 20 (the last cut at 32); columns: starts 0, 6, ..., 24
    assert result.scores.shape == (3, 5)
    for row, col in [(0, 0), (1, 3), (2, 4)]:
        occluded = x.clone()
        top, left = row * 10, col * 6
        occluded[:, top : top + 12, left : left + 8] = 0.25
        with torch.no_grad():
            expected = torch.softmax(digits_model(occluded.unsqueeze(0)), dim=1)[0, label]
        torch.testing.assert_close(result.scores[row, col], expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        intact = torch.softmax(digits_model(x.unsqueeze(0)), dim=1)[0, label]
    assert result.probability == pytest.approx(float(intact), rel=1e-5)


def test_hand_computed_linear_model():
    # A linear softmax model on 4 pixels: occluding a pixel removes its weight from the logit.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]))
    x = torch.ones(1, 2, 2)
    result = cw.occlusion(model, x, 0, window=1, stride=1)
    logits = torch.tensor([[2.0 - w, 0.0] for w in (1.0, 2.0, 0.0, -1.0)])
    expected_scores = torch.softmax(logits, dim=1)[:, 0].reshape(2, 2)
    torch.testing.assert_close(result.scores, expected_scores)
    p = torch.softmax(torch.tensor([2.0, 0.0]), dim=0)[0]
    torch.testing.assert_close(result.attribution, p - expected_scores)


def test_batch_size_and_input_rank_do_not_change_the_result(resnet18, small_image):
    reference = cw.occlusion(resnet18, small_image, 1, window=24, stride=20)
    for batch_size in (1, 5, 1000):
        other = cw.occlusion(resnet18, small_image.unsqueeze(0), 1, window=24, stride=20, batch_size=batch_size)
        torch.testing.assert_close(other.scores, reference.scores, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(other.attribution, reference.attribution, rtol=1e-5, atol=1e-6)


def test_the_checkpoint_is_called_before_each_batch(digits_model, digit):
    fractions = []
    result = cw.occlusion(digits_model, digit[0], 0, window=8, stride=8, batch_size=6, checkpoint=fractions.append)
    assert fractions == [0.0, 6 / 16, 12 / 16]
    assert result.scores.shape == (4, 4)


def test_refinement_levels_go_coarse_to_fine_and_take_each_place_once():
    levels = refinement_levels(7, 7)
    # 7 places per side: every 2nd row and column leaves 4 of them, the most the first level takes.
    assert levels[0] == [row * 7 + col for row in (0, 2, 4, 6) for col in (0, 2, 4, 6)]
    assert len(levels) == 2 and sorted(levels[0] + levels[1]) == list(range(49))
    assert refinement_levels(3, 4) == [list(range(12))]
    wide = refinement_levels(2, 9)
    assert wide[0] == [0, 4, 8] and sorted(sum(wide, [])) == list(range(18))


def test_each_partial_map_holds_the_computed_scores_and_their_nearest_copies(digits_model, digit):
    x, label = digit
    partials = []

    def checkpoint(fraction, partial=None):
        if partial is not None:
            partials.append((fraction, partial))

    result = cw.occlusion(digits_model, x, label, window=8, stride=2, baseline=0.25, checkpoint=checkpoint)
    whole = cw.occlusion(digits_model, x, label, window=8, stride=2, baseline=0.25, incremental=False)
    torch.testing.assert_close(result.scores, whole.scores, rtol=0, atol=1e-6)
    # 13×13 places: levels every 4th place (4×4), every 2nd (7×7), then all.
    assert [round(fraction * 169) for fraction, _ in partials] == [16, 49]
    for (_, partial), step in zip(partials, (4, 2)):
        lattice = torch.arange(13) // step * step
        torch.testing.assert_close(partial.scores, whole.scores[lattice][:, lattice], rtol=0, atol=1e-6)
        expected = spread_over_windows(
            partial.probability - partial.scores.flatten(), window_boxes(32, 32, (8, 8), (2, 2))[0], (32, 32)
        )
        torch.testing.assert_close(partial.attribution, expected)


def test_results_are_detached_on_cpu(digits_model, digit):
    result = cw.occlusion(digits_model, digit[0], 0, window=16, stride=16)
    for tensor in (result.scores, result.attribution):
        assert tensor.device.type == "cpu" and not tensor.requires_grad
    assert result.attribution.shape == (32, 32)


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (dict(window=0), ValueError, "window: expected sizes of at least 1 pixel, got 0"),
        (dict(window=(8, 40)), ValueError, r"window: \(8, 40\) is larger than the image \(32 x 32"),
        (dict(window=(8, 8, 8)), ValueError, "window: expected an int or an .h, w. pair, got 3 values"),
        (dict(window=8.5), TypeError, "window: expected an int or an .h, w. pair of ints, got 8.5"),
        (dict(stride=0), ValueError, "stride: expected sizes of at least 1 pixel, got 0"),
        (dict(window=4, stride=6), ValueError, "stride: 6 is longer than the window 4"),
        (dict(stride="2"), TypeError, "stride: expected an int or an .h, w. pair of ints, got '2'"),
        (dict(baseline=torch.zeros(2, 32, 32)), ValueError, r"baseline: shape \(2, 32, 32\) does not broadcast"),
        (dict(baseline=float("nan")), ValueError, "baseline: expected a finite number"),
        (dict(baseline="grey"), ValueError, r"baseline: expected a number, a tensor or one of \('mean', 'blurred'\), got 'grey'"),
        (dict(batch_size=0), ValueError, "batch_size: expected a positive int, got 0"),
    ],
)
def test_bad_arguments(digits_model, digit, arguments, error, message):
    with pytest.raises(error, match=message):
        cw.occlusion(digits_model, digit[0], 0, **arguments)


def test_each_class_lights_its_own_object(efficientnet, cat_and_coffee):
    """A patch on the cat lowers the cat's probability, one on the cup the espresso's. (A patch on the
    other object raises it: the two classes compete in the softmax, so compare the positive parts.)"""
    cat = cw.occlusion(efficientnet, cat_and_coffee, EGYPTIAN_CAT, window=56, stride=56)
    cup = cw.occlusion(efficientnet, cat_and_coffee, ESPRESSO, window=56, stride=56)
    assert cat.scores.shape == (4, 4)
    cat_left, cat_right = halves(cat.attribution.clamp(min=0))
    cup_left, cup_right = halves(cup.attribution.clamp(min=0))
    assert cat_left > 2 * cat_right
    assert cup_right > 2 * cup_left
