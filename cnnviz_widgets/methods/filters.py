"""What a filter has learned: its weights, and its pattern, the picture that excites it most.

Patterns come from gradient ascent on the picture. Two things make them read as textures rather than
pixel noise: the picture is parameterised by its Fourier spectrum, scaled down with frequency, in
decorrelated colours (a step of the optimiser then moves smooth, natural-looking structures), and each
step shows the network a slightly shifted, scaled and rotated copy (a pattern must survive them).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..inputs import (
    check_filters,
    check_int,
    check_model,
    check_normalize,
    check_positive_int,
    input_channels,
    model_device,
)
from ..layers import resolve_layer
from ..probe import probe
from .feature_maps import layer_output

DEFAULT_STEPS = 128
"""Enough for patterns that excite their filter several times more than any photo does; 8 patterns at
128 px take well under 30 s on two CPU cores with EfficientNet-Lite0."""

LEARNING_RATE = 0.02
"""Per spectral coefficient and step (Adam): larger steps saturate the pictures into harsh line noise."""

# Square root of the RGB covariance of natural photographs (measured on scikit-image's sample photos):
# one unit of each parameter channel moves the colours along the directions real pictures vary in.
COLOUR_CORRELATION = torch.tensor(
    [[0.2516, 0.1133, 0.0399], [0.1133, 0.1571, 0.1105], [0.0399, 0.1105, 0.1810]]
)

JITTER_PIXELS = 8
SCALE_RANGE = (0.95, 1.05)
ROTATION_DEGREES = 5.0
INITIAL_NOISE = 0.01

PatternCallback = Callable[[int, Tensor], None]


def filter_weights(model: nn.Module, layer) -> Tensor:
    """The weights of a conv layer, ``(out, in, kh, kw)``, detached on the CPU."""
    check_model(model)
    name, module = resolve_layer(model, layer)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ValueError(
            f"layer: {name!r} ({type(module).__name__}) has no 2-D convolution weights (out, in, kh, kw); "
            "pick a Conv2d layer"
        )
    return weight.detach().cpu().clone()


def filter_patterns(
    model: nn.Module,
    layer,
    filters,
    size: int = 128,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    normalize=None,
    *,
    callback: PatternCallback | None = None,
    callback_every: int = 10,
) -> Tensor:
    """Activation maximisation: for each filter, the picture that maximises the mean of its output map.

    All filters are optimised together in one batch, from a grey picture with a little noise.
    Returns ``(F, C, size, size)`` in [0, 1] with ``C`` the channels the model reads (3 for RGB).

    filters: an index or a sequence of indices into the layer's output channels.
    normalize: ``(mean, std)`` mapping [0, 1] pixels to the model's input; ImageNet's by default.
    callback: called as ``callback(step, images)`` every ``callback_every`` steps and after the last,
        with the current pictures, so a panel can show the patterns emerging.
    """
    check_model(model)
    name, module = resolve_layer(model, layer)
    indices = check_filters(filters, output_channels(model, name, module))
    size = check_positive_int(size, "size")
    steps = check_positive_int(steps, "steps")
    callback_every = check_positive_int(callback_every, "callback_every")
    seed = check_int(seed, "seed")
    channels = input_channels(model) or 3
    mean, std = check_normalize(normalize, channels)
    device = model_device(model)
    mean, std = mean.to(device), std.to(device)
    generator = torch.Generator().manual_seed(seed)
    picture = FourierPicture(len(indices), channels, size, generator, device)
    optimiser = torch.optim.Adam([picture.spectrum], lr=LEARNING_RATE)
    chosen = torch.tensor(indices, device=device)
    with probe(model, outputs=[(name, module)], differentiable=True, stop_early=True) as capture:
        for step in range(1, steps + 1):
            transformed = random_transform(picture(), generator)
            capture.run((transformed - mean) / std)
            excitation = filter_means(layer_output(capture.outputs, name, module), chosen)
            optimiser.zero_grad()
            (-excitation.sum()).backward()
            optimiser.step()
            if callback is not None and (step % callback_every == 0 or step == steps):
                with torch.no_grad():
                    callback(step, picture().cpu())
    with torch.no_grad():
        return picture().cpu()


def output_channels(model: nn.Module, name: str, module: nn.Module) -> int:
    """How many filters ``layer`` has: its ``out_channels``, or the channels of its output on a small picture."""
    count = getattr(module, "out_channels", None)
    if isinstance(count, int):
        return count
    channels = input_channels(model) or 3
    with probe(model, outputs=[(name, module)], stop_early=True) as capture:
        capture.run(torch.zeros(1, channels, 64, 64, device=model_device(model)))
    return layer_output(capture.outputs, name, module).shape[1]


def filter_means(activations: Tensor, chosen: Tensor) -> Tensor:
    """Row ``i``'s mean activation of filter ``chosen[i]``: ``(F,)``."""
    rows = torch.arange(len(chosen), device=activations.device)
    return activations[rows, chosen].reshape(len(chosen), -1).mean(dim=1)


class FourierPicture:
    """A batch of pictures parameterised by their spectra, in decorrelated colour, squashed into [0, 1]."""

    def __init__(self, count: int, channels: int, size: int, generator: torch.Generator, device):
        self.size = size
        frequencies = torch.sqrt(torch.fft.fftfreq(size)[:, None] ** 2 + torch.fft.rfftfreq(size)[None, :] ** 2)
        # 1/f scaling: low frequencies move fastest, as in natural images; the DC term stays at unit scale.
        self.scale = (1.0 / torch.clamp(frequencies * size, min=1.0)).to(device)
        noise = torch.randn((count, channels, size, size // 2 + 1, 2), generator=generator) * INITIAL_NOISE
        self.spectrum = noise.to(device).requires_grad_(True)
        self.colours = colour_matrix(channels).to(device)

    def __call__(self) -> Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        pixels = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="forward")
        pixels = torch.einsum("ij,njhw->nihw", self.colours, pixels)
        return torch.sigmoid(pixels)


def colour_matrix(channels: int) -> Tensor:
    if channels != 3:
        return torch.eye(channels)
    return COLOUR_CORRELATION / COLOUR_CORRELATION.norm(dim=0).max()


def random_transform(pictures: Tensor, generator: torch.Generator) -> Tensor:
    """Each picture shifted by up to ``JITTER_PIXELS``, scaled and rotated a little, borders reflected."""
    count, _, height, width = pictures.shape
    angle = (torch.rand(count, generator=generator) * 2 - 1) * math.radians(ROTATION_DEGREES)
    scale = SCALE_RANGE[0] + torch.rand(count, generator=generator) * (SCALE_RANGE[1] - SCALE_RANGE[0])
    shift = (torch.rand(count, 2, generator=generator) * 2 - 1) * (2 * JITTER_PIXELS / torch.tensor([width, height]))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(pictures), list(pictures.shape), align_corners=False)
    return F.grid_sample(pictures, grid, padding_mode="reflection", align_corners=False)
