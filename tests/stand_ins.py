"""What tests across the package share: a stand-in for a graph that fails on larger batches, and waiting for
something a background thread does.

Import it as ``from tests.stand_ins import ...`` (see ``tests/model_state.py`` for why that works anywhere).
"""

from __future__ import annotations

import time

from torch import nn


class BatchLimited(nn.Module):
    """Stands for a traced graph or a cut that raises on more images than ``largest_batch`` (checked on one
    image, it fails on a batch)."""

    def __init__(self, graph: nn.Module, largest_batch: int):
        super().__init__()
        self.graph, self.largest_batch = graph, largest_batch

    def forward(self, x):
        if len(x) > self.largest_batch:
            raise RuntimeError(f"shape '[{self.largest_batch}, -1]' is invalid for input of size {x.numel()}")
        return self.graph(x)


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Whether ``condition()`` came true within ``timeout`` seconds, looking every 20 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
