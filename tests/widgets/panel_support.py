"""What the panel tests share: the digits model and pictures, PNG decoding, waiting for a panel.

The digits CNN is real and small: every panel test runs in a fraction of a second on it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
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
