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

CENTRE_UNIT_BELOW = 10

Checkpoint = Callable[..., None]


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
    checkpoint: Checkpoint | None = None,
    preview_every: int = 10,
) -> Tensor:
    """Activation maximisation: for each filter, the picture that excites it most.

    All filters are optimised together in one batch, from a grey picture with a little noise.
    Returns ``(F, C, size, size)`` in [0, 1] with ``C`` the channels the model reads (3 for RGB).

    filters: an index or a sequence of indices into the layer's output channels.
    normalize: ``(mean, std)`` mapping [0, 1] pixels to the model's input; ImageNet's by default.
    checkpoint: called as ``checkpoint(step / steps, pictures)`` every ``preview_every`` steps and after the
        last, with the current pictures (CPU, in [0, 1]), so a panel can show the patterns emerging;
        whatever it raises stops the optimisation and propagates.
    """
    check_model(model)
    name, module = resolve_layer(model, layer)
    indices = check_filters(filters, output_channels(model, name, module))
    size = check_positive_int(size, "size")
    steps = check_positive_int(steps, "steps")
    preview_every = check_positive_int(preview_every, "preview_every")
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

        def layer_of(pictures: Tensor) -> Tensor:
            capture.run((pictures - mean) / std)
            return layer_output(capture.outputs, name, module)

        field, shape = receptive_field(layer_of, torch.rand(2, channels, size, size, generator=generator).to(device))
        weights = spatial_weights(shape, size, field)
        for step in range(1, steps + 1):
            activations = layer_of(random_transform(picture(), generator))
            optimiser.zero_grad()
            (-excitation(activations, chosen, weights).sum()).backward()
            optimiser.step()
            if checkpoint is not None and (step % preview_every == 0 or step == steps):
                with torch.no_grad():
                    checkpoint(step / steps, picture().cpu())
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


def receptive_field(layer_of: Callable[[Tensor], Tensor], pictures: Tensor) -> int:
    """Side, in pixels, of the window of ``pictures`` the centre unit of the layer's maps reads.

    Measured as the bounding box of the pixels its gradient reaches, summed over every channel and over
    random pictures, so that a unit switched off by a ReLU on one picture does not shrink the window.
    A layer without spatial maps (a linear layer) reads the whole picture.
    """
    pictures = pictures.requires_grad_(True)
    activations = layer_of(pictures)
    if activations.dim() != 4:
        return pictures.shape[-1], activations.shape[2:]
    height, width = activations.shape[-2:]
    (gradient,) = torch.autograd.grad(activations[:, :, height // 2, width // 2].sum(), pictures)
    reached = gradient.abs().sum(dim=(0, 1)) > 0
    rows, columns = reached.any(dim=1).nonzero(), reached.any(dim=0).nonzero()
    if len(rows) == 0:
        return 0, activations.shape[2:]
    return int(max(rows.max() - rows.min(), columns.max() - columns.min())) + 1, activations.shape[2:]


CENTRE_SIGMA_PIXELS = 4.0
MAX_RMS = 0


def spatial_weights(shape, size: int, field: int):
    if len(shape) != 2:
        return None
    height, width = shape
    if field >= CENTRE_UNIT_BELOW:
        return torch.full((height, width), 1.0 / (height * width))
    if CENTRE_SIGMA_PIXELS == 0:
        weights = torch.zeros(height, width)
        weights[height // 2, width // 2] = 1.0
        return weights
    sigma = CENTRE_SIGMA_PIXELS * width / size
    ys = torch.arange(height) - (height - 1) / 2
    xs = torch.arange(width) - (width - 1) / 2
    weights = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))
    return weights / weights.sum()


def excitation(activations: Tensor, chosen: Tensor, weights) -> Tensor:
    rows = torch.arange(len(chosen), device=activations.device)
    maps = activations[rows, chosen]
    if weights is None:
        return maps
    return (maps * weights.to(maps)).sum(dim=(-2, -1))


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
        if MAX_RMS:
            rms = pixels.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            pixels = pixels * (MAX_RMS / rms).clamp(max=1.0)
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
