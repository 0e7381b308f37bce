"""The "image mean" and "blurred" patch fills, checked against independent computations (SciPy's Gaussian
filter, NumPy's mean) and against Captum's Occlusion given those baselines."""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import Occlusion
from scipy.ndimage import gaussian_filter

import cnnviz_widgets as cw
from cnnviz_widgets.methods.occlusion import BLUR_SIGMA, blur
from cnnviz_widgets.session import Session


def scipy_blur(x: torch.Tensor) -> torch.Tensor:
    """SciPy's Gaussian filter: "nearest" replicates the edges; truncate=3 cuts the kernel at 3 sigma."""
    return torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, BLUR_SIGMA, BLUR_SIGMA), mode="nearest", truncate=3.0))


def test_the_blurred_fill_is_a_gaussian_blur_with_replicated_edges():
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(blur(x), scipy_blur(x), rtol=1e-5, atol=1e-6)
    grey = x.mean(dim=1, keepdim=True)
    session = Session(cw.demo.digits_model(), grey)
    torch.testing.assert_close(session.baseline(0, "blurred"), scipy_blur(grey), rtol=1e-5, atol=1e-6)


def test_mean_and_blurred_fills_equal_captum_given_the_same_baselines():
    torch.manual_seed(0)
    model = cw.demo.digits_model()
    x, _, _ = cw.demo.digits("test")
    image = x[3:4]
    blurred = scipy_blur(image)
    mean = torch.from_numpy(np.broadcast_to(image.numpy().mean(axis=(2, 3), keepdims=True), image.shape).copy())
    softmax = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    for fill, baseline in (("mean", mean), ("blurred", blurred)):
        ours = cw.occlusion(model, image, 4, window=8, stride=4, baseline=fill)
        theirs = Occlusion(softmax).attribute(image, sliding_window_shapes=(1, 8, 8), strides=(1, 4, 4), baselines=baseline, target=4)
        torch.testing.assert_close(ours.attribution, theirs[0, 0], rtol=1e-4, atol=1e-6)
    session = Session(model, image)
    torch.testing.assert_close(session.baseline(0, "image mean"), mean)
