"""What a filter has learned: its weights, and its pattern, the picture that excites it most.

Patterns come from gradient ascent on the picture. Three things make them read as patterns rather than
pixel noise: the picture is parameterised by its Fourier spectrum, scaled down with frequency, in
decorrelated colours (a step of the optimiser then moves smooth, natural-looking structures); each step
shows the network a slightly shifted, scaled and rotated copy (a pattern must survive them); and the
picture's local contrast has a ceiling, so that a network rewarding contrast without bound cannot pin its
pixels to black and white. What is maximised depends on the layer (see :func:`filter_patterns`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import Checkpoint, check
from ..inputs import (
    check_filters,
    check_int,
    check_model,
    check_normalize,
    check_pair,
    check_positive_int,
    fixed_input_size,
    input_channels,
    model_device,
)
from ..layers import resolve_layer
from ..probe import probe
from .feature_maps import layer_maps

DEFAULT_SIDE = 128
"""Side of the patterns of a model that reads pictures of any size."""

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

SMALL_FIELD_PIXELS = 10
"""Layers whose units read a window of the picture narrower than this get the centre objective, the others
the map's mean. Measured with the mean on both demo models (8 filters, 48-64 steps, 32 to 160 px
pictures), counting the patterns whose 8 px blocks are mostly flat: fields of 3 px (EfficientNet-Lite0's
stem: 3 of 8 at every size; the digits CNN's conv1: 8 of 8 from 64 px), 7 px (the depthwise conv after
the stem: 3 of 8 at 160 px) and 8 px (digits conv2: 3 or 4 of 8 at every size) give flat squares; from
11 px on (EfficientNet's block 1 and deeper, digits conv3) none does, at any size. The field as a fraction
of the picture does not separate them: digits conv2 fails at 32 px (a quarter of the picture) where
EfficientNet's block 2 (19 px) at 64 px and block 1 (11 px) at 160 px do not."""

CENTRE_SIGMA_PIXELS = 4.0
"""Width (Gaussian sigma, in picture pixels) of the window of units the centre objective weighs. A single
unit, as Lucent's neuron objective, reads a few pixels that the jitter moves each step: each pixel is read
on few steps and the pattern's core comes out salt-and-pepper. With 4 px the window and the jitter span
about the same, and every pixel of the core is read at every step; 8 or 12 px drift back towards the map's
mean: larger flat discs with ragged rims."""

CONTRAST_SIGMA_PIXELS = 8.0
MAX_LOCAL_CONTRAST = 2.0
"""Ceiling on the RMS of the picture before its sigmoid, over a Gaussian neighbourhood of
``CONTRAST_SIGMA_PIXELS`` (the jitter's reach). Networks that reward contrast without bound (ReLU, a linear
first layer) otherwise pin pixels to black and white: at 96 px and 64 steps, 4.4% of the digits
classifier's pixels ended within 0.02 of 0 or 1 (20% in one pattern), 6.5% of its conv1's; with the
ceiling 0.5% and 0.0%. EfficientNet-Lite0's middle and deep layers, whose ReLU6 stop rewarding contrast,
reach a local RMS of 1.7 to 1.95 (95th percentile) on their own; at 2.0 their patterns stay as they were
(2.6% of pixels within 0.05 of 0 or 1 before, 2.5% after, in block 6)."""


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
    size=None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    normalize=None,
    *,
    checkpoint: Checkpoint | None = None,
    preview_every: int = 10,
) -> Tensor:
    """Activation maximisation: for each filter, the picture that excites it most.

    All filters are optimised together in one batch, from a grey picture with a little noise.
    Returns ``(F, C, H, W)`` in [0, 1] with ``C`` the channels the model reads (3 for RGB) and ``(H, W)``
    the pictures' size.

    What is maximised depends on the layer's receptive field, the window of the picture one unit of its maps
    reads, measured at the start of each call from the gradient of the map's centre unit on random pictures:

    - narrower than ``SMALL_FIELD_PIXELS`` (10 px; a first conv layer and the one or two after it): the
      filter's units at the centre of the map, weighted by a Gaussian window of ``CENTRE_SIGMA_PIXELS``
      (4 px). Such a layer is nearly linear in the picture, and the mean of a linear map is maximised by a
      flat colour; its centre is maximised by the edge or colour spot the filter detects, drawn in the
      middle of a grey picture;
    - wider, or a layer without maps (a linear layer's units): the mean of the filter's whole map, which
      fills the picture with the texture or object parts the filter responds to.

    filters: an index or a sequence of indices into the layer's output channels.
    size: the pictures' side, or their ``(H, W)``; by default the one size a model such as a ViT reads (see
        :func:`~cnnviz_widgets.inputs.fixed_input_size`), else ``DEFAULT_SIDE``. Such a model refuses any
        other size.
    normalize: ``(mean, std)`` mapping [0, 1] pixels to the model's input; ImageNet's by default. A negative
        std is a preprocessing that inverts the picture (the digits CNN's ink-on-paper pictures).
    checkpoint: called as ``checkpoint(step / steps)`` after each step (a step of 16 patterns of 96 px at
        EfficientNet-Lite0's ``_conv_head`` took 0.3 to 1.2 s on two busy cores: a Stop must not wait for
        ten of them), and as ``checkpoint(step / steps, pictures)`` every ``preview_every`` steps and after
        the last, with the current pictures (CPU, in [0, 1]), so a panel can show the patterns emerging;
        whatever it raises stops the optimisation and propagates.
    """
    check_model(model)
    name, module = resolve_layer(model, layer)
    indices = check_filters(filters, output_channels(model, name, module))
    size = pattern_size(model, size)
    # Shifted, scaled and rotated a little at each step, a pattern does not hang on single pixels. Not so a
    # model that reads one size in fixed patches (a ViT): resampled, the picture no longer lines up with its
    # patches: a block's channel of the digits ViT was excited less after 128 steps than by the grey start
    # (0.48 against 1.07); without the transforms, 7.4.
    patched = fixed_input_size(model) is not None
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

        def maps_of(pictures: Tensor) -> Tensor:
            # A transformer block's tokens as maps: a filter is one of its D channels, not one of its tokens.
            inputs = (pictures - mean) / std
            capture.run(inputs)
            return layer_maps(model, inputs, capture.outputs, name, module)

        random_pictures = torch.rand(2, channels, *size, generator=generator).to(device).requires_grad_(True)
        weights = map_weights(maps_of(random_pictures), random_pictures)
        for step in range(1, steps + 1):
            pictures = picture()
            activations = maps_of(pictures if patched else random_transform(pictures, generator))
            optimiser.zero_grad()
            (-excitation(activations, chosen, weights).sum()).backward()
            optimiser.step()
            if checkpoint is not None and (step % preview_every == 0 or step == steps):
                with torch.no_grad():
                    checkpoint(step / steps, picture().cpu())
            else:
                check(checkpoint, step / steps)
    with torch.no_grad():
        return picture().cpu()


