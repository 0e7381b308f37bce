"""Cascading randomisation: the cascade's steps, its scores against scipy and scikit-image, and the paper's finding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.methods.sanity import DEPENDS_BELOW, SanityResult, rank_correlation, reinitialise, sanity_verdict, ssim
from method_helpers import EGYPTIAN_CAT
from tests.model_state import ModelState, used_model


@pytest.fixture(scope="module")
def chelsea():
    _, preprocess, _ = cw.demo.imagenet_model()
    return preprocess(cw.demo.photos()["chelsea"])[0]


TOP_OF_THE_CASCADE = ["_fc", "_bn1", "_conv_head"]


@pytest.fixture(scope="module")
def top_of_the_cascade(efficientnet, chelsea):
    """Grad-CAM and guided backprop on the demo model and chelsea, after each of the three top steps."""
    return {
        method: cw.sanity_check(efficientnet, chelsea, EGYPTIAN_CAT, method, max_steps=3)
        for method in ("grad-cam", "guided-backprop")
    }


@pytest.mark.slow
def test_grad_cam_changes_with_the_weights_guided_backprop_does_not(top_of_the_cascade):
    """Adebayo et al.'s finding: guided backprop still draws the same picture once the classifier and the last
    conv layer are random; Grad-CAM does not. Measured: Grad-CAM's rank correlation after `_conv_head` 0.03
    (-0.54 and -0.56 after `_fc` and `_bn1`), guided backprop's 0.996 to 0.998."""
    grad_cam, guided = top_of_the_cascade["grad-cam"], top_of_the_cascade["guided-backprop"]
    assert grad_cam.layers == guided.layers == TOP_OF_THE_CASCADE
    assert grad_cam.rank_correlations[-1] < 0.5
    assert (grad_cam.rank_correlations < 0.5).all()
    assert (guided.rank_correlations > 0.98).all()
    assert (guided.ssim > 0.95).all()
    assert (grad_cam.ssim < guided.ssim).all()


@pytest.mark.slow
def test_the_original_map_is_the_methods_own(efficientnet, chelsea, top_of_the_cascade):
    result = top_of_the_cascade["grad-cam"]
    # Equal up to rounding: the first calls try the fast copy's memory formats and thread counts in turn.
    torch.testing.assert_close(result.original, cw.grad_cam(efficientnet, chelsea, "_conv_head", EGYPTIAN_CAT), rtol=1e-5, atol=1e-6)
    assert result.maps.shape == (3, 224, 224)
    assert result.rank_correlations.shape == result.ssim.shape == (3,)


@pytest.mark.slow
def test_the_model_and_its_replica_keep_their_weights(efficientnet, chelsea, top_of_the_cascade):
    """The cascade randomised a copy: the user's model and what later calls compute on are intact."""
    state = ModelState(efficientnet)
    again = cw.sanity_check(efficientnet, chelsea, EGYPTIAN_CAT, "grad-cam", max_steps=1)
    state.assert_unchanged()
    torch.testing.assert_close(again.original, top_of_the_cascade["grad-cam"].original, rtol=1e-5, atol=1e-6)
    # The same seed re-initialises the same way.
    assert torch.equal(again.maps[0], top_of_the_cascade["grad-cam"].maps[0])


