"""Check and normalise what users pass in, so bad input fails early with a message that says how to fix it.

Every error names the argument, shows what was given and says what is accepted. Nothing here runs the
model: checks that need the model's output (the number of classes) take it as a number.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Sequence

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    return model


def model_device(model: nn.Module) -> torch.device:
    """Where the model computes: the device of its first parameter or buffer (CPU for an empty model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def input_channels(model: nn.Module) -> int | None:
    """Channels the model's first convolution reads, or None when the model has no convolution."""
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.in_channels
    return None


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The one ``(H, W)`` that ``model`` accepts, or None when it reads inputs of many sizes.

    Read from what the model's modules declare, never from a forward pass (it costs nothing and runs nothing;
    a trial pass at a second size would double the cost of every call that checks an input, and could not
    tell a refused size from any other failure). The first of these modules found decides:

    - timm's patch embedding (ViT, DeiT, Swin, BEiT, EVA...): ``img_size`` while ``strict_img_size`` is set,
      which ``dynamic_img_size=True`` clears;
    - torchvision's ``VisionTransformer``: its ``image_size``, which ``_process_input`` asserts;
    - Hugging Face's embeddings (ViT, DeiT, ViT-MSN, CLIP...): an ``image_size`` on a module whose forward
      takes ``interpolate_pos_encoding``; the model calls it without, and then refuses any other size.

    Anything else (convolutional nets, Swin from torchvision or Hugging Face, which pad their inputs) is None.
    """
    from torchvision.models import VisionTransformer

    for module in model.modules():
        if getattr(module, "strict_img_size", False) is True and getattr(module, "img_size", None) is not None:
            return _height_width(module.img_size)
        if isinstance(module, VisionTransformer):
            return _height_width(module.image_size)
        if getattr(module, "image_size", None) is not None and _refuses_other_sizes(module):
            return _height_width(module.image_size)
    return None


def _refuses_other_sizes(module: nn.Module) -> bool:
    """Hugging Face embeddings that add position embeddings as they are unless the call asks to interpolate."""
    try:
        parameter = inspect.signature(module.forward).parameters.get("interpolate_pos_encoding")
    except (TypeError, ValueError):
        return False
    return parameter is not None and not parameter.default


def _height_width(size) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


def check_input_size(model: nn.Module, height: int, width: int, argument: str = "x") -> None:
    """Refuse, before the model does (timm's AssertionError, Hugging Face's ValueError), an input of a size
    that a model of one input size (see :func:`fixed_input_size`) does not read."""
    size = fixed_input_size(model)
    if size is not None and (height, width) != size:
        raise ValueError(
            f"{argument}: {type(model).__name__} reads only {size[0]} x {size[1]} inputs, got {height} x {width}; "
            f"resize the pictures as you preprocess them (preprocess= with torchvision.transforms.Resize({size}))"
        )


def check_image(model: nn.Module, x, argument: str = "x") -> Tensor:
    """One preprocessed image, ``(C, H, W)`` or ``(1, C, H, W)`` -> a fresh ``(1, C, H, W)`` float tensor on
    the model's device, detached from any graph the caller holds."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{argument}: expected a torch.Tensor of shape (C, H, W) or (1, C, H, W), got {type(x).__name__}; "
            "preprocess the picture first (e.g. with the model's transforms)"
        )
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{argument}: expected shape (C, H, W) or (1, C, H, W), got {tuple(x.shape)}")
    if x.shape[0] != 1:
        raise ValueError(
            f"{argument}: expected one image, got a batch of {x.shape[0]} (shape {tuple(x.shape)}); "
            f"pass {argument}[i] for the i-th image"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{argument}: expected a floating-point tensor (a preprocessed image), got dtype {x.dtype}"
        )
    channels = input_channels(model)
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{argument}: {type(model).__name__} reads {channels}-channel images, got {x.shape[1]} channels "
            f"(shape {tuple(x.shape)})"
        )
    check_input_size(model, x.shape[2], x.shape[3], argument)
    if not torch.isfinite(x).all():
        raise ValueError(f"{argument}: contains NaN or infinite values; expected finite pixel values")
    return x.detach().to(model_device(model), copy=True)


