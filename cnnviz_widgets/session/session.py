"""What panels compute with: a user's model (through its private replicas), its images, and caches.

No widget code here. A :class:`Session` turns the user's displayable pictures into model inputs
(:mod:`.pictures`), runs the methods on the model's replicas (:mod:`.calls`) and the pass over every image
(:mod:`.dataset_pass`), and remembers what each computation gave for an image, a layer and a class. Panels
of one dashboard share a session; every panel and every function on the same model share its replicas.

One caching protocol, :meth:`Session.cached`, for everything computed from the weights (the panels' rendered
pictures included): it looks at the user's weights once per request, keys the result on their generation,
and drops the old generation's results when they change, so nothing computed from old weights is served
beside fresh ones. :meth:`Session.watch` tells the panels when the weights changed and held still.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..cache import DiskCache, LRUCache, check_cache, check_cache_size
from ..checkpoint import scaled
from ..diagnosis import Diagnosis, diagnosis_of
from ..fast import forwarder
from ..inputs import check_model, input_channels, model_device
from ..layers import called_layers, heatmap_layer, map_calls, resolve_layer
from ..outputs import check_output, logits_of
from ..probe import probe
from ..replica import VIEWS, Listeners, replicas_of
from ..sources import default_preprocess
from .calls import MethodCalls
from .dataset_pass import DatasetPass
from .pictures import input_crop_box, normalization_of, pictures_of

CACHE_ENTRIES = {
    "inputs": 256,
    "views": 512,
    "preprocessing": 64,
    "probabilities": 4096,
    # EfficientNet-Lite0 has 49 conv layers: room for every layer of two images.
    "feature_maps": 112,
    "heatmaps": 256,
    "baselines": 32,
    "once": 64,
    # What panels render (a 224 px overlay is about 250 KB with its PNG): every top class's Grad-CAM at a few
    # settings, and the feature-map grids of every layer of an image.
    "pictures": 256,
    "projections": 16,
}
"""Entries per cache: each a least-recently-used, single-flight :class:`~cnnviz_widgets.cache.LRUCache`.
``pictures`` and ``projections`` hold what panels render and project from the weights' results."""
WEIGHTLESS = ("inputs", "views", "preprocessing")
"""The caches that do not depend on the weights: kept when the weights change."""


