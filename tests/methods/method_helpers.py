"""Class indices, comparisons and test models shared by the method tests."""

from __future__ import annotations

import torch
from torch import nn

EGYPTIAN_CAT = 285
ESPRESSO = 967


def halves(values: torch.Tensor) -> tuple[float, float]:
    """Mean of the left and the right half of an (..., H, W) map."""
    middle = values.shape[-1] // 2
    return float(values[..., :middle].mean()), float(values[..., middle:].mean())


def assert_close_relative(ours: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-4) -> None:
    """Equal up to ``rtol`` of the reference's largest magnitude (elementwise relative error blows up near 0)."""
    reference = reference.detach()
    assert ours.shape == reference.shape
    scale = float(reference.abs().max())
    assert scale > 0, "the reference is all zeros: the comparison would prove nothing"
    torch.testing.assert_close(ours, reference, rtol=0, atol=rtol * scale)


class ArmedFailure(nn.Module):
    """Identity until armed, then raises: a model that fails after the layers have been hooked."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, x):
        if self.armed:
            raise RuntimeError("provoked failure")
        return x
