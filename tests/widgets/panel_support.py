"""What the panel tests share: the digits model and pictures, PNG decoding, a model-state snapshot.

The digits CNN is real and small: every panel test runs in a fraction of a second on it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz_widgets as cw

IMAGES = 40


@pytest.fixture(scope="module")
def digits():
    """``(model, pictures, labels, class_names)``: the first test digits as uint8 pictures."""
    x, y, names = cw.demo.digits("test")
    return cw.demo.digits_model(), cw.demo.digit_pictures(x[:IMAGES]), y[:IMAGES], names


def panel_of(kind, digits, **kwargs):
    model, pictures, labels, names = digits
    return kind(model, pictures, cw.demo.digits_preprocess, names, **kwargs)


def pixels(png: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def settled(panel, timeout: float = 60.0):
    """The panel (or dashboard) with every view shown and every cache it fills ahead filled."""
    assert panel.wait_prefetched(timeout), "the panel did not finish in time"
    return panel


class Snapshot:
    """Everything a panel could change on the user's model: weights, buffers, modes, flags, grads, hooks."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        self.modes = [module.training for module in model.modules()]
        self.flags = [p.requires_grad for p in model.parameters()]
        self.grads = [p.grad for p in model.parameters()]
        self.hooks = self._hooks()

    def _hooks(self) -> int:
        return sum(
            len(module._forward_hooks) + len(module._forward_pre_hooks) + len(module._backward_hooks)
            for module in self.model.modules()
        )

    def assert_unchanged(self) -> None:
        current = self.model.state_dict()
        assert current.keys() == self.state.keys()
        for name, tensor in self.state.items():
            assert torch.equal(current[name], tensor), f"{name} changed"
        assert [module.training for module in self.model.modules()] == self.modes
        assert [p.requires_grad for p in self.model.parameters()] == self.flags
        assert all(p.grad is grad for p, grad in zip(self.model.parameters(), self.grads))
        assert self._hooks() == self.hooks
