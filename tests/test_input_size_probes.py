"""What needs the edits of layers.py (conv_layers' default picture) and data.py (evaluate's size check): the
probe picture made at the size the model reads, and a dataset of another size refused naming ``images``."""

from __future__ import annotations

import pytest
import torch

import cnnviz_widgets as cw
from tests.model_state import ModelState
from tests.test_input_size import FIXED


@pytest.fixture(scope="module", params=list(FIXED))
def fixed(request):
    build, size, layer = FIXED[request.param]
    return build(), size, layer


def test_evaluate_refuses_another_size_naming_images(fixed):
    model, (height, width), _ = fixed
    state = ModelState(model)
    with pytest.raises(ValueError, match=rf"^images: {type(model).__name__} reads only {height} x {width} inputs"):
        cw.evaluate(model, torch.rand(2, 3, height + 8, width + 16), [0, 1], progress=False)
    state.assert_unchanged()


def test_conv_layers_probes_at_the_size_the_model_reads(fixed):
    model, (height, width), layer = fixed
    state = ModelState(model)
    listed = dict(cw.conv_layers(model))
    convolution = model.get_submodule(layer)
    stride = convolution.stride
    assert listed[layer] == (convolution.out_channels, height // stride[0], width // stride[1])
    state.assert_unchanged()
