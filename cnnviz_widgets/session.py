"""What panels compute with: a user's model (through its private replicas), its images, and caches.

No widget code here. A :class:`Session` turns the user's displayable pictures into model inputs, runs the
methods on the model's replicas (:mod:`cnnviz_widgets.replica`) and remembers what each computation gave
for an image, a layer and a class. Panels of one dashboard share a session; every panel and every function
on the same model share its replicas.

Caches are keyed on the generation of the user's weights: once the user trains the model, nothing computed
from the old weights is served again, and :meth:`Session.watch` tells the panels so they can redraw.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Callable, Hashable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from . import methods
from .cache import DiskCache, callable_digest, check_cache, weights_digest
from .cache import key as cache_key
from .data import Evaluation, embed, evaluate_and_embed
from .fast import forwarder
from .inputs import check_model, input_channels, model_device
from .layers import called_layers, heatmap_layer, is_conv, resolve_layer
from .methods.occlusion import fill_of
from .outputs import check_output, logits_of
from .probe import probe
from .render import to_picture
from .replica import VIEWS, WORK, replicas_of
from .sources import PictureSource, default_preprocess, picture_source

# EfficientNet-Lite0 has 49 conv layers: room for every layer of two images.
FEATURE_CACHE_ENTRIES = 112
HEATMAP_CACHE_ENTRIES = 256
INPUT_CACHE_ENTRIES = 256
WATCH_SECONDS = 1.0
"""How often a watched session looks at the user's weights: a walk over the parameters' version counters
(well under a millisecond for a ResNet50), so the views follow a training loop within a second or two."""
# Images per batch of the pass over a test set. Activations that stay in the CPU's caches beat large
# batches: 2,000 JPEGs through EfficientNet-Lite0 read at 57 images/s in batches of 16, 48 in batches of 8
# and 35 in batches of 64.
PASS_BATCH_SIZE = 16
PASS_TOP_CLASSES = 10
"""What the pass over the images keeps of each image's probabilities: its 10 most probable classes (every
probability when there are no more classes). The views need only the predicted class's probability."""


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

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._values


def tensor_picture(x: Tensor) -> Image.Image:
    """A model input (C, H, W) -> a picture, each channel min-max scaled: used when no picture was given."""
    pixels = x.detach().float().cpu()
    low = pixels.amin(dim=(1, 2), keepdim=True)
    high = pixels.amax(dim=(1, 2), keepdim=True)
    return to_picture(((pixels - low) / (high - low).clamp(min=1e-12)).numpy())


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


def normalization_of(preprocess, size: tuple[int, int] = (32, 32)):
    """``(mean, std)`` per channel such that the model input is ``(pixels - mean) / std``, read off ``preprocess``.

    Feeding a black and a white picture gives ``-mean / std`` and ``(1 - mean) / std``; a pipeline that
    inverts the picture has a negative std. None when white and black come out the same in a channel.
    """
    try:
        black, white = (preprocess(Image.new("RGB", size, colour)) for colour in ((0, 0, 0), (255, 255, 255)))
        black, white = (torch.as_tensor(t).float().reshape(-1, *torch.as_tensor(t).shape[-3:])[0] for t in (black, white))
    except Exception:  # noqa: BLE001 - the patterns fall back to the method's default normalisation
        return None
    low, high = black.mean(dim=(1, 2)), white.mean(dim=(1, 2))
    span = high - low
    if (span.abs() <= 1e-6).any():
        return None
    std = 1.0 / span
    mean = -low * std
    return tuple(mean.tolist()), tuple(std.tolist())


def _pictures_of(images, preprocess) -> tuple[Sequence, list[Tensor] | None]:
    """``(pictures, inputs)``; inputs is None unless the images were given as model inputs already."""
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1] in (1, 3) and preprocess is None:
        images = torch.from_numpy(images)
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(f"images: a tensor of images must be (N, C, H, W), got shape {tuple(images.shape)}")
        inputs = [image.unsqueeze(0) for image in images.detach().float()]
        pictures = PictureSource([str(i) for i in range(len(inputs))], lambda index: tensor_picture(inputs[index][0]))
        return pictures, inputs
    return picture_source(images), None