class Stack(nn.Module):
    """Two blocks and a head; `unused` is never called and `scale` is a parameter of the root itself."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.unused = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.head(self.block2(self.block1(x)).mean(dim=(2, 3))) * self.scale


@pytest.fixture
def stack_image():
    return torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(5))


def test_default_cascade_goes_from_the_logits_down(stack_image):
    result = cw.sanity_check(Stack(), stack_image, 1, "saliency")
    # Called modules that own parameters, from the last called to the first; the root's own `scale` is no
    # layer the forward calls.
    assert result.layers == ["head", "block2.0", "block1.1", "block1.0"]
    assert result.maps.shape == (4, 16, 16)
    assert not torch.equal(result.maps[0], result.original)


def test_layers_and_max_steps_choose_the_steps(stack_image):
    model = Stack()
    assert cw.sanity_check(model, stack_image, 1, "grad-cam", layer="block2.0", max_steps=2).layers == ["head", "block2.0"]
    by_blocks = cw.sanity_check(model, stack_image, 1, "saliency", layers=["head", model.block2, "block1"])
    assert by_blocks.layers == ["head", "block2", "block1"]
    assert cw.sanity_check(model, stack_image, 1, "saliency", layers=["block1", "head"], max_steps=1).layers == ["block1"]


def test_cam_methods_default_to_the_last_conv_layer(stack_image):
    model = Stack()
    result = cw.sanity_check(model, stack_image, 1, "grad-cam", max_steps=1)
    torch.testing.assert_close(result.original, cw.grad_cam(model, stack_image, "block2.0", 1), rtol=1e-5, atol=1e-6)


def test_gradient_maps_are_compared_by_their_magnitude(stack_image):
    """As the Compare view shows them: summed absolute values divided by their largest, zero staying zero."""
    model = Stack()
    result = cw.sanity_check(model, stack_image, 1, "smoothgrad", options={"samples": 3}, max_steps=1)
    gradient = cw.gradients(model, stack_image, 1, "smoothgrad", samples=3).abs().sum(dim=0)
    torch.testing.assert_close(result.original, gradient / gradient.max())
    assert float(result.original.min()) > 0


def test_seeded_and_torchs_generator_left_alone(stack_image):
    model = Stack()
    state = torch.get_rng_state()
    first = cw.sanity_check(model, stack_image, 1, "saliency", max_steps=2, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(cw.sanity_check(model, stack_image, 1, "saliency", max_steps=2, seed=3).maps, first.maps)
    assert not torch.equal(cw.sanity_check(model, stack_image, 1, "saliency", max_steps=2, seed=4).maps, first.maps)


def test_modules_without_reset_parameters_are_redrawn_at_their_scale(stack_image):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.gain = Gain(4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.gain(self.conv(x)).mean(dim=(2, 3)))

    result = cw.sanity_check(Scaled(), stack_image, 0, "saliency", layers=["gain"])
    assert result.layers == ["gain"]
    assert not torch.equal(result.maps[0], result.original)
    gain = Gain(10_000)
    before = gain.weight.detach().clone()
    reinitialise([gain], seed=0)
    after = gain.weight.detach()
    assert not torch.equal(after, before)
    assert float(after.mean()) == pytest.approx(float(before.mean()), abs=0.02)
    assert float(after.std()) == pytest.approx(float(before.std()), rel=0.05)


class Gain(nn.Module):
    """A module with a parameter of its own and no ``reset_parameters``."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 2.0, channels).reshape(channels, 1, 1))

    def forward(self, x):
        return x * self.weight


def test_checkpoint_before_each_step(stack_image):
    """The original map and the four steps are five equal parts of the work; each part begins with a checkpoint."""
    fractions = []
    cw.sanity_check(Stack(), stack_image, 1, "saliency", checkpoint=fractions.append)
    assert sorted(set(fractions)) == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert fractions == sorted(fractions)


