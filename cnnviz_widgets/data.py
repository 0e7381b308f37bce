"""Whole-dataset views of a classifier: what it gets wrong (evaluate) and how it arranges the data (embed, project).

``images`` may be a tensor ``(N, C, H, W)``, a ``torch.utils.data.Dataset`` whose items are images or
``(image, label, ...)`` tuples, or a ``DataLoader`` yielding such batches. Inference runs batch by batch on the
model's device, on the model's private replica (:mod:`cnnviz_widgets.replica`): the model is never touched.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from .cut import layer_cut
from .fast import DEFAULT_THREADS, MEMORY_FORMATS, Setting, forwarder, tuner
from .inputs import check_input_size, check_model, check_positive_int, model_device
from .layers import called_layers, embedding_layer, output_layout, resolve_layer
from .outputs import check_output, logits_of
from .probe import model_lock, probe
from .replica import borrow
from .sources import PictureSource, default_preprocess, picture_source

PROJECTION_METHODS = ("pca", "tsne", "umap")
POOLING = ("avg", "flatten")
TOP_CLASSES = 10
"""The most probable classes an evaluation lists for each image when it keeps every probability."""
# PCA is exact, from the (D, D) covariance matrix: one pass of matrix products over the points, then an
# eigendecomposition of D x D. Up to this many values (points x dimensions) the products run in float64;
# above, in float32 (twice as fast: 50,000 x 1,280 embeddings in about a second on 2 cores), the
# eigendecomposition always in float64.
PCA_FLOAT64_MAX_VALUES = 10_000_000
# t-SNE's neighbour search degrades with dimension; 50 principal components keep the neighbourhoods.
TSNE_INPUT_DIMS = 50
# Below this many points t-SNE runs on one thread: its threads meet at each of the 750 iterations, which on
# small inputs costs more than they save (450 points on a busy 2-core machine: 1.9 s on one thread, 9.7 s on
# two). Above it, every core. The points are the same either way.
TSNE_PARALLEL_MIN_POINTS = 10_000


def _split_item(item, where: str) -> tuple[Tensor, Tensor | None]:
    """An item or batch from a Dataset / DataLoader -> (images, labels or None)."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise TypeError(f"images: {where} yielded an empty {type(item).__name__}")
        images = item[0]
        labels = item[1] if len(item) > 1 else None
    else:
        images, labels = item, None
    if not isinstance(images, Tensor):
        raise TypeError(
            f"images: {where} yielded {type(images).__name__}; expected image tensors "
            "(add a transform such as torchvision.transforms.ToTensor to the dataset)"
        )
    if labels is not None:
        labels = torch.as_tensor(labels)
    return images, labels


def _holds_pictures(images) -> bool:
    """Whether ``images`` are pictures for a preprocessing rather than model inputs."""
    if isinstance(images, (str, Path, dict, PictureSource)):
        return True
    if isinstance(images, (list, tuple)):
        return bool(images) and not isinstance(images[0], Tensor)
    if isinstance(images, Dataset) and not isinstance(images, IterableDataset) and hasattr(images, "__len__") and len(images):
        first = images[0]
        first = first[0] if isinstance(first, (tuple, list)) and first else first
        return not isinstance(first, Tensor)
    return False


def _described(value) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def _check_image_batch(batch: Tensor) -> Tensor:
    if batch.ndim != 4:
        raise ValueError(
            f"images: expected image batches of shape (N, C, H, W), got a tensor of shape {tuple(batch.shape)}"
        )
    if not batch.is_floating_point():
        batch = batch.float()
    return batch


