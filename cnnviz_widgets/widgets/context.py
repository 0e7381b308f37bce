"""What the panels share about one model and one set of images, with the caches that keep them live.

No widget code here: a :class:`ModelContext` turns the user's displayable pictures into model inputs, remembers
what each computation gave for an image and a layer, and serialises access to the model (the methods hook
into it, so two threads must not run it at once). Panels of one dashboard share a single context.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Callable, Hashable

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .. import methods
from ..data import embed, evaluate
from ..layers import conv_layers, last_conv_layer, resolve_layer
from ..probe import probe
from . import drawing

# EfficientNet-Lite0 has 49 conv layers: room for every layer of two images.
FEATURE_CACHE_ENTRIES = 112
HEATMAP_CACHE_ENTRIES = 256


class LRUCache:
    """A small thread-safe least-recently-used cache: ``get(key, compute)`` computes each key once."""

    def __init__(self, entries: int):
        self._entries = entries
        self._values: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], object]):
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = compute()
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self._entries:
                self._values.popitem(last=False)
        return value

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._values


def as_picture(item) -> Image.Image:
    """A displayable image (PIL image, or HxW / HxWx3 / HxWx4 array, uint8 or float in [0, 1]) -> RGB PIL."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, Tensor):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        array = item
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ValueError(f"images: a picture must be HxW, HxWx3 or HxWx4, got an array of shape {item.shape}")
        if array.dtype != np.uint8:
            array = np.clip(np.nan_to_num(array.astype(np.float32)) * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    raise TypeError(f"images: expected PIL images or uint8 arrays, got {type(item).__name__}")


def tensor_picture(x: Tensor) -> Image.Image:
    """A model input (C, H, W) -> a picture, each channel min-max scaled: used when no picture was given."""
    pixels = x.detach().float().cpu()
    low = pixels.amin(dim=(1, 2), keepdim=True)
    high = pixels.amax(dim=(1, 2), keepdim=True)
    scaled = ((pixels - low) / (high - low).clamp(min=1e-12)).numpy()
    return as_picture(scaled[0] if scaled.shape[0] != 3 else np.moveaxis(scaled, 0, -1))


def _first_channel(output) -> np.ndarray:
    tensor = output if isinstance(output, Tensor) else torch.as_tensor(np.asarray(output))
    while tensor.ndim > 3:
        tensor = tensor[0]
    if tensor.ndim == 2:
        tensor = tensor[None]
    return tensor[0].detach().float().cpu().numpy()


def input_crop_box(preprocess: Callable, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part ``(left, top, right, bottom)`` of a picture of ``size`` that ``preprocess`` hands the model.

    Preprocessing usually resizes and centre-crops; overlays must be drawn on that crop, not on the whole
    picture. The crop is measured, not guessed: ``preprocess`` is run on black, white and two ramp pictures,
    and the ramps' values at the output's borders say which input columns and rows they came from. Whatever
    the pipeline does with colours (normalisation, inversion, greyscale) is an affine map per channel and
    cancels out. A pipeline this cannot read (random crops, non-picture outputs) gets the whole picture.
    """
    width, height = size
    whole = (0.0, 0.0, float(width), float(height))
    if width < 2 or height < 2:
        return whole
    ramp_x = np.broadcast_to(np.linspace(0, 255, width).round().astype(np.uint8)[None, :, None], (height, width, 3))
    ramp_y = np.broadcast_to(np.linspace(0, 255, height).round().astype(np.uint8)[:, None, None], (height, width, 3))
    try:
        black, white, along_x, along_y = (
            _first_channel(preprocess(Image.fromarray(np.ascontiguousarray(array))))
            for array in (np.zeros((height, width, 3), np.uint8), np.full((height, width, 3), 255, np.uint8), ramp_x, ramp_y)
        )
    except Exception:  # noqa: BLE001 - an unreadable pipeline only costs the overlay its crop
        return whole
    scale = white - black
    if black.shape != along_x.shape or np.abs(scale).min() < 1e-6:
        return whole
    fraction_x = ((along_x - black) / scale).mean(axis=0)
    fraction_y = ((along_y - black) / scale).mean(axis=1)
    left, right = _span(fraction_x, width)
    top, bottom = _span(fraction_y, height)
    if not (right > left + 1 and bottom > top + 1):
        return whole
    return (left, top, right, bottom)


def _span(fractions: np.ndarray, length: int) -> tuple[float, float]:
    """Input interval covered by an output row whose pixels read ``fractions`` of a 0..1 ramp over ``length``."""
    count = len(fractions)
    # Output pixel j samples input position start + (j + 0.5) * step; the ramp reads (position - 0.5) / (length - 1).
    first, last = fractions[0] * (length - 1) + 0.5, fractions[-1] * (length - 1) + 0.5
    step = (last - first) / max(count - 1, 1)
    start = first - 0.5 * step
    return float(np.clip(start, 0, length)), float(np.clip(start + step * count, 0, length))


def default_preprocess(picture: Image.Image) -> Tensor:
    """Pixels in [0, 1], channels first: for models trained on unnormalised pictures."""
    array = np.asarray(picture, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


class ModelContext:
    """A model, its images and what has been computed from them.

    images: displayable pictures (PIL images or uint8 arrays), as a list or a ``{name: picture}`` dict; or a
        tensor ``(N, C, H, W)`` of model inputs, shown as pictures by min-max scaling.
    preprocess: picture -> model input ``(1, C, H, W)`` or ``(C, H, W)``, e.g. ``weights.transforms()``;
        without it pictures are fed as pixels in [0, 1].
    labels: the true class of each image, for the mistakes view and the projector's colours.
    """

    def __init__(self, model, images, preprocess=None, class_names=None, labels=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.lock = threading.RLock()
        self._inputs: list[Tensor] | None = None
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1] in (1, 3) and preprocess is None:
            images = torch.from_numpy(images)
        if isinstance(images, Tensor):
            if images.ndim != 4:
                raise ValueError(f"images: a tensor of images must be (N, C, H, W), got shape {tuple(images.shape)}")
            self._inputs = [image.unsqueeze(0) for image in images.detach().float()]
            self.names = [str(i) for i in range(len(images))]
            self.pictures = [tensor_picture(image[0]) for image in self._inputs]
        elif isinstance(images, dict):
            self.names = [str(name) for name in images]
            self.pictures = [as_picture(item) for item in images.values()]
        elif isinstance(images, (Image.Image, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
            self.names, self.pictures = ["0"], [as_picture(images)]
        else:
            try:
                items = list(images)
            except TypeError:
                raise TypeError(
                    "images: expected a list or dict of pictures (PIL or uint8 arrays) or a tensor (N, C, H, W), "
                    f"got {type(images).__name__}"
                ) from None
            self.pictures = [as_picture(item) for item in items]
            self.names = [str(i) for i in range(len(items))]
        if not self.pictures:
            raise ValueError("images: no images given")
        self.preprocess = preprocess or default_preprocess
        self.labels = None if labels is None else np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).reshape(-1)
        if self.labels is not None and len(self.labels) != len(self.pictures):
            raise ValueError(f"labels: {len(self.labels)} labels for {len(self.pictures)} images; give one per image")
        self._class_names = None if class_names is None else [str(name) for name in class_names]
        self._tensors = LRUCache(4096)
        self._views = LRUCache(512)
        self._boxes = LRUCache(64)
        self._probabilities = LRUCache(4096)
        self._feature_maps = LRUCache(FEATURE_CACHE_ENTRIES)
        self._heatmaps = LRUCache(HEATMAP_CACHE_ENTRIES)
        self._baselines = LRUCache(32)
        self._once = LRUCache(64)
        self._worker_model: nn.Module | None = None
        self.worker_lock = threading.RLock()

    @property
    def count(self) -> int:
        return len(self.pictures)

    def check_index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"image: expected an image index (int), got {type(index).__name__}")
        if not 0 <= index < self.count:
            raise ValueError(f"image: index {index} out of range 0..{self.count - 1}")
        return int(index)

    def input(self, index: int) -> Tensor:
        """The model input ``(1, C, H, W)`` for image ``index``."""
        index = self.check_index(index)

        def compute() -> Tensor:
            if self._inputs is not None:
                return self._inputs[index]
            x = self.preprocess(self.pictures[index])
            if not isinstance(x, Tensor):
                raise TypeError(f"preprocess: must return a tensor, returned {type(x).__name__}")
            return (x.unsqueeze(0) if x.ndim == 3 else x).detach()

        return self._tensors.get(index, compute)

    def inputs(self) -> Tensor:
        """Every image as the model reads it, stacked: ``(N, C, H, W)``."""
        return self._once.get("inputs", lambda: torch.cat([self.input(i) for i in range(self.count)]))

    def view(self, index: int) -> np.ndarray:
        """The picture as the model sees it: the crop ``preprocess`` takes, at the input's size, uint8 RGB."""
        index = self.check_index(index)

        def compute() -> np.ndarray:
            height, width = self.input(index).shape[-2:]
            picture = self.pictures[index]
            if self._inputs is not None:
                return np.asarray(picture)
            box = self._boxes.get(picture.size, lambda: input_crop_box(self.preprocess, picture.size))
            return np.asarray(picture.resize((width, height), Image.BILINEAR, box=box))

        return self._views.get(index, compute)

    def probabilities(self, index: int) -> np.ndarray:
        """Softmax over the classes for image ``index``, float64 ``(K,)``."""
        index = self.check_index(index)

        return self._probabilities.get(index, lambda: self.predict(self.input(index)))

    def predict(self, x: Tensor) -> np.ndarray:
        """Softmax over the classes for a model input ``(1, C, H, W)`` (e.g. an occluded picture), float64 ``(K,)``."""
        with self.lock, probe(self.model) as capture:
            logits = capture.run(x.to(self.device))
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise ValueError("model: expected logits of shape (N, K) from the model")
        return torch.softmax(logits.double(), dim=1)[0].cpu().numpy()

    @property
    def num_classes(self) -> int:
        return len(self.probabilities(0))

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self._class_names = [f"class {k}" for k in range(self.num_classes)]
        return self._class_names

    def ranked_classes(self, index: int) -> list[tuple[int, float]]:
        """Every class with its probability for image ``index``, most probable first."""
        probabilities = self.probabilities(index)
        order = np.argsort(-probabilities, kind="stable")
        return [(int(k), float(probabilities[k])) for k in order]

    @property
    def device(self) -> torch.device:
        for tensor in self.model.parameters():
            return tensor.device
        return torch.device("cpu")

    def conv_layers(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every conv layer with its output shape ``(C, h, w)`` for these images, in forward order."""

        def compute():
            layers = conv_layers(self.model)
            if not layers:
                raise ValueError(f"model: {type(self.model).__name__} has no nn.Conv2d layer to show")
            with self.lock, probe(self.model, outputs=layers) as capture:
                capture.run(self.input(0).to(self.device))
            return [(name, tuple(capture.outputs[name].shape[1:])) for name, _ in layers if name in capture.outputs]

        return self._once.get("conv_layers", compute)

    def default_layer(self) -> str:
        return last_conv_layer(self.model)

    def layer_name(self, layer) -> str:
        return resolve_layer(self.model, layer)[0]

    def feature_maps(self, index: int, layer: str) -> Tensor:
        index = self.check_index(index)
        layer = self.layer_name(layer)

        def compute() -> Tensor:
            with self.lock:
                return methods.feature_maps(self.model, self.input(index), layer)

        return self._feature_maps.get((index, layer), compute)

    def grad_cam(self, index: int, layer: str, target: int) -> Tensor:
        index = self.check_index(index)
        layer = self.layer_name(layer)

        def compute() -> Tensor:
            with self.lock:
                return methods.grad_cam(self.model, self.input(index), layer, target)

        return self._heatmaps.get(("grad_cam", index, layer, int(target)), compute)

    def guided_backprop(self, index: int, target: int) -> Tensor:
        index = self.check_index(index)

        def compute() -> Tensor:
            with self.lock:
                return methods.guided_backprop(self.model, self.input(index), target)

        return self._heatmaps.get(("guided_backprop", index, int(target)), compute)

    def guided_grad_cam(self, index: int, layer: str, target: int) -> Tensor:
        guided = self.guided_backprop(index, target)
        cam = self.grad_cam(index, layer, target)
        return guided * cam.unsqueeze(0)

    def filter_weights(self, layer: str) -> Tensor:
        layer = self.layer_name(layer)
        def compute() -> Tensor:
            with self.lock:
                return methods.filter_weights(self.model, layer)

        return self._once.get(("weights", layer), compute)

    def baseline(self, index: int, kind: str) -> Tensor:
        """What fills an occluding patch, in the model's input space (see ``drawing.BASELINES``).

        Black and grey are pictures of that colour passed through ``preprocess``, as the user's picture is.
        """
        index = self.check_index(index)
        x = self.input(index)

        def uniform(level: int) -> Tensor:
            if self._inputs is not None:
                return torch.full_like(x, level / 255.0)
            size = self.pictures[index].size
            picture = Image.new("RGB", size, (level, level, level))
            filled = self.preprocess(picture)
            return (filled.unsqueeze(0) if filled.ndim == 3 else filled).detach().to(x)

        def compute() -> Tensor:
            black = uniform(0) if kind == "black" else None
            grey = uniform(128) if kind == "grey" else None
            return drawing.baseline_input(x, kind, black, grey).contiguous()

        return self._baselines.get((index, kind), compute)

    @property
    def worker_model(self) -> nn.Module:
        """A private copy of the model for long tasks (occlusion, patterns, embeddings).

        Long tasks run for seconds; on their own copy they never hold the lock the live views need.
        Hold ``worker_lock`` while using it: long tasks of different panels take turns.
        """
        with self.lock:
            if self._worker_model is None:
                self._worker_model = copy.deepcopy(self.model)
            return self._worker_model

    def evaluation(self, model: nn.Module | None = None):
        """Predictions, probabilities and confusion over every image (needs labels)."""
        if self.labels is None:
            raise ValueError("labels: the mistakes view needs the true class of each image; pass labels=")
        return self._once.get("evaluation", lambda: evaluate(model or self.worker_model, self.inputs(), self.labels, progress=False))

    def embeddings(self, layer: str | None, model: nn.Module | None = None, prefix: str = "") -> np.ndarray:
        """Embeddings of every image at ``layer`` (None: the classifier's input), cached per layer.

        model: what runs the images (default: the worker copy); prefix: what ``model`` adds in front of the
        user's layer names, e.g. ``"model."`` for an :class:`~.tasks.Interruptible` wrapper.
        """
        target_layer = None if layer is None else prefix + layer
        return self._once.get(
            ("embeddings", layer), lambda: embed(model or self.worker_model, self.inputs(), target_layer, progress=False)
        )

    def predictions(self, model: nn.Module | None = None) -> np.ndarray:
        """The predicted class of every image (from the evaluation when labels are known)."""
        if self.labels is not None:
            return self.evaluation(model).predictions

        def compute() -> np.ndarray:
            source = model or self.worker_model
            with probe(source) as capture:
                logits = [capture.run(batch.to(self.device)) for batch in self.inputs().split(64)]
            return torch.cat(logits).argmax(dim=1).cpu().numpy()

        return self._once.get("predictions", compute)