def test_a_slow_map_is_stopped_inside_its_step(stack_image):
    """SmoothGrad of 8 samples in batches of 2 is four passes per map: the checkpoint runs between them too,
    so a Stop does not wait for the step's map to end."""
    fractions = []
    options = {"samples": 8, "batch_size": 2}
    cw.sanity_check(Stack(), stack_image, 1, "smoothgrad", options=options, max_steps=2, checkpoint=fractions.append)
    # Three parts (the original map, two steps), each of four passes at a quarter of its third.
    passes = {round(part / 3 + batch / 12, 9) for part in range(3) for batch in range(4)}
    assert {round(fraction, 9) for fraction in fractions} == passes
    assert fractions == sorted(fractions)

    passes_run = []

    def stop(fraction):
        passes_run.append(fraction)
        if fraction > 1 / 3 + 1 / 12 + 1e-9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cw.sanity_check(Stack(), stack_image, 1, "smoothgrad", options=options, max_steps=2, checkpoint=stop)
    assert passes_run[-1] == pytest.approx(1 / 3 + 2 / 12), "stopped at the third pass of the first step"


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"method": "lime"}, ValueError, "method: expected one of grad-cam, .*, guided-backprop; got 'lime'"),
        ({"method": "saliency", "layer": "block2.0"}, ValueError, "layer: saliency takes no layer"),
        ({"layer": "block9"}, ValueError, "layer: no submodule named 'block9'"),
        ({"layers": ["block1.2"]}, ValueError, "layers: 'block1.2' has no parameters to randomise"),
        ({"layers": "head"}, TypeError, "layers: expected a list of modules or dotted names, got str"),
        ({"layers": []}, ValueError, "layers: expected at least one layer"),
        ({"layers": ["haed"]}, ValueError, "layers: no submodule named 'haed'"),
        ({"max_steps": 0}, ValueError, "max_steps: expected a positive int, got 0"),
        ({"options": {"samples": 3}}, ValueError, "options: grad-cam takes no 'samples'; it takes contrast, batch_size"),
        ({"options": [1]}, TypeError, "options: expected a dict"),
        ({"seed": "a"}, TypeError, "seed: expected an int"),
        ({"target": 3}, ValueError, "target: class index 3 is out of range"),
    ],
)
def test_bad_arguments(stack_image, arguments, error, message):
    arguments = {"target": 1, **arguments}
    target = arguments.pop("target")
    with pytest.raises(error, match=message):
        cw.sanity_check(Stack(), stack_image, target, **arguments)


def test_a_model_without_parameters_has_nothing_to_randomise(stack_image):
    model = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
    with pytest.raises(ValueError, match="model: Sequential calls no layer with parameters"):
        cw.sanity_check(model, stack_image, 1, "saliency")


@pytest.mark.parametrize("method", ["grad-cam", "integrated-gradients", "guided-backprop"])
def test_the_model_is_left_as_it_was(method, stack_image):
    model = used_model(Stack())
    state = ModelState(model)
    options = {"steps": 3} if method == "integrated-gradients" else None
    cw.sanity_check(model, stack_image, 1, method, options=options)
    state.assert_unchanged()

    def stop(fraction):
        if fraction > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cw.sanity_check(model, stack_image, 1, method, checkpoint=stop, options=options)
    state.assert_unchanged()