class _Images:
    """Uniform batched access to images (and maybe their labels): a tensor, a DataLoader, a Dataset of
    tensors, or pictures — a folder, file paths, a list or dict, a Dataset of pictures — which
    ``preprocess`` turns into model inputs as each batch is read."""

    def __init__(self, images, batch_size: int, preprocess=None, on_pictures=None):
        self.batch_size = batch_size
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = torch.from_numpy(images)
        if _holds_pictures(images):
            source = picture_source(images)
            self.count = len(source)
            self.batches = len(range(0, self.count, batch_size))
            self._iterate = lambda: self._picture_batches(source, preprocess or default_preprocess, on_pictures)
        elif isinstance(images, Tensor):
            _check_image_batch(images)
            self.count = len(images)
            self.batches = len(range(0, self.count, batch_size))
            self._iterate = lambda: ((images[i : i + batch_size], None) for i in range(0, self.count, batch_size))
        elif isinstance(images, DataLoader):
            self.count = len(images.dataset) if hasattr(images.dataset, "__len__") else None
            self.batches = len(images) if hasattr(images.dataset, "__len__") else None
            self._iterate = lambda: (_split_item(batch, "the DataLoader") for batch in images)
        elif isinstance(images, Dataset):
            if not hasattr(images, "__len__"):
                raise TypeError("images: an iterable Dataset has no length; wrap it in a DataLoader")
            self.count = len(images)
            self.batches = len(range(0, self.count, batch_size))
            self._iterate = lambda: self._dataset_batches(images)
        else:
            raise TypeError(
                "images: expected a tensor (N, C, H, W), a torch Dataset or DataLoader, a folder, a list of file "
                f"paths or a list of pictures; got {type(images).__name__}"
            )
        if self.count == 0:
            raise ValueError("images: no images given (empty tensor or dataset)")

    def _dataset_batches(self, dataset: Dataset) -> Iterator[tuple[Tensor, Tensor | None]]:
        for start in range(0, self.count, self.batch_size):
            stop = min(start + self.batch_size, self.count)
            items = [_split_item(dataset[i], "the Dataset") for i in range(start, stop)]
            images = torch.stack([image for image, _ in items])
            labels = None if items[0][1] is None else torch.stack([label for _, label in items])
            yield images, labels

    def _picture_batches(self, source, preprocess, on_pictures=None) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Batches of preprocessed pictures; the next batch is decoded on a thread while the model reads this
        one (decoding and resizing release the GIL), so the pass runs at the model's pace. ``on_pictures(start,
        pictures)`` also gets each batch's decoded pictures there."""

        def prepared(start: int) -> tuple[Tensor, Tensor | None]:
            stop = min(start + self.batch_size, self.count)
            inputs, pictures = [], []
            for index in range(start, stop):
                pictures.append(source[index])
                x = preprocess(pictures[-1])
                if not isinstance(x, Tensor) or x.ndim not in (3, 4):
                    raise TypeError(f"preprocess: must return a tensor (C, H, W) or (1, C, H, W), returned {_described(x)}")
                inputs.append(x if x.ndim == 4 else x.unsqueeze(0))
            if on_pictures is not None:
                on_pictures(start, pictures)
            labels = None if source.labels is None else torch.from_numpy(source.labels[start:stop])
            return torch.cat(inputs), labels

        starts = range(0, self.count, self.batch_size)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnviz-decode") as decoder:
            upcoming = decoder.submit(prepared, starts[0])
            for following in [*starts[1:], None]:
                batch = upcoming.result()
                if following is not None:
                    upcoming = decoder.submit(prepared, following)
                yield batch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        for images, labels in self._iterate():
            yield _check_image_batch(images), labels


def _batches(images: _Images, description: str, progress: bool, checkpoint: Callable[..., None] | None):
    """The batches with a progress bar, calling ``checkpoint(fraction_done)`` before each one."""
    seen = 0
    for batch, labels in tqdm(images, total=images.batches, desc=description, unit="batch", disable=not progress, leave=False):
        if checkpoint is not None:
            checkpoint(seen / images.count if images.count else 0.0)
        seen += len(batch)
        yield batch, labels


