"""Deletion and insertion curves: against a direct computation on a tiny model, pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.methods.occlusion import blur
from method_helpers import EGYPTIAN_CAT
from tests.model_state import ModelState, used_model

HEIGHT, WIDTH = 3, 3
# The order a map ranks the 9 pixels in (row-major indices), most salient first.
ORDER = [4, 0, 8, 2, 6, 1, 3, 5, 7]


def linear_model() -> nn.Module:
    """Two channels of 3 x 3 pixels -> 3 logits, every pixel weighing differently in each class."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * HEIGHT * WIDTH, 3))


def map_of(order) -> torch.Tensor:
    """A saliency map that ranks the pixels in ``order``."""
    saliency = torch.empty(HEIGHT * WIDTH)
    saliency[torch.tensor(order)] = torch.arange(len(order), 0, -1, dtype=torch.float32)
    return saliency.reshape(HEIGHT, WIDTH)


def direct_curves(model, x, order, baseline, steps, target):
    """Point k: the first ``k * 9 // steps`` pixels of ``order`` replaced (deletion) or put back (insertion)."""
    deletion, insertion = [], []
    for k in range(steps + 1):
        deleted, inserted = x.clone(), baseline.clone()
        for pixel in order[: k * HEIGHT * WIDTH // steps]:
            row, col = divmod(pixel, WIDTH)
            deleted[:, row, col] = baseline[:, row, col]
            inserted[:, row, col] = x[:, row, col]
        with torch.no_grad():
            deletion.append(float(torch.softmax(model(deleted[None]), dim=1)[0, target]))
            insertion.append(float(torch.softmax(model(inserted[None]), dim=1)[0, target]))
    return np.array(deletion), np.array(insertion)


@pytest.fixture
def x():
    return torch.randn(2, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("steps", [9, 4, 1])
def test_curves_equal_a_direct_computation(x, steps):
    model = linear_model()
    baseline = torch.full_like(x, 0.25)
    result = cw.deletion_insertion(model, x, 1, map_of(ORDER), steps=steps, baseline=0.25, batch_size=3)
    deletion, insertion = direct_curves(model, x, ORDER, baseline, steps, 1)
    np.testing.assert_allclose(result.deletion.numpy(), deletion, rtol=1e-6)
    np.testing.assert_allclose(result.insertion.numpy(), insertion, rtol=1e-6)
    grid = np.linspace(0, 1, steps + 1)
    assert result.deletion_auc == pytest.approx(np.trapezoid(deletion, grid), rel=1e-6)
    assert result.insertion_auc == pytest.approx(np.trapezoid(insertion, grid), rel=1e-6)


def test_equal_values_go_in_row_major_order(x):
    model = linear_model()
    # Pixels 1, 5 and 7 tie for first place, then 0 and 8; the rest tie last.
    saliency = torch.tensor([[2.0, 5.0, 0.0], [0.0, 0.0, 5.0], [0.0, 5.0, 2.0]])
    order = [1, 5, 7, 0, 8, 2, 3, 4, 6]
    result = cw.deletion_insertion(model, x, 0, saliency, steps=9, baseline=0)
    deletion, insertion = direct_curves(model, x, order, torch.zeros_like(x), 9, 0)
    np.testing.assert_allclose(result.deletion.numpy(), deletion, rtol=1e-6)
    np.testing.assert_allclose(result.insertion.numpy(), insertion, rtol=1e-6)


def test_an_attribution_per_channel_ranks_by_its_summed_magnitude(x):
    model = linear_model()
    attribution = torch.randn(2, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    by_channels = cw.deletion_insertion(model, x, 2, attribution, steps=9, baseline=0.0)
    by_map = cw.deletion_insertion(model, x, 2, attribution.abs().sum(dim=0), steps=9, baseline=0.0)
    assert torch.equal(by_channels.deletion, by_map.deletion)
    assert torch.equal(by_channels.insertion, by_map.insertion)
    from_numpy = cw.deletion_insertion(model, x, 2, attribution.numpy(), steps=9, baseline=0.0)
    assert torch.equal(from_numpy.deletion, by_channels.deletion)


@pytest.mark.parametrize("baseline", ["blurred", "mean", -1.5, "tensor"])
def test_curves_run_from_the_image_to_the_baseline(baseline):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(3, 40, 40, generator=torch.Generator().manual_seed(2))
    fills = {"blurred": blur(x[None])[0], "mean": x.mean(dim=(1, 2), keepdim=True).expand_as(x), -1.5: torch.full_like(x, -1.5)}
    given = torch.linspace(-1, 1, 40).expand(3, 40, 40)
    fill = given if baseline == "tensor" else fills[baseline]
    result = cw.deletion_insertion(model, x, 1, torch.rand(40, 40), steps=5, baseline=given if baseline == "tensor" else baseline)
    with torch.no_grad():
        image, blank = torch.softmax(model(torch.stack([x, fill])), dim=1)[:, 1]
    for value, expected in [
        (result.deletion[0], image), (result.insertion[-1], image), (result.deletion[-1], blank), (result.insertion[0], blank)
    ]:
        assert float(value) == pytest.approx(float(expected), rel=1e-5)
    assert result.deletion.shape == result.insertion.shape == (6,)


@pytest.mark.slow
def test_a_map_of_the_cat_deletes_and_inserts_faster_than_its_reverse(efficientnet, request):
    """On the demo model, the cat's Grad-CAM beats the same map read backwards (least salient first)."""
    x = request.getfixturevalue("cat_and_coffee")[:, :, :112]
    cam = cw.grad_cam(efficientnet, x, "_conv_head", EGYPTIAN_CAT)
    ahead = cw.deletion_insertion(efficientnet, x, EGYPTIAN_CAT, cam, steps=8)
    backwards = cw.deletion_insertion(efficientnet, x, EGYPTIAN_CAT, -cam, steps=8)
    assert ahead.deletion_auc < backwards.deletion_auc
    assert ahead.insertion_auc > backwards.insertion_auc


def test_batches_and_progress(x):
    model = linear_model()
    fractions = []
    one_pass = cw.deletion_insertion(model, x, 1, map_of(ORDER), steps=4, batch_size=10)
    batched = cw.deletion_insertion(model, x, 1, map_of(ORDER), steps=4, batch_size=4, checkpoint=fractions.append)
    torch.testing.assert_close(batched.deletion, one_pass.deletion)
    torch.testing.assert_close(batched.insertion, one_pass.insertion)
    # 2 x 5 images in batches of 4.
    assert fractions == [0.0, 0.4, 0.8]


@pytest.mark.parametrize(
    "saliency, arguments, error, message",
    [
        (torch.rand(3, 4), {}, ValueError, r"saliency: expected shape \(H, W\) or \(C, H, W\) with \(H, W\) = \(3, 3\)"),
        ([[1.0]], {}, TypeError, "saliency: expected a tensor or array"),
        (torch.full((3, 3), float("nan")), {}, ValueError, "saliency: contains NaN"),
        (torch.rand(3, 3), {"steps": 0}, ValueError, "steps: expected a positive int, got 0"),
        (torch.rand(3, 3), {"baseline": "blur"}, ValueError, r"baseline: expected a number, a tensor or one of \('mean', 'blurred'\), got 'blur'"),
        (torch.rand(3, 3), {"baseline": torch.zeros(4, 3, 3)}, ValueError, "baseline: shape"),
        (torch.rand(3, 3), {"batch_size": 0}, ValueError, "batch_size: expected a positive int, got 0"),
        (torch.rand(3, 3), {"target": 3}, ValueError, "target: class index 3 is out of range"),
    ],
)
def test_bad_arguments(x, saliency, arguments, error, message):
    arguments = {"target": 1, **arguments}
    target = arguments.pop("target")
    with pytest.raises(error, match=message):
        cw.deletion_insertion(linear_model(), x, target, saliency, **arguments)


def test_the_model_is_left_as_it_was(small_image):
    torch.manual_seed(0)
    model = used_model(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    )
    x = small_image[:, :16, :16]
    state = ModelState(model)
    cw.deletion_insertion(model, x, 2, torch.rand(16, 16), steps=4)
    state.assert_unchanged()

    def stop(fraction):
        if fraction > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cw.deletion_insertion(model, x, 2, torch.rand(16, 16), steps=4, batch_size=2, checkpoint=stop)
    state.assert_unchanged()