def test_rank_correlation_equals_scipys_with_ties():
    generator = np.random.default_rng(0)
    a = generator.integers(0, 5, size=(12, 9)).astype(np.float32)
    b = a + generator.normal(0, 2, size=a.shape).astype(np.float32)
    b[b < 1] = 0  # a ReLU's flat zeros
    expected = spearmanr(a.ravel(), b.ravel()).statistic
    assert rank_correlation(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(rank_correlation(torch.zeros(4, 4), torch.from_numpy(a[:4, :4])))


@pytest.mark.parametrize("size", [(40, 33), (11, 11)])
def test_ssim_equals_scikit_images_with_wangs_gaussian_window(size):
    generator = np.random.default_rng(1)
    a = generator.random(size)
    b = np.clip(a + generator.normal(0, 0.2, size), 0, 1)
    expected = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, abs=1e-10)
    assert ssim(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(1.0)


def cascade(original: torch.Tensor, correlations: list[float]) -> SanityResult:
    """A result built by hand: the verdict reads only the original map and the rank correlations."""
    steps = len(correlations)
    return SanityResult(
        layers=[f"layer{step}" for step in range(steps)],
        original=original,
        maps=torch.zeros(steps, *original.shape),
        rank_correlations=torch.tensor(correlations, dtype=torch.float64),
        ssim=torch.ones(steps, dtype=torch.float64),
    )


STRUCTURED = torch.linspace(0, 1, 16).reshape(4, 4)
NAN = math.nan


@pytest.mark.parametrize(
    "correlations, outcome, statistic, read",
    [
        ([0.9, 0.3, 0.95, 0.99], "depends", 0.3, 2),  # the lowest of the first half
        ([0.99, 0.98, 0.1, -0.5], "independent", 0.98, 2),  # the bottom of the cascade is not read
        ([0.5, 0.7, 0.7], "independent", 0.5, 1),  # at the threshold is not below it
        ([0.49], "depends", 0.49, 1),  # a single step is read
        ([NAN, 0.2, 0.9, 0.9], "depends", 0.2, 2),  # a flat map beside a clear drop
        ([NAN, 0.9, 0.9, 0.9], "undetermined", 0.9, 2),  # a flat map, and the other map read stays
        ([NAN, NAN, 0.1, 0.1], "undetermined", NAN, 2),  # nothing to read in the half read
    ],
)
def test_the_verdict_reads_the_top_half_of_the_cascade(correlations, outcome, statistic, read):
    verdict = sanity_verdict(cascade(STRUCTURED, correlations))
    assert (verdict.outcome, verdict.steps_read) == (outcome, read)
    assert verdict.threshold == DEPENDS_BELOW == 0.5
    assert verdict.statistic == pytest.approx(statistic, nan_ok=True)
    assert verdict.reason


def test_a_constant_original_map_cannot_be_judged():
    """Every rank correlation with a constant map is NaN; read as 0 it used to say "depends on what the model
    learned". Even finite correlations (a result built by hand) do not make a constant original readable."""
    for correlations in ([NAN, NAN], [0.1, 0.1]):
        verdict = sanity_verdict(cascade(torch.zeros(4, 4), correlations))
        assert verdict.outcome == "undetermined"
        assert math.isnan(verdict.statistic)
        assert "the original map is 0 everywhere" in verdict.reason


def test_a_cascade_without_steps_cannot_be_judged():
    verdict = sanity_verdict(cascade(STRUCTURED, []))
    assert (verdict.outcome, verdict.steps_read) == ("undetermined", 0)
    assert "no step" in verdict.reason


def test_bad_verdict_arguments():
    with pytest.raises(TypeError, match="result: expected the SanityResult of sanity_check, got dict"):
        sanity_verdict({})
    with pytest.raises(ValueError, match="threshold: expected a rank correlation between -1 and 1, got 2"):
        sanity_verdict(cascade(STRUCTURED, [0.1]), threshold=2)


@pytest.mark.slow
def test_the_papers_finding_as_verdicts(top_of_the_cascade):
    """On the demo model and the cat (3 steps: the first is read): Grad-CAM depends on the weights (its rank
    correlation falls to -0.54 once the classifier is random), guided backprop does not (0.996)."""
    grad_cam = sanity_verdict(top_of_the_cascade["grad-cam"])
    guided = sanity_verdict(top_of_the_cascade["guided-backprop"])
    assert (grad_cam.outcome, guided.outcome) == ("depends", "independent")
    assert grad_cam.steps_read == guided.steps_read == 1
    assert grad_cam.statistic == float(top_of_the_cascade["grad-cam"].rank_correlations[0]) < 0.5
    assert guided.statistic == float(top_of_the_cascade["guided-backprop"].rank_correlations[0]) > 0.98


def test_a_cam_at_a_layer_of_one_place_cannot_be_judged(small_image):
    """A layer after global pooling: its Grad-CAM is one value, the same map everywhere, for any weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    result = cw.sanity_check(model, small_image, 0, "grad-cam", layer="2")
    assert not result.original.any()
    assert sanity_verdict(result).outcome == "undetermined"