def pattern_size(model: nn.Module, size) -> tuple[int, int]:
    """``(H, W)`` of the patterns: ``size`` (a side or a pair) if the model reads it, by default its one size."""
    fixed = fixed_input_size(model)
    if size is None:
        return fixed or (DEFAULT_SIDE, DEFAULT_SIDE)
    given = check_pair(size, "size") if isinstance(size, (tuple, list)) else (check_positive_int(size, "size"),) * 2
    if fixed is not None and given != fixed:
        raise ValueError(
            f"size: {size!r} does not fit {type(model).__name__}, which reads only {fixed[0]} x {fixed[1]} "
            f"pictures; pass size={fixed[0] if fixed[0] == fixed[1] else fixed} or leave it out"
        )
    return given


def output_channels(model: nn.Module, name: str, module: nn.Module) -> int:
    """How many filters ``layer`` has: its ``out_channels``, or the channels of its output on a black picture
    (of 64 px, or of the one size the model reads)."""
    count = getattr(module, "out_channels", None)
    if isinstance(count, int):
        return count
    channels = input_channels(model) or 3
    height, width = fixed_input_size(model) or (64, 64)
    black = torch.zeros(1, channels, height, width, device=model_device(model))
    with probe(model, outputs=[(name, module)], stop_early=True) as capture:
        capture.run(black)
    return layer_maps(model, black, capture.outputs, name, module).shape[1]


