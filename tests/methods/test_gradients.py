"""Saliency, SmoothGrad and integrated gradients against Captum, and their arguments."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.methods.gradients import gauss_legendre
from method_helpers import assert_close_relative
from tests.model_state import ModelState, used_model


def captum_saliency(model, x, target, absolute=True):
    return Saliency(model).attribute(x.unsqueeze(0).clone().requires_grad_(True), target=target, abs=absolute)[0]


def captum_smoothgrad(model, x, target, noise, samples, seed, absolute=True):
    """Captum draws its noise from torch's global generator: seeded like ours, it draws the same numbers."""
    std = noise * float(x.max() - x.min())
    torch.manual_seed(seed)
    return NoiseTunnel(Saliency(model)).attribute(
        x.unsqueeze(0).clone().requires_grad_(True),
        nt_type="smoothgrad",
        nt_samples=samples,
        stdevs=std,
        target=target,
        abs=absolute,
    )[0]


def captum_integrated_gradients(model, x, target, baseline, steps):
    return IntegratedGradients(model).attribute(
        x.unsqueeze(0), baselines=baseline, target=target, n_steps=steps, method="gausslegendre"
    )[0]


@pytest.fixture(scope="module")
def rng_state():
    """Captum's SmoothGrad reseeds torch's global generator: give it back to the other tests as it was."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


@pytest.mark.parametrize("model_name", ["resnet18", "digits_model"])
@pytest.mark.parametrize("absolute", [True, False])
def test_saliency_equals_captum(model_name, absolute, request, small_image, digit):
    model = request.getfixturevalue(model_name)
    x = digit[0] if model_name == "digits_model" else small_image
    ours = cw.gradients(model, x, 3, absolute=absolute)
    assert_close_relative(ours, captum_saliency(model, x, 3, absolute))


def model_and_image(model_name, request):
    if model_name == "digits_model":
        return request.getfixturevalue("digits_model"), request.getfixturevalue("digit")[0]
    return request.getfixturevalue(model_name), request.getfixturevalue("small_image")


@pytest.mark.parametrize(
    "model_name, noise, samples, seed, absolute",
    [("digits_model", 0.15, 25, 0, True), ("resnet18", 0.3, 5, 5, True), ("digits_model", 0.1, 6, 1, False)],
)
def test_smoothgrad_equals_captum(model_name, noise, samples, seed, absolute, rng_state, request):
    model, x = model_and_image(model_name, request)
    ours = cw.gradients(model, x, 3, "smoothgrad", noise=noise, samples=samples, seed=seed, absolute=absolute, batch_size=4)
    assert_close_relative(ours, captum_smoothgrad(model, x, 3, noise, samples, seed, absolute))


@pytest.mark.parametrize("model_name, steps", [("digits_model", 50), ("resnet18", 7)])
def test_integrated_gradients_equal_captum(model_name, steps, request):
    model, x = model_and_image(model_name, request)
    ours = cw.gradients(model, x, 3, "integrated-gradients", steps=steps)
    assert_close_relative(ours, captum_integrated_gradients(model, x, 3, 0.0, steps))


def test_integrated_gradients_from_a_tensor_baseline(digits_model, digit):
    x, label = digit
    baseline = torch.full_like(x, -0.5)
    ours = cw.gradients(digits_model, x, label, "integrated-gradients", baseline=baseline, steps=20)
    reference = captum_integrated_gradients(digits_model, x, label, baseline.unsqueeze(0), 20)
    assert_close_relative(ours, reference)
    # Completeness: the attributions add up to the logit's change from the baseline, up to the quadrature.
    with torch.no_grad():
        change = digits_model(x[None])[0, label] - digits_model(baseline[None])[0, label]
    assert float(ours.sum()) == pytest.approx(float(change), rel=0.02)
    absolute = cw.gradients(digits_model, x, label, "integrated-gradients", baseline=baseline, steps=20, absolute=True)
    torch.testing.assert_close(absolute, ours.abs())


def test_gauss_legendre_integrates_polynomials_exactly():
    # n points integrate polynomials of degree up to 2n - 1: here x^5 over [0, 1] with 3 points.
    nodes, weights = gauss_legendre(3)
    assert float((weights * nodes**5).sum()) == pytest.approx(1 / 6, abs=1e-12)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)


def test_batches_give_the_same_result(resnet18, small_image):
    one_pass = cw.gradients(resnet18, small_image, 2, "smoothgrad", samples=6, batch_size=6)
    batched = cw.gradients(resnet18, small_image, 2, "smoothgrad", samples=6, batch_size=4)
    torch.testing.assert_close(batched, one_pass, rtol=1e-5, atol=1e-7)


def test_noise_is_seeded_and_leaves_torchs_generator_alone(digits_model, digit):
    x = digit[0]
    state = torch.get_rng_state()
    first = cw.gradients(digits_model, x, 1, "smoothgrad", samples=4, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(cw.gradients(digits_model, x, 1, "smoothgrad", samples=4, seed=3), first)
    assert not torch.equal(cw.gradients(digits_model, x, 1, "smoothgrad", samples=4, seed=4), first)
    # No noise: the mean of identical gradients is the saliency.
    noiseless = cw.gradients(digits_model, x, 1, "smoothgrad", noise=0.0, samples=3)
    torch.testing.assert_close(noiseless, cw.gradients(digits_model, x, 1))


def test_checkpoint_reports_each_batch_and_can_stop(digits_model, digit):
    fractions = []
    cw.gradients(digits_model, digit[0], 1, "integrated-gradients", steps=10, batch_size=4, checkpoint=fractions.append)
    assert fractions == [0.0, 0.4, 0.8]

    def stop(fraction):
        if fraction > 0:
            raise KeyboardInterrupt

    state = ModelState(digits_model)
    with pytest.raises(KeyboardInterrupt):
        cw.gradients(digits_model, digit[0], 1, "smoothgrad", samples=8, batch_size=2, checkpoint=stop)
    state.assert_unchanged()


def test_result_shape_detached_on_cpu(digits_model, digit):
    for method in ("saliency", "smoothgrad", "integrated-gradients"):
        result = cw.gradients(digits_model, digit[0], 1, method, samples=2, steps=2)
        assert result.shape == digit[0].shape
        assert not result.requires_grad and result.device.type == "cpu"


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"method": "gradcam"}, ValueError, "method: expected one of saliency, smoothgrad, integrated-gradients; got 'gradcam'"),
        ({"method": "smoothgrad", "noise": -0.1}, ValueError, "noise: expected a non-negative number"),
        ({"method": "smoothgrad", "samples": 0}, ValueError, "samples: expected a positive int, got 0"),
        ({"method": "smoothgrad", "seed": 1.5}, TypeError, "seed: expected an int, got float"),
        ({"method": "integrated-gradients", "steps": 0}, ValueError, "steps: expected a positive int, got 0"),
        ({"method": "integrated-gradients", "baseline": torch.zeros(3, 5, 5)}, ValueError, "baseline: shape"),
        ({"absolute": 1}, TypeError, "absolute: expected True, False or None"),
        ({"batch_size": 0}, ValueError, "batch_size: expected a positive int, got 0"),
        ({"target": 10}, ValueError, "target: class index 10 is out of range"),
    ],
)
def test_bad_arguments(digits_model, digit, arguments, error, message):
    arguments = {"target": 1, **arguments}
    target = arguments.pop("target")
    with pytest.raises(error, match=message):
        cw.gradients(digits_model, digit[0], target, **arguments)


@pytest.mark.parametrize("method", ["saliency", "smoothgrad", "integrated-gradients"])
def test_the_model_is_left_as_it_was(method, small_image):
    torch.manual_seed(0)
    model = used_model(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    )
    state = ModelState(model)
    x = small_image[:, :16, :16]
    cw.gradients(model, x, 2, method, samples=3, steps=3)
    state.assert_unchanged()
    with pytest.raises(ValueError, match="target"):
        cw.gradients(model, x, 7, method, samples=3, steps=3)
    state.assert_unchanged()