class Session(MethodCalls):
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
    cache_size: the most the cache folder keeps, in bytes or as a string such as ``"500MB"`` or ``"2GB"``;
        None reads the ``CNNVIZ_CACHE_SIZE`` environment variable, else 2 GB. The least recently used
        entries go first.
    """

    def __init__(
        self, model, images, preprocess=None, class_names=None, labels=None, output=None, cache=None, cache_size=None
    ):
        self.model = check_model(model)
        self.output = check_output(output)
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"preprocess: expected a callable from a picture to a model input, got {type(preprocess).__name__}")
        self.pictures, self.given_inputs = pictures_of(images, preprocess)
        if not len(self.pictures):
            raise ValueError("images: no images given")
        self._default_preprocess = preprocess is None
        self.preprocess = preprocess or default_preprocess
        self.labels = None if labels is None else np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).reshape(-1)
        if self.labels is not None and len(self.labels) != len(self.pictures):
            raise ValueError(f"labels: {len(self.labels)} labels for {len(self.pictures)} images; give one per image")
        folder = check_cache(cache)
        size = check_cache_size(cache_size)
        self.dataset_pass = DatasetPass(self, None if folder is None else DiskCache(folder, size))
        self.replicas = replicas_of(model)
        self._generation = self.replicas.check()
        self._caches = {name: LRUCache(entries) for name, entries in CACHE_ENTRIES.items()}
        self._listeners = Listeners()
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
        return self._follow(self.replicas.check())

    def _follow(self, generation: int) -> bool:
        if generation <= self._generation:
            return False
        self._generation = generation
        for name, cache in self._caches.items():
            if name not in WEIGHTLESS:
                cache.clear()
        return True

    def cached(self, cache: str, key: tuple, compute: Callable, checkpoint=None):
        """``compute()`` for ``key`` under the user's weights of now, computed once whoever asks.

        The weights are looked at once for the whole request (see ``Replicas.request``). With
        ``checkpoint``, ``compute`` is called as ``compute(checkpoint)`` and a caller waiting on another's
        run of the same key gets its progress and can still stop (see :class:`~cnnviz_widgets.cache.LRUCache`).
        """
        with self.replicas.request() as generation:
            self._follow(generation)
            return self._caches[cache].get((generation, *key), compute, checkpoint)

    def watch(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(generation)`` once the user's weights have changed and then held still, after this
        session has dropped what it computed from the old ones. The listener is held weakly, as the session
        is by the model's watcher (``Replicas.watch``): a dashboard nobody holds stops being told."""
        self._listeners.add(listener)
        self.replicas.watch(self._weights_changed)

    def unwatch(self, listener: Callable[[int], None]) -> None:
        """Stop telling ``listener``; the session stops listening to the model once nobody listens to it."""
        self._listeners.discard(listener)
        if not self._listeners.alive():
            self.replicas.unwatch(self._weights_changed)

    def _weights_changed(self, generation: int) -> None:
        self._follow(generation)
        self._listeners.notify(generation)

    def close(self) -> None:
        """Stop listening to the model's weights and free every cache (the replicas stay: other panels of the
        model share them)."""
        self.replicas.unwatch(self._weights_changed)
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
            if self.given_inputs is not None:
                return self.given_inputs[index]
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

    def pass_images(self):
        """What a pass reads: the inputs given, or the pictures, which the pass preprocesses batch by batch."""
        return torch.cat(self.given_inputs) if self.given_inputs is not None else self.pictures

    def view(self, index: int) -> np.ndarray:
        """The picture as the model sees it: the crop ``preprocess`` takes, at the input's size, uint8 RGB."""
        index = self.check_index(index)

        def compute() -> np.ndarray:
            picture = self.pictures[index]
            if self.given_inputs is not None:
                return np.asarray(picture)
            # Measured once per picture size, as the crop is: a class's mean picture reads a thousand views, and
            # preprocessing each again only for its size took a third of the time.
            height, width = self._caches["preprocessing"].get(
                ("input size", picture.size), lambda: tuple(self.input(index).shape[-2:])
            )
            box = self._caches["preprocessing"].get(picture.size, lambda: input_crop_box(self.preprocess, picture.size))
            return np.asarray(picture.resize((width, height), Image.BILINEAR, box=box))

        return self._caches["views"].get(index, compute)

    def normalization(self):
        """The ``(mean, std)`` the preprocessing applies, read off it (None when it is of another form)."""
        return self._caches["preprocessing"].get("normalization", lambda: normalization_of(self.preprocess))

    # -- classes -----------------------------------------------------------------------------------------

    def probabilities(self, index: int) -> np.ndarray:
        """Softmax over the classes for image ``index``, float64 ``(K,)``."""
        index = self.check_index(index)
        return self.cached("probabilities", (index,), lambda: self.predict(self.input(index)))

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

        return self.cached("once", ("calls",), compute)

    def _traced(self, choose):
        """``choose(replica, image, calls)`` on the replica, for the first image and the calls of its pass."""
        calls = self._calls()
        with self.replicas.borrow(VIEWS) as replica:
            return choose(replica, self.input(0).to(model_device(replica)), calls)

    def conv_layers(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every layer the forward calls that shows as maps, with the ``(C, h, w)`` of its maps for these images, in
        call order: the conv layers, and a transformer's blocks (see :func:`~cnnviz_widgets.layers.map_layers`)."""
        layers = self.cached("once", ("map layers",), lambda: self._traced(map_calls))
        if not layers:
            raise ValueError(f"model: {type(self.model).__name__} calls no conv layer with spatial maps to show")
        return layers

    def heatmap_layer(self) -> str:
        """Where Grad-CAM looks by default (see :func:`~cnnviz_widgets.layers.heatmap_layer`)."""
        return self.cached(
            "once", ("heatmap layer",), lambda: self._traced(lambda replica, image, calls: heatmap_layer(calls, replica, image))
        )

    def first_layer(self) -> str:
        """The first layer shown as maps: a conv net's filters read the picture's colours, its maps are the sharpest."""
        return self.conv_layers()[0][0]

    def layer_name(self, layer) -> str:
        return resolve_layer(self.model, layer)[0]

    # -- the pass over every image -----------------------------------------------------------------------

    def evaluation(self, checkpoint=None, partial_every: float | None = None):
        """Predictions, probabilities and confusion over every image (needs labels); see
        :meth:`DatasetPass.results <cnnviz_widgets.session.dataset_pass.DatasetPass.results>`."""
        if self.labels is None:
            raise ValueError("labels: the mistakes view needs the true class of each image; pass labels=")
        return self.dataset_pass.results(checkpoint, partial_every)[0]

    def predictions(self, checkpoint=None) -> np.ndarray:
        """The predicted class of every image."""
        return self.dataset_pass.results(checkpoint)[0].predictions

    @property
    def sources(self) -> list[str]:
        """Where each image comes from: its file when the pictures are files, else its name."""
        return getattr(self.pictures, "paths", None) or self.names

    def diagnosis(self, checkpoint=None) -> Diagnosis:
        """What is wrong with the labelled images (see :func:`~cnnviz_widgets.diagnosis.diagnose`), from the
        pass over them: the pass's progress fills the first 90% of ``checkpoint``'s, when it runs."""
        if self.labels is None:
            raise ValueError("labels: a diagnosis needs the true class of each image; pass labels=")

        def compute(checkpoint=None) -> Diagnosis:
            evaluation, embeddings = self.dataset_pass.results(scaled(checkpoint, 0.0, 0.9))
            return diagnosis_of(evaluation, embeddings, self.class_names, self.sources, scaled(checkpoint, 0.9, 1.0))

        return self.cached("once", ("diagnosis",), compute, checkpoint)