def receptive_field(maps: Tensor, pictures: Tensor) -> int:
    """Side, in pixels, of the window of ``pictures`` that the centre unit of ``maps`` (computed from them) reads.

    The bounding box of the pixels its gradient reaches, summed over every channel and picture, so that a
    unit a ReLU switches off on one picture does not shrink the window. 0 if no pixel is reached at all.
    """
    height, width = maps.shape[-2:]
    (gradient,) = torch.autograd.grad(maps[:, :, height // 2, width // 2].sum(), pictures)
    reached = gradient.abs().sum(dim=(0, 1)) > 0
    rows, columns = reached.any(dim=1).nonzero(), reached.any(dim=0).nonzero()
    if len(rows) == 0:
        return 0
    return int(max(rows.max() - rows.min(), columns.max() - columns.min())) + 1


def map_weights(maps: Tensor, pictures: Tensor) -> Tensor | None:
    """How much each position of a filter's map counts in its excitation, ``(h, w)`` summing to 1, for the
    layer whose ``maps`` came from ``pictures`` (see :func:`filter_patterns`); None for a layer without maps."""
    if maps.dim() != 4:
        return None
    height, width = maps.shape[-2:]
    if receptive_field(maps, pictures) >= SMALL_FIELD_PIXELS:
        return torch.full((height, width), 1.0 / (height * width), device=maps.device)
    sigma = CENTRE_SIGMA_PIXELS * width / pictures.shape[-1]
    rows = torch.arange(height, device=maps.device) - (height - 1) / 2
    columns = torch.arange(width, device=maps.device) - (width - 1) / 2
    window = torch.exp(-(rows[:, None] ** 2 + columns[None, :] ** 2) / (2 * sigma**2))
    return window / window.sum()


def excitation(activations: Tensor, chosen: Tensor, weights: Tensor | None) -> Tensor:
    """Row ``i``'s activation of filter ``chosen[i]``, its map weighed by ``weights``: ``(F,)``."""
    rows = torch.arange(len(chosen), device=activations.device)
    picked = activations[rows, chosen]
    if weights is None:
        return picked
    return (picked * weights).sum(dim=(-2, -1))


class FourierPicture:
    """A batch of pictures parameterised by their spectra, in decorrelated colour, squashed into [0, 1]."""

    def __init__(self, count: int, channels: int, size: tuple[int, int], generator: torch.Generator, device):
        self.size = size
        height, width = size
        frequencies = torch.sqrt(torch.fft.fftfreq(height)[:, None] ** 2 + torch.fft.rfftfreq(width)[None, :] ** 2)
        # 1/f scaling: low frequencies move fastest, as in natural images; the DC term stays at unit scale.
        self.scale = (1.0 / torch.clamp(frequencies * max(size), min=1.0)).to(device)
        noise = torch.randn((count, channels, height, width // 2 + 1, 2), generator=generator) * INITIAL_NOISE
        self.spectrum = noise.to(device).requires_grad_(True)
        self.colours = colour_matrix(channels).to(device)

    def __call__(self) -> Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        pixels = torch.fft.irfft2(spectrum, s=self.size, norm="forward")
        pixels = torch.einsum("ij,njhw->nihw", self.colours, pixels)
        return torch.sigmoid(limit_contrast(pixels))


def limit_contrast(pixels: Tensor) -> Tensor:
    """Pictures before their sigmoid, scaled down wherever their local RMS exceeds ``MAX_LOCAL_CONTRAST``."""
    local = gaussian_mean(pixels.detach().pow(2).mean(dim=1, keepdim=True), CONTRAST_SIGMA_PIXELS).sqrt()
    return pixels * (MAX_LOCAL_CONTRAST / local).clamp(max=1.0)


def gaussian_mean(values: Tensor, sigma: float) -> Tensor:
    """``(N, 1, H, W)`` values averaged over a Gaussian neighbourhood; near a border, over the part inside."""
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=values.dtype, device=values.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))

    def blur(plane: Tensor) -> Tensor:
        plane = F.conv2d(plane, kernel.view(1, 1, 1, -1), padding=(0, radius))
        return F.conv2d(plane, kernel.view(1, 1, -1, 1), padding=(radius, 0))

    return blur(values) / blur(torch.ones_like(values[:1]))


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