def check_int(value, argument: str) -> int:
    """An integer (Python, NumPy or a one-element integer tensor), never a bool or a float."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point() and value.dtype != torch.bool:
        return int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argument}: expected an int, got {type(value).__name__} {value!r}")
    return int(value)


def check_target(target, num_classes: int) -> int:
    index = check_int(target, "target")
    if not 0 <= index < num_classes:
        raise ValueError(f"target: class index {index} is out of range; the model has classes 0..{num_classes - 1}")
    return index


def check_positive_int(value, argument: str) -> int:
    number = check_int(value, argument)
    if number < 1:
        raise ValueError(f"{argument}: expected a positive int, got {number}")
    return number


def check_callable_pair(value, argument: str) -> tuple:
    """One callable (or None) for both of two models, or a pair ``(for model A, for model B)`` -> the pair."""
    expected = f"{argument}: expected a callable or a pair (for model A, for model B) of callables"
    first = second = value
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise TypeError(f"{expected}, got a {type(value).__name__} of {len(value)}")
        first, second = value
    for model, item in (("A", first), ("B", second)):
        if item is not None and not callable(item):
            raise TypeError(f"{expected}, got {type(item).__name__} for model {model}")
    return first, second


def check_pair(value, argument: str) -> tuple[int, int]:
    """An int or an ``(h, w)`` pair of positive ints -> ``(h, w)``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{argument}: expected an int or an (h, w) pair, got {len(value)} values {value!r}")
        items = value
    else:
        items = (value, value)
    try:
        pair = tuple(check_int(item, argument) for item in items)
    except TypeError:
        raise TypeError(f"{argument}: expected an int or an (h, w) pair of ints, got {value!r}") from None
    if min(pair) < 1:
        raise ValueError(f"{argument}: expected sizes of at least 1 pixel, got {value!r}")
    return pair


def check_window(window, stride, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Occlusion window and stride -> ``((wh, ww), (sh, sw))``, each fitting the ``height x width`` image."""
    window_hw = check_pair(window, "window")
    stride_hw = check_pair(stride, "stride")
    if window_hw[0] > height or window_hw[1] > width:
        raise ValueError(f"window: {window!r} is larger than the image ({height} x {width} pixels)")
    for axis, size in ((0, height), (1, width)):
        # A stride longer than the window would leave pixels that no window covers (and no attribution).
        if window_hw[axis] < size and stride_hw[axis] > window_hw[axis]:
            raise ValueError(f"stride: {stride!r} is longer than the window {window!r}; use at most the window size")
    return window_hw, stride_hw


def check_baseline(baseline, image: Tensor) -> Tensor:
    """A number or a tensor broadcastable to the image -> a ``(1, C, H, W)`` tensor like the image."""
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        if not math.isfinite(baseline):
            raise ValueError(f"baseline: expected a finite number, got {baseline!r}")
        return torch.full_like(image, float(baseline))
    if not isinstance(baseline, Tensor):
        raise TypeError(
            f"baseline: expected a number or a tensor broadcastable to x {tuple(image.shape[1:])}, "
            f"got {type(baseline).__name__}"
        )
    try:
        expanded = torch.broadcast_to(baseline.detach().to(image), image.shape)
    except RuntimeError:
        raise ValueError(
            f"baseline: shape {tuple(baseline.shape)} does not broadcast to x {tuple(image.shape[1:])}"
        ) from None
    if not torch.isfinite(expanded).all():
        raise ValueError("baseline: contains NaN or infinite values")
    return expanded.clone()


def check_filters(filters, count: int, argument: str = "filters") -> list[int]:
    """A filter index or a sequence of them -> a list of ints in ``[0, count)``."""
    if isinstance(filters, Tensor):
        filters = filters.tolist()
    if isinstance(filters, range):
        filters = list(filters)
    if isinstance(filters, Sequence) and not isinstance(filters, str):
        if len(filters) == 0:
            raise ValueError(f"{argument}: expected at least one filter index, got an empty sequence")
        indices = [check_int(item, argument) for item in filters]
    else:
        indices = [check_int(filters, argument)]
    wrong = [index for index in indices if not 0 <= index < count]
    if wrong:
        raise ValueError(f"{argument}: index {wrong[0]} is out of range; the layer has filters 0..{count - 1}")
    return indices


def check_normalize(normalize, channels: int) -> tuple[Tensor, Tensor]:
    """``(mean, std)``, each a number or one value per channel -> two ``(1, C, 1, 1)`` tensors."""
    if normalize is None:
        normalize = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.0,), (1.0,))
    if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise TypeError(f"normalize: expected a (mean, std) pair, got {normalize!r}")
    pair = []
    for name, values in zip(("mean", "std"), normalize):
        try:
            vector = torch.as_tensor(values, dtype=torch.float32).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"normalize: {name} must be a number or a sequence of numbers, got {values!r}") from None
        if vector.numel() == 1:
            vector = vector.expand(channels)
        if vector.numel() != channels:
            raise ValueError(
                f"normalize: {name} has {vector.numel()} values for a model reading {channels} channels"
            )
        pair.append(vector.reshape(1, channels, 1, 1).clone())
    if (pair[1] == 0).any():
        raise ValueError(f"normalize: std must not be zero, got {normalize[1]!r}")
    return pair[0], pair[1]
