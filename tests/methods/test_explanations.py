"""Every method behind one call: the maps the Compare view shows, their checkpoints, and how long each takes."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.fast import candidates, fast_copy
from cnnviz_widgets.methods import estimated_seconds, explanation
from cnnviz_widgets.replica import borrow

explanations = importlib.import_module("cnnviz_widgets.methods.explanations")


def test_score_cam_reports_progress_and_stops(digits_model, digit):
    """Score-CAM runs a pass per four of conv3's 64 channels: 16 checkpoints after the first."""
    fractions = []
    explanation(digits_model, digit[0], "features.conv3", 3, "score-cam", checkpoint=fractions.append)
    assert fractions == [0.0, *(start / 64 for start in range(0, 64, 4))]

    def stop(fraction):
        fractions.append(fraction)
        if fraction >= 0.5:
            raise KeyboardInterrupt

    fractions.clear()
    with pytest.raises(KeyboardInterrupt):
        explanation(digits_model, digit[0], "features.conv3", 3, "score-cam", checkpoint=stop)
    assert fractions[-1] == 0.5


def test_maps_are_divided_by_their_largest_value(digits_model, digit):
    x, target = digit
    cam = cw.cam(digits_model, x, "features.conv3", target, "grad-cam")
    torch.testing.assert_close(explanation(digits_model, x, "features.conv3", target, "grad-cam"), cam, rtol=0, atol=0)
    gradient = cw.gradients(digits_model, x, target, "smoothgrad", samples=3).abs().sum(dim=0)
    smoothgrad = explanation(digits_model, x, None, target, "smoothgrad", samples=3)
    torch.testing.assert_close(smoothgrad, gradient / gradient.max())
    assert float(smoothgrad.max()) == 1.0 and float(smoothgrad.min()) > 0


def test_an_unknown_method_lists_them(digits_model, digit):
    with pytest.raises(ValueError, match="method: expected one of grad-cam, .*, score-cam; got 'lime'"):
        explanation(digits_model, digit[0], "features.conv3", 3, "lime")


class Wide(nn.Module):
    """A conv layer of 1,000 channels at 16 px: Score-CAM runs 250 passes of four masked pictures."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1000, 3, padding=1)
        self.head = nn.Linear(1000, 5)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture
def wide():
    torch.manual_seed(0)
    return Wide().eval(), torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))


# Batches of 4 at 16 px: the curves' 102 pictures are 26 forward batches; occlusion's window of 2 px moved by 1
# takes 15 x 15 = 225 places, 57 batches; SmoothGrad's 25 samples 7 batches forward and back, integrated
# gradients' 50 points 13; a one-pass method one batch forward and back.
PASSES = {
    "score-cam": (250 + 26, 0),
    "occlusion": (57 + 26, 0),
    "smoothgrad": (26, 7),
    "integrated-gradients": (26, 13),
    "grad-cam": (26, 1),
    "guided-backprop": (26, 1),
}


@pytest.mark.parametrize("method", PASSES)
def test_the_estimate_is_the_batches_times_their_measured_time(method, wide, monkeypatch):
    model, x = wide
    monkeypatch.setattr(explanations, "forward_batch_seconds", lambda *arguments: 0.01)
    monkeypatch.setattr(explanations, "gradient_batch_seconds", lambda *arguments: 0.1)
    forward, backward = PASSES[method]
    assert estimated_seconds(model, x, "conv", method) == pytest.approx(forward * 0.01 + backward * 0.1)
    assert estimated_seconds(model, x, "conv", method, scored=False) == pytest.approx((forward - 26) * 0.01 + backward * 0.1)


def test_the_forward_time_is_measured_once_per_replica_and_shape(wide, monkeypatch):
    """One batch per setting the fast copy's tuner tries, then never again: the user's training changes the
    weights' values, not how long a pass takes."""
    model, x = wide
    runs = []
    real_forwarder = explanations.forwarder

    def counting_forwarder(*arguments):
        forward = real_forwarder(*arguments)
        return lambda batch: runs.append(len(batch)) or forward(batch)

    monkeypatch.setattr(explanations, "forwarder", counting_forwarder)
    first = estimated_seconds(model, x, "conv", "score-cam")
    with borrow(model) as replica:
        settings = candidates(fast_copy(replica, x[None]).memory_formats, (4,))
    assert runs == [4] * len(settings)
    with torch.no_grad():
        model.conv.weight.mul_(2)
    assert estimated_seconds(model, x, "conv", "score-cam") == first
    assert len(runs) == len(settings)
    estimated_seconds(model, torch.rand(3, 24, 24), "conv", "score-cam")
    assert len(runs) == 2 * len(settings), "another shape is measured"


def test_the_measured_times_are_real(wide):
    """Seconds, from the clock: a batch forward and back costs more than a batch forward."""
    model, x = wide
    with borrow(model) as replica:
        forward = explanations.forward_batch_seconds(replica, x[None])
        backward = explanations.gradient_batch_seconds(replica, x[None])
    assert 0 < forward < backward < 10


def test_a_checkpoint_stops_the_measurement_and_nothing_is_kept(wide):
    model, x = wide

    def stop(fraction):
        if fraction > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        estimated_seconds(model, x, "conv", "score-cam", checkpoint=stop)
    seen = []
    estimated_seconds(model, x, "conv", "score-cam", checkpoint=seen.append)
    assert seen and seen == sorted(seen), "measured again, with progress"


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"method": "lime"}, ValueError, "method: expected one of grad-cam, .*; got 'lime'"),
        ({"layer": None}, ValueError, "layer: Score-CAM weighs a layer's channels; give the layer"),
        ({"layer": "conf"}, ValueError, "layer: no submodule named 'conf'"),
        ({"batch_size": 0}, ValueError, "batch_size: expected a positive int, got 0"),
    ],
)
def test_bad_estimate_arguments(wide, arguments, error, message):
    model, x = wide
    arguments = {"layer": "conv", "method": "score-cam", **arguments}
    with pytest.raises(error, match=message):
        estimated_seconds(model, x, arguments.pop("layer"), arguments.pop("method"), **arguments)