@dataclass(frozen=True)
class Evaluation:
    """A classifier's predictions on a labelled dataset.

    labels, predictions: (N,) int64 class indices;
    probabilities: (N, K) float32 softmax outputs, or None when only the most probable classes were kept
        (``evaluate(..., top_k=)``, as a dashboard's pass over a test set keeps them);
    confusion: (K, K) int64 counts, rows the true class and columns the predicted one
        (``sklearn.metrics.confusion_matrix(labels, predictions, labels=range(K))``);
    top_classes: (N, k) int32, each image's ``k`` most probable classes, most probable first, and
    top_probabilities: (N, k) float32, their probabilities; ``k`` is ``top_k``, or every class if there
        are no more.

    What diagnosis needs of the whole softmax, at a few bytes an image, where only the top classes are kept
    (None in evaluations made by hand):
    given_probabilities: (N,) float32, the probability of each image's given label;
    entropy: (N,) float32, the entropy of the whole softmax, in nats;
    margin: (N,) float32, ``p(given) - max over the other classes k of p(k)``: negative when another class
        beats the given label;
    input_digests: (N,) uint64, a digest of each image's model input (equal inputs, equal digests: exact
        duplicates), from the pass over a test set (:func:`evaluate_and_embed`) only.
    """

    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray | None
    confusion: np.ndarray
    top_classes: np.ndarray
    top_probabilities: np.ndarray
    given_probabilities: np.ndarray | None = None
    entropy: np.ndarray | None = None
    margin: np.ndarray | None = None
    input_digests: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return self.confusion.shape[0]

    @property
    def correct(self) -> np.ndarray:
        """(N,) bool: whether each image is classified right."""
        return self.predictions == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def confidence(self) -> np.ndarray:
        """(N,) float32: the probability the model gives to the class it predicts."""
        return self.top_probabilities[:, 0]

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """(K,) float64: the recall of each true class; NaN for a class with no image."""
        totals = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, np.diag(self.confusion) / totals, np.nan)

    def _check_class(self, value, argument: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{argument}: expected a class index (int) or None, got {type(value).__name__}")
        if not 0 <= value < self.num_classes:
            raise ValueError(f"{argument}: class index {value} out of range 0..{self.num_classes - 1}")
        return int(value)

    def most_confused(self, count: int = 10) -> list[tuple[int, int, int]]:
        """The ``count`` most frequent mistakes as ``(true class, predicted class, images)``, most first."""
        off_diagonal = self.confusion.copy()
        np.fill_diagonal(off_diagonal, 0)
        flat = np.argsort(-off_diagonal, axis=None, kind="stable")[:count]
        pairs = [(*np.unravel_index(cell, off_diagonal.shape), off_diagonal.flat[cell]) for cell in flat]
        return [(int(true), int(predicted), int(images)) for true, predicted, images in pairs if images > 0]

    def mistakes(self, true: int | None = None, predicted: int | None = None) -> np.ndarray:
        """Indices of the misclassified images, most confident first; optionally only true class ``true``
        and/or predicted class ``predicted``."""
        true = self._check_class(true, "true")
        predicted = self._check_class(predicted, "predicted")
        wrong = ~self.correct
        if true is not None:
            wrong &= self.labels == true
        if predicted is not None:
            wrong &= self.predictions == predicted
        indices = np.flatnonzero(wrong)
        # Stable sort, so ties keep dataset order and the result is the same on every run.
        return indices[np.argsort(-self.confidence[indices], kind="stable")]


def _labels_array(labels, count: int | None) -> np.ndarray:
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    try:
        array = np.asarray(labels)
    except (TypeError, ValueError) as error:
        raise TypeError(f"labels: expected a sequence of class indices, got {type(labels).__name__}") from error
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise TypeError(
            f"labels: expected a 1-D sequence of integer class indices, got dtype {array.dtype} "
            f"and shape {array.shape}"
        )
    if count is not None and len(array) != count:
        raise ValueError(f"labels: {len(array)} labels for {count} images; give one label per image")
    return array.astype(np.int64)


def evaluate(
    model: nn.Module,
    images,
    labels=None,
    batch_size: int = 64,
    *,
    preprocess=None,
    progress: bool = True,
    output=None,
    checkpoint=None,
    top_k: int | None = None,
) -> Evaluation:
    """Run ``model`` over ``images`` and compare its predictions with ``labels``.

    images: a tensor ``(N, C, H, W)``, a Dataset or DataLoader of tensors, or pictures (a folder, file
        paths, a list or dict of pictures, a Dataset of pictures) that ``preprocess`` turns into inputs.
    labels: one class index per image; may be omitted when the images come with labels (a Dataset or
        DataLoader of ``(image, label)`` pairs, a folder of class subfolders).
    preprocess: picture -> model input, for pictures; by default pixels in [0, 1].
    output: a callable from the model's output to its logits (see :func:`~cnnviz_widgets.outputs.logits_of`).
    checkpoint: called as ``checkpoint(fraction_done)`` before each batch; raise from it to stop.
    top_k: keep the probabilities of each image's ``top_k`` most probable classes only (``top_classes``,
        ``top_probabilities``; ``probabilities`` is then None unless there are no more classes): 50,000
        images of 1,000 classes in 2 MB at ``top_k=5`` rather than 200 MB. None: every probability, and
        the ``TOP_CLASSES`` most probable.
    """
    evaluation, _ = _classify(
        model, images, labels, batch_size, preprocess, progress, output, checkpoint, embedding=False, top_k=top_k
    )
    return evaluation


def evaluate_and_embed(
    model: nn.Module,
    images,
    labels=None,
    batch_size: int = 64,
    *,
    preprocess=None,
    progress: bool = True,
    output=None,
    checkpoint=None,
    partial_every: float | None = None,
    top_k: int | None = None,
    on_pictures=None,
    device=None,
) -> tuple[Evaluation, np.ndarray]:
    """:func:`evaluate` and :func:`embed` at the default layer in one pass over the images: for a test set
    that takes minutes to read, the second pass would double the wait. Same arguments as :func:`evaluate`.

    partial_every: seconds; after the first batch, then every ``partial_every`` seconds,
        ``checkpoint(fraction_done, evaluation)`` also receives the :class:`Evaluation` of the images read
        so far (the first ones), so that a view can fill in.
    on_pictures: when ``images`` are pictures, called as ``on_pictures(start, pictures)`` with each batch of
        decoded pictures (RGB PIL images ``start``, ``start + 1``, ...), in order, on the thread that decodes
        them: the pass reads every picture anyway, so hover thumbnails (``sprites.AtlasBuilder.add``) cost
        no second reading of the folder. Never called for tensors or Datasets of tensors.
    device: where the pass runs (see :func:`check_device`); by default where the model lives."""
    if partial_every is not None and checkpoint is None:
        raise ValueError("partial_every: the evaluations so far go to checkpoint=, which is not given")
    return _classify(
        model, images, labels, batch_size, preprocess, progress, output, checkpoint, embedding=True,
        partial_every=partial_every, top_k=top_k, on_pictures=on_pictures, device=check_device(device),
    )


def check_device(device) -> torch.device | None:
    """``device`` (a ``torch.device``, a string such as ``"cuda"`` or ``"cuda:1"``, or None for the model's own)
    as a ``torch.device``, refusing one this machine does not have."""
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device: expected a torch.device, a string such as 'cuda' or None, got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device: {str(device)!r} is not a device torch knows ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {str(device)!r} was asked for, but torch sees no CUDA device here (torch.cuda.is_available() is False)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device: {str(device)!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {str(device)!r} was asked for, but torch sees no MPS device here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'mps', got {str(device)!r}")
    return device


def _to_device(batch: Tensor, device: torch.device) -> Tensor:
    """A batch on ``device``: on CUDA from pinned memory, without waiting for the copy (the next batch is
    decoded meanwhile)."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def _classify(
    model, images, labels, batch_size, preprocess, progress, output, checkpoint, embedding: bool, partial_every=None, top_k=None,
    on_pictures=None, device=None,
):
    model = check_model(model)
    if top_k is not None:
        top_k = check_positive_int(top_k, "top_k")
    output = check_output(output)
    source = _Images(images, check_positive_int(batch_size, "batch_size"), preprocess, on_pictures)
    given = None if labels is None else _labels_array(labels, source.count)
    # The pass over a test set (embedding) also keeps each input's digest, for the exact duplicates.
    classified, seen_labels, features = _Classified(top_k, digests=embedding), [], []
    with borrow(model) as replica:
        if device is not None and device != model_device(replica):
            # The pass on another device than the model's runs a copy of the replica there, made for this pass.
            replica = copy.deepcopy(replica).to(device)
        device = model_device(replica)
        layer = None
        last_partial = None
        read = 0
        for batch, batch_labels in _batches(source, "evaluate", progress, checkpoint):
            if given is None:
                if batch_labels is None:
                    raise ValueError("labels: not given, and the images carry none; pass labels=")
                seen_labels.append(batch_labels.reshape(-1).cpu())
                batch_given = seen_labels[-1]
            else:
                batch_given = given[read : read + len(batch)]
            read += len(batch)
            classified.digest(batch)
            batch = _to_device(batch, device)
            check_input_size(replica, batch.shape[2], batch.shape[3], "images")
            if embedding and layer is None:
                layer = embedding_layer(called_layers(replica, batch[:1], output), model)
            outputs, seen = _forward(replica, batch, layer)
            classified.add(logits_of(outputs, output).float().cpu(), batch_given)
            if embedding:
                features.append(_pooled(seen, "avg", layer[1]).float().cpu())
            if partial_every is not None and (last_partial is None or time.perf_counter() - last_partial >= partial_every):
                so_far = classified.evaluation(given if given is not None else torch.cat(seen_labels), so_far=True)
                checkpoint(len(so_far.labels) / source.count if source.count else 0.0, so_far)
                last_partial = time.perf_counter()
    # A DataLoader over an iterable dataset has no length up front: the label count is checked here.
    evaluation = classified.evaluation(given if given is not None else torch.cat(seen_labels))
    return evaluation, (torch.cat(features).numpy() if embedding else None)


def _forward(replica: nn.Module, batch: Tensor, layer: tuple[str, str] | None) -> tuple[object, Tensor | None]:
    """The model's output for ``batch`` and, when ``layer`` is ``(side, name)``, that side ("input" or
    "output") of the layer ``name``.

    On the fast copy (cut at the layer when there is one): BatchNorm folded, the memory format and threads
    measured on the first batches. EfficientNet-Lite0 reads a batch of 16 in 11 ms an image, against 15.5
    for the replica in channels_last. A model the fast copy cannot follow runs hooked on the replica, in the
    memory format its first batches measure fastest."""
    if batch.device.type != "cpu":
        return _accelerated_forward(replica, batch, layer)
    with model_lock(replica), torch.no_grad():
        if layer is None:
            return forwarder(replica, batch, "pass", len(batch))(batch), None
        side, name = layer
        cut = layer_cut(replica, name, batch, side)
        if cut is not None:
            seen, outputs = cut.run(replica, batch, differentiable=False)
            return outputs, seen
    settings = [Setting(memory_format, len(batch), DEFAULT_THREADS) for memory_format in MEMORY_FORMATS]
    chooser = tuner(replica, ("pass", tuple(batch.shape)), lambda: settings)
    setting = chooser.next()
    with probe(replica, **{f"{side}s": [(name, replica.get_submodule(name))]}) as capture:
        outputs = chooser.timed(setting, len(batch), lambda: capture.run(batch.contiguous(memory_format=setting.memory_format)))
    return outputs, (capture.inputs if side == "input" else capture.outputs)[name]


def _accelerated_forward(replica: nn.Module, batch: Tensor, layer: tuple[str, str] | None) -> tuple[object, Tensor | None]:
    """:func:`_forward` on a GPU: the fast copy and its tuner measure CPU settings, so the replica runs as it is,
    the batch in channels_last, the convolutions' fast layout on CUDA's tensor cores."""
    batch = batch.contiguous(memory_format=torch.channels_last)
    if layer is None:
        with probe(replica) as capture, torch.no_grad():
            return capture.run(batch), None
    side, name = layer
    with probe(replica, **{f"{side}s": [(name, replica.get_submodule(name))]}) as capture, torch.no_grad():
        outputs = capture.run(batch)
    return outputs, (capture.inputs if side == "input" else capture.outputs)[name]


def input_digests(batch: Tensor) -> np.ndarray:
    """A 64-bit digest of each input of ``batch`` (SHA-1, truncated: 0.3 ms for a 224 px input, about 2% of its
    forward pass on EfficientNet-Lite0): equal inputs, equal digests, for the exact duplicates."""
    values = batch.detach().cpu().contiguous().numpy()
    return np.array([int.from_bytes(hashlib.sha1(row).digest()[:8], "little") for row in values], dtype=np.uint64)


class _Classified:
    """What a pass keeps of each batch's logits: the predictions, the most probable classes, what diagnosis
    needs of the whole softmax (the given label's probability, the entropy, the margin), and every
    probability only when asked (``top_k`` None) or when there are no more classes than ``top_k``. The logits
    themselves are dropped: 50,000 images of 1,000 classes would hold 200 MB of them.

    digests: also keep a digest of each input (:meth:`digest`)."""

    def __init__(self, top_k: int | None, digests: bool = False):
        self.top_k = top_k
        self.num_classes = 0
        self.predictions: list[Tensor] = []
        self.top_classes: list[Tensor] = []
        self.top_probabilities: list[Tensor] = []
        self.probabilities: list[Tensor] = []
        self.given_probabilities: list[Tensor] = []
        self.entropy: list[Tensor] = []
        self.margin: list[Tensor] = []
        self.digests: list[np.ndarray] | None = [] if digests else None

    def digest(self, batch: Tensor) -> None:
        """Keep the digest of each input of ``batch`` (:func:`input_digests`), if digests are kept."""
        if self.digests is not None:
            self.digests.append(input_digests(batch))

    def add(self, logits: Tensor, labels) -> None:
        if logits.ndim != 2:
            raise ValueError(f"model: expected logits of shape (N, K), got {tuple(logits.shape)}")
        num_classes = self.num_classes = logits.shape[1]
        given = torch.from_numpy(_class_indices(labels, len(logits), num_classes))
        probabilities = torch.softmax(logits, dim=1)
        self.predictions.append(logits.argmax(dim=1))
        top = probabilities.topk(min(num_classes, self.top_k or TOP_CLASSES), dim=1)
        self.top_classes.append(top.indices.int())
        self.top_probabilities.append(top.values)
        if self.top_k is None or num_classes <= self.top_k:
            self.probabilities.append(probabilities)
        given_probabilities = probabilities.gather(1, given[:, None])[:, 0]
        # Probabilities are never negative: with the given label's set to 0, the largest is the best other class.
        others = probabilities.scatter(1, given[:, None], 0.0).amax(dim=1)
        self.given_probabilities.append(given_probabilities)
        self.margin.append(given_probabilities - others)
        # From the log-softmax, so that a probability rounded to 0 adds 0 rather than 0 * -inf.
        self.entropy.append(-(probabilities * torch.log_softmax(logits, dim=1)).sum(dim=1))

    def evaluation(self, labels, so_far: bool = False) -> Evaluation:
        """The evaluation of the images classified so far, with as many ``labels``; ``so_far``: a pass under
        way, whose labels may run ahead of its logits."""
        predictions = torch.cat(self.predictions).numpy().astype(np.int64)
        num_classes = self.num_classes
        true = _labels_array(labels[: len(predictions)] if so_far else labels, len(predictions))
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(confusion, (true, predictions), 1)
        return Evaluation(
            labels=true,
            predictions=predictions,
            probabilities=_floats(self.probabilities) if self.probabilities else None,
            confusion=confusion,
            top_classes=torch.cat(self.top_classes).numpy(),
            top_probabilities=_floats(self.top_probabilities),
            given_probabilities=_floats(self.given_probabilities),
            entropy=_floats(self.entropy),
            margin=_floats(self.margin),
            input_digests=None if self.digests is None else np.concatenate(self.digests)[: len(predictions)],
        )


def _floats(parts: list[Tensor]) -> np.ndarray:
    return torch.cat(parts).numpy().astype(np.float32)


def _class_indices(labels, count: int, num_classes: int) -> np.ndarray:
    """``labels`` as ``count`` int64 class indices of a model with ``num_classes`` classes."""
    true = _labels_array(labels, count)
    if true.size and (true.min() < 0 or true.max() >= num_classes):
        raise ValueError(f"labels: values must be class indices in 0..{num_classes - 1}, got {true.min()}..{true.max()}")
    return true


def _pooled(activations, pool: str, layer_name: str) -> Tensor:
    if not isinstance(activations, Tensor):
        raise TypeError(
            f"layer: {layer_name!r} gives {type(activations).__name__}, not a tensor; "
            "choose a layer with a tensor output"
        )
    if activations.ndim == 4 and pool == "avg":
        return activations.mean(dim=(2, 3))
    return activations.reshape(len(activations), -1)


def embed(
    model: nn.Module,
    images,
    layer=None,
    batch_size: int = 64,
    pool: str = "avg",
    *,
    preprocess=None,
    progress: bool = True,
    output=None,
    checkpoint=None,
) -> np.ndarray:
    """Activations of ``layer`` for every image -> float32 array ``(N, D)``.

    layer: a submodule or dotted name; None takes the input of the last ``nn.Linear`` the forward calls
        (the penultimate features the classifier separates) or, in a model with none, the average over
        space of its last conv layer's maps that the logits depend on.
    pool: for a conv layer's (N, C, h, w) output, "avg" averages each map (D = C), "flatten" keeps every
        position (D = C*h*w).
    preprocess: picture -> model input, when ``images`` are pictures (see :func:`evaluate`).
    output: a callable from the model's output to its logits, used to find the default layer.
    checkpoint: called as ``checkpoint(fraction_done)`` before each batch; raise from it to stop.
    """
    model = check_model(model)
    output = check_output(output)
    if pool not in POOLING:
        raise ValueError(f"pool: expected one of {POOLING}, got {pool!r}")
    source = _Images(images, check_positive_int(batch_size, "batch_size"), preprocess)
    chosen = None if layer is None else resolve_layer(model, layer)[0]
    features = []
    with borrow(model) as replica:
        device = model_device(replica)
        batches = _batches(source, "embed", progress, checkpoint)
        for batch, _ in batches:
            batch = batch.to(device)
            if not features:
                kind, name = ("output", chosen) if chosen else embedding_layer(called_layers(replica, batch[:1], output), model)
                module = replica.get_submodule(name)
                watch = {"inputs" if kind == "input" else "outputs": [(name, module)]}
            with probe(replica, stop_early=True, **watch) as capture:
                capture.run(batch)
            seen = capture.inputs if kind == "input" else capture.outputs
            if name not in seen:
                raise ValueError(f"layer: {name!r} was not called in the model's forward pass; choose another layer")
            activations = seen[name]
            if kind == "output" and isinstance(activations, Tensor):
                # A transformer layer's tokens pool as its maps do: one mean per channel, as a conv layer's.
                layout = output_layout(replica, batch, activations, module)
                activations = activations if layout is None else layout.maps(activations)
            features.append(_pooled(activations, pool, name).float().cpu())
    return torch.cat(features).numpy()


def _embeddings_array(embeddings) -> np.ndarray:
    if isinstance(embeddings, Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    try:
        array = np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"embeddings: expected a numeric array (N, D), got {type(embeddings).__name__}"
        ) from error
    if array.ndim != 2:
        raise ValueError(f"embeddings: expected a 2-D array (N, D), got shape {array.shape}")
    if len(array) < 3:
        raise ValueError(f"embeddings: need at least 3 points to project, got {len(array)}")
    if not np.isfinite(array).all():
        raise ValueError("embeddings: contains NaN or infinite values")
    return array


def _pca(points: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """The points on their first ``dims`` principal axes, each axis signed so that its largest loading is
    positive (``seed``: unused, PCA is exact)."""
    from scipy.linalg import eigh
    from threadpoolctl import threadpool_limits

    dtype = torch.float64 if points.size <= PCA_FLOAT64_MAX_VALUES else torch.float32
    x = torch.from_numpy(np.ascontiguousarray(points)).to(dtype)
    centred = x - x.mean(dim=0)
    width = centred.shape[1]
    # Only the top eigenvectors: 0.2 s for a 1,280 x 1,280 covariance, where a full decomposition took 3 s.
    # On one thread: the search meets its threads at each column, and on a busy 2-core machine two threads
    # took 1 to 8 s, one 0.13 to 0.19 s (most of the Projector tab's opening after the pass).
    if len(centred) < width:
        # Fewer points than dimensions (3 images of a model whose classifier reads 8,960 values): the axes
        # from the (N, D) points' own decomposition, where the (D, D) covariance's took a minute. Past the
        # points' rank the axes carry nothing; they are left at zero.
        _, _, right = torch.linalg.svd(centred.double(), full_matrices=False)
        axes = torch.zeros(width, dims, dtype=torch.float64)
        kept = min(dims, len(right))
        axes[:, :kept] = right[:kept].T
    else:
        covariance = (centred.T @ centred).double().numpy()
        with threadpool_limits(1, user_api="blas"):
            _, vectors = eigh(covariance, subset_by_index=[width - dims, width - 1])
        axes = torch.from_numpy(np.ascontiguousarray(vectors[:, ::-1]))
    axes = axes * torch.sign(axes.gather(0, axes.abs().argmax(dim=0, keepdim=True)))
    return (centred @ axes.to(dtype)).float().numpy()


def _tsne(points: np.ndarray, dims: int, seed: int) -> np.ndarray:
    from openTSNE import TSNE

    if points.shape[1] > TSNE_INPUT_DIMS and len(points) > TSNE_INPUT_DIMS:
        points = _pca(points, TSNE_INPUT_DIMS, seed)
    # Perplexity must stay below the number of neighbours each point has.
    perplexity = min(30.0, (len(points) - 1) / 3)
    # The FFT-interpolated gradient handles only 1-D and 2-D maps, and below about 10,000 points its grid
    # costs more than Barnes-Hut: "auto" picks between the two in 2-D, 3-D always takes Barnes-Hut.
    gradient = "auto" if dims == 2 else "bh"
    tsne = TSNE(
        n_components=dims, perplexity=perplexity, initialization="pca", negative_gradient_method=gradient,
        random_state=seed, n_jobs=-1 if len(points) >= TSNE_PARALLEL_MIN_POINTS else 1,
    )
    return np.asarray(tsne.fit(points))


def _umap(points: np.ndarray, dims: int, seed: int) -> np.ndarray:
    import warnings

    import umap

    with warnings.catch_warnings():
        # A fixed random_state makes UMAP single-threaded; it says so on every call, and that is the trade.
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        reducer = umap.UMAP(n_components=dims, n_neighbors=min(15, len(points) - 1), random_state=seed)
        return reducer.fit_transform(points)


_PROJECTIONS = {"pca": _pca, "tsne": _tsne, "umap": _umap}


def project(embeddings, method: str = "pca", dims: int = 3, seed: int = 0) -> np.ndarray:
    """Project embeddings ``(N, D)`` to ``(N, dims)`` float32 points, the same for the same seed.

    method: "pca" (exact: the top eigenvectors of the covariance matrix, in float64 up to
        ``PCA_FLOAT64_MAX_VALUES`` values and float32 above; each axis signed so that its largest loading is
        positive), "tsne" (openTSNE: in 2-D its "auto" choice between FFT-interpolated gradients and
        Barnes-Hut, in 3-D Barnes-Hut; PCA initialisation; inputs reduced to 50 principal components first) or
        "umap" (umap-learn).
    dims: 2 or 3.
    """
    if method not in _PROJECTIONS:
        raise ValueError(f"method: expected one of {PROJECTION_METHODS}, got {method!r}")
    if isinstance(dims, bool) or dims not in (2, 3):
        raise ValueError(f"dims: expected 2 or 3, got {dims!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    points = _embeddings_array(embeddings)
    if method == "pca" and points.shape[1] < dims:
        raise ValueError(f"dims: {dims} principal components asked of {points.shape[1]}-dimensional embeddings")
    return np.ascontiguousarray(_PROJECTIONS[method](points, dims, int(seed)), dtype=np.float32)
