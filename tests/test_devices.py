"""The model's device decides where the computing happens: a CPU input goes there, and the results come back on
the CPU, detached from any graph.

There is no GPU here; a model moved to the meta device (tensors with shapes and no data) stands for a model on
another device. Its first module reports the device of what the forward is given and stops the pass. The report
is a plain function, which ``copy.deepcopy`` keeps as itself, so it arrives from a private copy of the model too.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.inputs import check_image, model_device


class InputSeen(Exception):
    pass


class ReportDevice(nn.Module):
    def __init__(self, report):
        super().__init__()
        self.report = report

    def forward(self, x):
        self.report(x.device)
        raise InputSeen


def small_cnn(first: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)]
    return nn.Sequential(*([first] if first is not None else []), *layers, *head)


IMAGE = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1))
BATCH = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))

# Each public function that runs the model, on a model whose convolution is "1" (after the reporter).
RUNS_MODEL = {
    "feature_maps": lambda m: cw.feature_maps(m, IMAGE, "1"),
    "grad_cam": lambda m: cw.grad_cam(m, IMAGE, "1", 0),
    "guided_backprop": lambda m: cw.guided_backprop(m, IMAGE, 0),
    "guided_grad_cam": lambda m: cw.guided_grad_cam(m, IMAGE, "1", 0),
    "occlusion": lambda m: cw.occlusion(m, IMAGE, 0, window=4, stride=4),
    "filter_patterns": lambda m: cw.filter_patterns(m, "1", [0], size=16, steps=1),
    "evaluate": lambda m: cw.evaluate(m, BATCH, [0, 1, 2, 0, 1], progress=False),
    "embed": lambda m: cw.embed(m, BATCH, progress=False),
}


def test_check_image_moves_a_cpu_input_to_the_models_device():
    model = small_cnn().to("meta")
    assert model_device(model) == torch.device("meta")
    moved = check_image(model, IMAGE)
    assert moved.device == torch.device("meta") and moved.shape == (1, 1, 8, 8)
    assert IMAGE.device == torch.device("cpu"), "the caller's tensor stays where it was"


def test_the_device_of_a_model_with_buffers_only_or_nothing():
    assert model_device(nn.BatchNorm2d(2, affine=False).to("meta")) == torch.device("meta")
    assert model_device(nn.ReLU()) == torch.device("cpu")


@pytest.mark.parametrize("name", RUNS_MODEL)
def test_the_forward_of_a_model_on_another_device_is_given_its_input_there(name):
    seen = []
    model = small_cnn(ReportDevice(lambda device: seen.append(device))).to("meta")
    with pytest.raises(InputSeen):
        RUNS_MODEL[name](model)
    # Tracing the fast copy (torch.fx) runs the forward on symbolic values first: only real inputs count.
    devices = [device for device in seen if isinstance(device, torch.device)]
    assert devices and set(devices) == {torch.device("meta")}


CPU_RESULTS = {
    "feature_maps": lambda m, x: [cw.feature_maps(m, x, "0")],
    "grad_cam": lambda m, x: [cw.grad_cam(m, x, "0", 1), cw.grad_cam(m, x, "0", 1, raw=True)],
    "guided_backprop": lambda m, x: [cw.guided_backprop(m, x, 1)],
    "guided_grad_cam": lambda m, x: [cw.guided_grad_cam(m, x, "0", 1)],
    "occlusion": lambda m, x: list(attrgetter("scores", "attribution")(cw.occlusion(m, x, 1, window=4, stride=4))),
    "filter_weights": lambda m, x: [cw.filter_weights(m, "0")],
    "filter_patterns": lambda m, x: [cw.filter_patterns(m, "0", [0, 1], size=16, steps=2)],
}


@pytest.mark.parametrize("name", CPU_RESULTS)
def test_results_of_a_cpu_model_are_cpu_tensors_outside_any_graph(name):
    model = small_cnn()
    x = IMAGE.clone().requires_grad_(True)
    for result in CPU_RESULTS[name](model, x):
        assert isinstance(result, torch.Tensor)
        assert result.device == torch.device("cpu")
        assert not result.requires_grad and result.grad_fn is None


def test_filter_weights_are_a_copy_the_user_may_change():
    model = small_cnn()
    weights = cw.filter_weights(model, "0")
    torch.testing.assert_close(weights, model[0].weight.detach())
    weights.zero_()
    assert model[0].weight.detach().abs().sum() > 0


def test_dataset_results_are_numpy_arrays():
    model = small_cnn()
    batch = BATCH.clone().requires_grad_(True)
    evaluation = cw.evaluate(model, batch, [0, 1, 2, 0, 1], progress=False)
    for array in (evaluation.predictions, evaluation.probabilities, evaluation.confusion):
        assert isinstance(array, np.ndarray)
    assert isinstance(cw.embed(model, batch, progress=False), np.ndarray)
