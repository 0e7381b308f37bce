"""Models and pictures shared by the method tests.

Models are built once per session (torchvision ones with random weights, seeded: the oracles need no
trained weights); the pretrained demo model serves the tests that ask whether a map points at the object.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import cnnviz_widgets as cw


@pytest.fixture(scope="session")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="session")
def vgg11_bn():
    torch.manual_seed(0)
    return torchvision.models.vgg11_bn(weights=None).eval()


@pytest.fixture(scope="session")
def efficientnet():
    model, _, _ = cw.demo.imagenet_model()
    return model


@pytest.fixture(scope="session")
def digits_model():
    return cw.demo.digits_model()


@pytest.fixture(scope="session")
def digit():
    x, y, _ = cw.demo.digits("test")
    return x[0], int(y[0])


@pytest.fixture
def small_image():
    """A random 64 px RGB input: enough for every torchvision model's pooling, cheap for the oracles."""
    return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1))


def _strip(picture: Image.Image, left_fraction: float) -> Image.Image:
    """A full-height 1:2 strip of the photo, ``left_fraction`` of the way across, as 112 x 224 pixels."""
    width, height = picture.size
    strip_width = min(width, height // 2)
    left = int((width - strip_width) * left_fraction)
    return picture.crop((left, 0, left + strip_width, height)).resize((112, 224), Image.Resampling.BILINEAR)


@pytest.fixture(scope="session")
def cat_and_coffee():
    """The article's two-object photo: chelsea (an Egyptian cat) on the left half, a cup of espresso on the
    right half, as the demo model's (3, 224, 224) input. Its top two classes are those two."""
    photos = cw.demo.photos()
    halves = [_strip(photos["chelsea"], 0.5), _strip(photos["coffee"], 0.4)]
    pixels = torch.from_numpy(np.concatenate([np.asarray(half) for half in halves], axis=1))
    return (pixels.permute(2, 0, 1).float() / 255 - 0.5) / 0.5