class Session:
    """A model, its images and what has been computed from them.

    images: displayable pictures (PIL images or uint8 arrays) as a list or a ``{name: picture}`` dict; a
        folder (labels from its subfolders, as ``ImageFolder``); a list of file paths; a torch Dataset of
        pictures or ``(picture, label)`` pairs; or a tensor ``(N, C, H, W)`` of model inputs, shown as pictures
        by min-max scaling. Pictures are decoded when needed, not up front.
    preprocess: picture -> model input ``(1, C, H, W)`` or ``(C, H, W)``, e.g. ``weights.transforms()``;
        without it pictures are fed as pixels in [0, 1].
    labels: the true class of each image, for the mistakes view and the projector's colours; by default
        the labels the images come with (a folder's subfolders, a Dataset's pairs). When the subfolders are
        named after the model's classes (``class_names``), each picture gets the class of its folder's name.
    class_names: one name per class of the model; by default a folder's subfolder names when there are as
        many as the model has classes.
    output: a callable from the model's output to its logits (see :mod:`cnnviz_widgets.outputs`).
    cache: where the pass over every image keeps its results (predictions, probabilities, embeddings):
        None for the platform's user cache folder, a folder path, or False for no disk cache.
    """

    def __init__(self, model, images, preprocess=None, class_names=None, labels=None, output=None, cache=None):
        self.model = check_model(model)
        self.output = check_output(output)
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"preprocess: expected a callable from a picture to a model input, got {type(preprocess).__name__}")
        self.pictures, self._given_inputs = _pictures_of(images, preprocess)
        if not len(self.pictures):
            raise ValueError("images: no images given")
        self._default_preprocess = preprocess is None
        self.preprocess = preprocess or default_preprocess
        self.labels = None if labels is None else np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).reshape(-1)
        if self.labels is not None and len(self.labels) != len(self.pictures):
            raise ValueError(f"labels: {len(self.labels)} labels for {len(self.pictures)} images; give one per image")
        folder = check_cache(cache)
        self._disk = None if folder is None else DiskCache(folder)
        self.replicas = replicas_of(model)
        self._generation = self.replicas.check()
        self._caches = {
            name: LRUCache(entries)
            for name, entries in (
                ("inputs", INPUT_CACHE_ENTRIES), ("views", 512), ("boxes", 64), ("probabilities", 4096),
                ("feature_maps", FEATURE_CACHE_ENTRIES), ("heatmaps", HEATMAP_CACHE_ENTRIES), ("baselines", 32),
                ("once", 64),
            )
        }
        self._listeners: list[Callable[[int], None]] = []
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.class_names = self._checked_class_names(class_names)
        if self.labels is None and getattr(self.pictures, "labels", None) is not None:
            self.labels = self._source_labels()

    @property
    def names(self) -> list[str]:
        return self.pictures.names

    def _source_labels(self) -> np.ndarray:
        """The labels the pictures came with, as the model's class indices."""
        labels, folders = self.pictures.labels, self.pictures.class_names
        if folders is not None and all(folder in self.class_names for folder in folders):
            return np.asarray([self.class_names.index(folders[label]) for label in labels], dtype=np.int64)
        if labels.max() >= self.num_classes:
            given = folders or sorted(set(labels.tolist()))
            shown = ", ".join(map(str, given[:5])) + (", ..." if len(given) > 5 else "")
            raise ValueError(
                f"labels: the images come with {len(given)} classes ({shown}), but the model outputs "
                f"{self.num_classes}; name the subfolders after class_names, or pass labels="
            )
        return labels

    def _checked_class_names(self, class_names) -> list[str]:
        count = self.num_classes
        folders = getattr(self.pictures, "class_names", None)
        if class_names is None and folders is not None and len(folders) == count:
            return list(folders)
        if class_names is None:
            return [f"class {k}" for k in range(count)]
        if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__len__"):
            raise TypeError(f"class_names: expected a list of {count} names, got {type(class_names).__name__}")
        if len(class_names) != count:
            raise ValueError(
                f"class_names: {len(class_names)} names given, but the model outputs {count} classes; give one per class"
            )
        return [str(name) for name in class_names]

    # -- the user's weights ------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """How many times the user's weights were seen changed since this session began."""
        return self._generation

    def sync(self) -> bool:
        """Look at the user's weights; on a change, drop every cache of the old ones. True if they changed."""
        generation = self.replicas.check()
        if generation == self._generation:
            return False
        self._generation = generation
        for name, cache in self._caches.items():
            if name not in ("inputs", "views", "boxes"):
                cache.clear()
        return True

    def _cached(self, cache: str, key: tuple, compute: Callable[[], object]):
        self.sync()
        return self._caches[cache].get((self._generation, *key), compute)

    def watch(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(generation)`` from a background thread once the user's weights have changed and
        then held still for one more look (a training loop in progress is not chased step by step)."""
        self._listeners.append(listener)
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="cnnviz-weights-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        shown = self._generation
        last = None
        while not self._watch_stop.wait(WATCH_SECONDS):
            try:
                now = self.replicas.check()
            except RuntimeError:
                return
            if now != shown and now == last:
                shown = now
                self.sync()
                for listener in list(self._listeners):
                    listener(now)
            last = now

    def close(self) -> None:
        """Stop watching and free every cache (the replicas stay: other panels of the model share them)."""
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(WATCH_SECONDS * 3)
        self._listeners.clear()
        for cache in self._caches.values():
            cache.clear()

    # -- images ------------------------------------------------------------------------------------------

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
        """The model input ``(1, C, H, W)`` for image ``index``, on the CPU."""
        index = self.check_index(index)

        def compute() -> Tensor:
            if self._given_inputs is not None:
                return self._given_inputs[index]
            x = self.preprocess(self.pictures[index])
            if not isinstance(x, Tensor):
                raise TypeError(f"preprocess: must return a tensor, returned {type(x).__name__}")
            if x.ndim not in (3, 4):
                raise ValueError(f"preprocess: must return (C, H, W) or (1, C, H, W), returned shape {tuple(x.shape)}")
            x = (x.unsqueeze(0) if x.ndim == 3 else x).detach()
            channels = input_channels(self.model)
            if channels is not None and x.shape[1] != channels:
                given = "the default preprocessing (pixels in [0, 1], RGB)" if self._default_preprocess else "preprocess"
                raise ValueError(
                    f"preprocess: {given} makes {x.shape[1]}-channel inputs, but {type(self.model).__name__} reads "
                    f"{channels}-channel images; pass preprocess=, a callable from a picture to the model's input"
                )
            return x

        return self._caches["inputs"].get(index, compute)

    def inputs(self) -> Tensor:
        """Every image as the model reads it, stacked: ``(N, C, H, W)``."""
        if self._given_inputs is not None:
            return torch.cat(self._given_inputs)
        return torch.cat([self.input(i) for i in range(self.count)])

    def view(self, index: int) -> np.ndarray:
        """The picture as the model sees it: the crop ``preprocess`` takes, at the input's size, uint8 RGB."""
        index = self.check_index(index)

        def compute() -> np.ndarray:
            height, width = self.input(index).shape[-2:]
            picture = self.pictures[index]
            if self._given_inputs is not None:
                return np.asarray(picture)
            box = self._caches["boxes"].get(picture.size, lambda: input_crop_box(self.preprocess, picture.size))
            return np.asarray(picture.resize((width, height), Image.BILINEAR, box=box))

        return self._caches["views"].get(index, compute)

    # -- classes -----------------------------------------------------------------------------------------

    def probabilities(self, index: int) -> np.ndarray:
        """Softmax over the classes for image ``index``, float64 ``(K,)``."""
        index = self.check_index(index)
        return self._cached("probabilities", (index,), lambda: self.predict(self.input(index)))

    def predict(self, x: Tensor) -> np.ndarray:
        """Softmax over the classes for a model input ``(1, C, H, W)``, float64 ``(K,)``."""
        with self.replicas.borrow(VIEWS) as replica, probe(replica) as capture:
            logits = logits_of(capture.run(x.to(model_device(replica))), self.output)
        return torch.softmax(logits.double(), dim=1)[0].cpu().numpy()

    def predict_occluded(self, x: Tensor) -> np.ndarray:
        """As :meth:`predict`, for a picture with a patch in it: on the replica's fast copy, as occlusion's
        maps (the copy is made on the first call; then a call on EfficientNet-Lite0 took 28 ms against 38
        on the replica)."""
        with self.replicas.borrow(VIEWS) as replica, probe(replica), torch.no_grad():
            x = x.to(model_device(replica))
            logits = logits_of(forwarder(replica, x, "live patch", len(x))(x), self.output)
        return torch.softmax(logits.double(), dim=1)[0].cpu().numpy()

    @property
    def num_classes(self) -> int:
        return len(self.probabilities(0))

    def ranked_classes(self, index: int) -> list[tuple[int, float]]:
        """Every class with its probability for image ``index``, most probable first."""
        probabilities = self.probabilities(index)
        order = np.argsort(-probabilities, kind="stable")
        return [(int(k), float(probabilities[k])) for k in order]

    # -- layers ------------------------------------------------------------------------------------------

    def _calls(self):
        def compute():
            with self.replicas.borrow(VIEWS) as replica:
                return called_layers(replica, self.input(0).to(model_device(replica)), self.output)

        return self._cached("once", ("calls",), compute)

    def conv_layers(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every conv layer the forward calls, with its output shape ``(C, h, w)`` for these images, in call order."""
        layers = [(call.name, call.shape) for call in self._calls() if is_conv(call)]
        if not layers:
            raise ValueError(f"model: {type(self.model).__name__} calls no conv layer with spatial maps to show")
        return layers

    def heatmap_layer(self) -> str:
        """Where Grad-CAM looks by default (see :func:`~cnnviz_widgets.layers.heatmap_layer`)."""
        return heatmap_layer(self._calls(), self.model)

    def first_layer(self) -> str:
        """The first conv layer called: its filters read the picture's colours, its maps are the sharpest."""
        return self.conv_layers()[0][0]

    def layer_name(self, layer) -> str:
        return resolve_layer(self.model, layer)[0]

    # -- views -------------------------------------------------------------------------------------------

    def feature_maps(self, index: int, layer: str) -> Tensor:
        index = self.check_index(index)
        layer = self.layer_name(layer)
        return self._cached(
            "feature_maps", (index, layer), lambda: methods.feature_maps(self.model, self.input(index), layer, output=self.output)
        )

    def grad_cam(self, index: int, layer: str, target: int, contrast: int | None = None) -> Tensor:
        """Grad-CAM of ``target``; with ``contrast``, of ``logit[target] - logit[contrast]``."""
        index = self.check_index(index)
        layer = self.layer_name(layer)
        return self._cached(
            "heatmaps",
            ("grad_cam", index, layer, int(target), contrast),
            lambda: methods.grad_cam(self.model, self.input(index), layer, target, output=self.output, contrast=contrast),
        )

    def guided_backprop(self, index: int, target: int) -> Tensor:
        index = self.check_index(index)
        return self._cached(
            "heatmaps",
            ("guided_backprop", index, int(target)),
            lambda: methods.guided_backprop(self.model, self.input(index), target, output=self.output),
        )

    def guided_grad_cam(self, index: int, layer: str, target: int) -> Tensor:
        return self.guided_backprop(index, target) * self.grad_cam(index, layer, target).unsqueeze(0)

    def filter_weights(self, layer: str) -> Tensor:
        layer = self.layer_name(layer)
        return self._cached("once", ("weights", layer), lambda: methods.filter_weights(self.model, layer))

    def baseline(self, index: int, kind: str) -> Tensor:
        """What fills an occluding patch, in the model's input space (see ``render.PATCH_FILLS``).

        Black and grey are pictures of that colour passed through ``preprocess``, as the user's picture is.
        """
        index = self.check_index(index)
        x = self.input(index)

        def uniform(level: int) -> Tensor:
            if self._given_inputs is not None:
                return torch.full_like(x, level / 255.0)
            picture = Image.new("RGB", self.pictures[index].size, (level, level, level))
            filled = self.preprocess(picture)
            return (filled.unsqueeze(0) if filled.ndim == 3 else filled).detach().to(x).expand_as(x)

        def compute() -> Tensor:
            if kind == "black":
                return uniform(0).contiguous()
            if kind == "grey":
                return uniform(128).contiguous()
            return fill_of({"image mean": "mean", "blurred": "blurred"}.get(kind, kind), x).contiguous()

        return self._cached("baselines", (index, kind), compute)

    # -- long work: on the WORK replica, so the live views stay free -------------------------------------

    def occlusion(self, index: int, target: int, window: int, stride: int, fill: str, checkpoint=None):
        with self.replicas.borrow(WORK) as replica:
            return methods.occlusion(
                replica, self.input(index), target, window, stride, self.baseline(index, fill),
                output=self.output, checkpoint=checkpoint,
            )

    def filter_patterns(self, layer: str, filters, size: int, steps: int, checkpoint=None):
        layer = self.layer_name(layer)
        with self.replicas.borrow(WORK) as replica:
            return methods.filter_patterns(
                replica, layer, filters, size=size, steps=steps, normalize=self.normalization(), checkpoint=checkpoint
            )

    def explanation(self, index: int, method: str, layer: str, target: int, checkpoint=None) -> Tensor:
        """The ``(H, W)`` importance map of ``method`` (see ``methods.explanations``), cached per settings."""
        index = self.check_index(index)
        layer = self.layer_name(layer)

        def compute() -> Tensor:
            with self.replicas.borrow(WORK) as replica:
                return methods.explanation(
                    replica, self.input(index), layer, target, method, output=self.output, checkpoint=checkpoint
                )

        return self._cached("heatmaps", ("explanation", index, method, layer, int(target)), compute)

    def faithfulness(self, index: int, method: str, layer: str, target: int, checkpoint=None):
        """Deletion and insertion curves of that map (Petsiuk et al. 2018), cached per settings."""
        saliency = self.explanation(index, method, layer, target, checkpoint)

        def compute():
            with self.replicas.borrow(WORK) as replica:
                return methods.deletion_insertion(
                    replica, self.input(index), target, saliency, output=self.output, checkpoint=checkpoint
                )

        return self._cached("heatmaps", ("faithfulness", index, method, self.layer_name(layer), int(target)), compute)

    def sanity(self, index: int, method: str, layer: str, target: int, checkpoint=None):
        """The cascading randomisation of the model for that map (Adebayo et al. 2018)."""
        index = self.check_index(index)
        layer = self.layer_name(layer)

        def compute():
            with self.replicas.borrow(WORK) as replica:
                return methods.sanity_check(
                    replica, self.input(index), target, method, layer=layer if method in methods.CAM_METHODS else None,
                    output=self.output, checkpoint=checkpoint,
                )

        return self._cached("heatmaps", ("sanity", index, method, layer, int(target)), compute)

    def normalization(self):
        """The ``(mean, std)`` the preprocessing applies, read off it (None when it is of another form)."""
        return self._caches["once"].get("normalization", lambda: normalization_of(self.preprocess))

    def evaluation(self, checkpoint=None, partial_every: float | None = None):
        """Predictions, probabilities and confusion over every image (needs labels).

        partial_every: seconds; if this call runs the pass, ``checkpoint(fraction_done, evaluation)`` also
        receives the evaluation of the images read so far every so often (see ``data.evaluate_and_embed``)."""
        if self.labels is None:
            raise ValueError("labels: the mistakes view needs the true class of each image; pass labels=")
        return self._dataset_pass(checkpoint, partial_every)[0]

    def embeddings(self, layer: str | None, checkpoint=None) -> np.ndarray:
        """Embeddings of every image at ``layer`` (None: the classifier's input, from the one pass), cached."""
        if layer is None:
            return self._dataset_pass(checkpoint)[1]

        def compute():
            with self.replicas.borrow(WORK) as replica:
                return embed(
                    replica, self._images(), layer, preprocess=self.preprocess, progress=False, output=self.output,
                    checkpoint=checkpoint,
                )

        return self._cached("once", ("embeddings", layer), compute)

    def predictions(self, checkpoint=None) -> np.ndarray:
        """The predicted class of every image."""
        return self._dataset_pass(checkpoint)[0].predictions

    def _images(self):
        """What a pass reads: the inputs given, or the pictures, which the pass preprocesses batch by batch."""
        return torch.cat(self._given_inputs) if self._given_inputs is not None else self.pictures

    def _dataset_pass(self, checkpoint=None, partial_every: float | None = None):
        """Evaluation and classifier-input embeddings of every image from a single pass, kept on disk."""

        def compute():
            entry = self._pass_entry()
            stored = None if entry is None else self._disk.load(entry)
            if stored is not None:
                evaluation = Evaluation(
                    stored["labels"], stored["predictions"], stored.get("probabilities"), stored["confusion"],
                    stored["top_classes"], stored["top_probabilities"],
                )
                return evaluation, stored["embeddings"]
            # Without labels the pass still gives predictions and embeddings; its confusion is not shown.
            labels = self.labels if self.labels is not None else np.zeros(self.count, dtype=np.int64)
            with self.replicas.borrow(WORK) as replica:
                evaluation, embeddings = evaluate_and_embed(
                    replica, self._images(), labels, batch_size=PASS_BATCH_SIZE, preprocess=self.preprocess,
                    progress=False, output=self.output, checkpoint=checkpoint, partial_every=partial_every,
                    top_k=PASS_TOP_CLASSES,
                )
            if entry is not None:
                names = ("labels", "predictions", "probabilities", "confusion", "top_classes", "top_probabilities")
                arrays = {name: getattr(evaluation, name) for name in names if getattr(evaluation, name) is not None}
                self._disk.save(entry, {**arrays, "embeddings": embeddings})
            return evaluation, embeddings

        return self._cached("once", ("pass",), compute)

    def _pass_entry(self) -> str | None:
        """The disk cache's key for this model, these pictures and this preprocessing; None when not cached."""
        if self._disk is None:
            return None
        if self._given_inputs is not None:
            pictures = torch.cat(self._given_inputs).numpy().tobytes()
        else:
            pictures = self.pictures.identity()
            if pictures is None:
                return None
        with self.replicas.borrow(VIEWS) as replica:
            weights = weights_digest(replica)
        labels = b"" if self.labels is None else self.labels.tobytes()
        return cache_key(weights, pictures, labels, callable_digest(self.preprocess), callable_digest(self.output))

