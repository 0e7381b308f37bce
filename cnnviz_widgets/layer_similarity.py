"""How alike two models' layers are: the linear CKA matrix between their conv layers.

CKA (centred kernel alignment) compares two layers by how alike they find the same images: the Gram
matrices of their flattened activations. It is estimated batch by batch (Nguyen, Raghu and Kornblith,
"Do wide and deep networks learn the same things?", ICLR 2021): each batch gives an unbiased HSIC estimate
(Song et al. 2012) of every pair of layers, the estimates are summed over batches, and
``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``. Memory is bounded by one batch's activations and its
``(B, B)`` Gram matrices, whatever the number of images.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .data import _batches, _holds_pictures, _Images
from .inputs import check_callable_pair, check_positive_int, model_device
from .layers import called_layers, is_conv, resolve_layer
from .outputs import check_output
from .probe import probe
from .replica import borrow

# The unbiased HSIC divides by n (n - 1) (n - 2) (n - 3): a batch needs 4 images at least.
MIN_BATCH = 4


def layer_similarity(
    model_a: nn.Module,
    model_b: nn.Module,
    images,
    layers_a=None,
    layers_b=None,
    *,
    preprocess=None,
    batch_size: int = 64,
    output=None,
    checkpoint: Callable[[float], None] | None = None,
) -> pd.DataFrame:
    """Linear CKA between every layer of ``layers_a`` (rows) and every layer of ``layers_b`` (columns).

    1 means two layers see the images alike up to a rotation and a scale of their activations; 0, that
    they share nothing linear. A model against itself has 1 on the diagonal.

    images: a tensor (N, C, H, W), a Dataset or DataLoader, or pictures (a folder, paths, a list) that
        ``preprocess`` turns into inputs; the same images go through both models.
    layers_a, layers_b: submodules or dotted names of each model (one, or a list); None takes every conv
        layer the model's forward calls, in call order.
    preprocess: picture -> model input, one callable for both models or a pair ``(for_a, for_b)``.
    batch_size: images a batch, at least 4 (the unbiased estimator's minimum); larger batches give a less
        noisy estimate. Each batch's HSIC counts in proportion to its images. A DataLoader's own batches are
        used as they come, and a last batch of fewer than 4 images is left out.
    output: a callable from the model's output to its logits (or a pair, one a model), for a model whose
        output is not the logits themselves (a dict, a tuple): the pass that lists its conv layers needs them.
    checkpoint: called as ``checkpoint(fraction_done)`` before each batch; raise from it to stop.

    A layer whose activations do not vary over the images has no CKA with anything (NaN). The models
    themselves are never touched: private replicas run the passes.
    """
    for model, argument in ((model_a, "model_a"), (model_b, "model_b")):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{argument}: expected a torch.nn.Module, got {type(model).__name__}")
    batch_size = check_positive_int(batch_size, "batch_size")
    if batch_size < MIN_BATCH:
        raise ValueError(
            f"batch_size: expected at least {MIN_BATCH} (the unbiased HSIC needs 4 images a batch), got {batch_size}"
        )
    preprocess_a, preprocess_b = check_callable_pair(preprocess, "preprocess")
    output_a, output_b = check_callable_pair(output, "output")
    output_a, output_b = check_output(output_a), check_output(output_b)
    chosen_a = _resolve_layers(model_a, layers_a, "layers_a")
    chosen_b = _resolve_layers(model_b, layers_b, "layers_b")
    source_a = _Images(images, batch_size, preprocess_a)
    # Tensors go to both models as they are: only pictures preprocessed two ways need a second reading.
    shared_inputs = preprocess_a is preprocess_b or not _holds_pictures(images)
    source_b = source_a if shared_inputs else _Images(images, batch_size, preprocess_b)
    same_model = model_a is model_b

    accumulator = None
    with ExitStack() as stack:
        replica_a = stack.enter_context(borrow(model_a))
        replica_b = replica_a if same_model else stack.enter_context(borrow(model_b))
        device_a, device_b = model_device(replica_a), model_device(replica_b)
        batches_b = None if shared_inputs else iter(source_b)
        for batch_a, _ in _batches(source_a, "layer_similarity", False, checkpoint):
            batch_b = batch_a if batches_b is None else _next_batch(batches_b)
            if accumulator is None:
                names_a = chosen_a or _conv_names(replica_a, batch_a[:1].to(device_a), output_a, "model_a")
                names_b = chosen_b or _conv_names(replica_b, batch_b[:1].to(device_b), output_b, "model_b")
                accumulator = _HSICSums(len(names_a), len(names_b))
            if len(batch_a) < MIN_BATCH:
                continue
            if same_model and batch_b is batch_a:
                # One pass serves both sides.
                wanted = {**{name: "layers_b" for name in names_b}, **{name: "layers_a" for name in names_a}}
                found_a = found_b = _grams(replica_a, batch_a.to(device_a), wanted)
            else:
                found_a = _grams(replica_a, batch_a.to(device_a), dict.fromkeys(names_a, "layers_a"))
                found_b = _grams(replica_b, batch_b.to(device_b), dict.fromkeys(names_b, "layers_b"))
            accumulator.add(torch.stack([found_a[name] for name in names_a]), torch.stack([found_b[name] for name in names_b]))
    if accumulator is None or accumulator.batches == 0:
        raise ValueError(
            f"images: need a batch of at least {MIN_BATCH} images (the unbiased HSIC's minimum), got {source_a.count} "
            "images in no such batch"
        )
    return pd.DataFrame(accumulator.cka(), index=pd.Index(names_a, name="model_a"), columns=pd.Index(names_b, name="model_b"))


def _next_batch(batches) -> Tensor:
    batch, _ = next(batches)
    return batch


def _resolve_layers(model: nn.Module, layers, argument: str) -> list[str] | None:
    if layers is None:
        return None
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not isinstance(layers, (list, tuple)):
        raise TypeError(f"{argument}: expected a layer, a list of layers (submodules or dotted names) or None, got {type(layers).__name__}")
    if not layers:
        raise ValueError(f"{argument}: expected at least one layer, got an empty list")
    names = [resolve_layer(model, layer, argument)[0] for layer in layers]
    return list(dict.fromkeys(names))


def _conv_names(replica: nn.Module, image: Tensor, output, argument: str) -> list[str]:
    names = [call.name for call in called_layers(replica, image, output) if is_conv(call)]
    if not names:
        raise ValueError(f"{argument}: {type(replica).__name__} calls no convolution with spatial maps; pass its layers explicitly")
    return names


def _grams(replica: nn.Module, batch: Tensor, arguments: dict[str, str]) -> dict[str, Tensor]:
    """Each layer's Gram matrix ``(B, B)`` of the batch's flattened activations, float64 on the CPU.

    arguments: the layers' names, each with the argument that named it (for errors).
    """
    modules = dict(replica.named_modules())
    with probe(replica, outputs=[(name, modules[name]) for name in arguments], stop_early=True) as capture:
        capture.run(batch)
    grams = {}
    for name, argument in arguments.items():
        if name not in capture.outputs:
            raise ValueError(f"{argument}: {name!r} was not called in the model's forward pass; choose another layer")
        activations = capture.outputs.pop(name)
        if not isinstance(activations, Tensor):
            raise TypeError(f"{argument}: {name!r} outputs a {type(activations).__name__}, not a tensor; choose another layer")
        flat = activations.reshape(len(batch), -1).float()
        # Centring first (HSIC does not change: the estimator ignores a shift shared by all images) keeps a
        # float32 product of large positive activations from losing the small differences CKA measures.
        flat = flat - flat.mean(dim=0)
        grams[name] = (flat @ flat.T).double().cpu()
        del activations, flat
    return grams


class _HSICSums:
    """Unbiased HSIC of every pair of layers, summed over batches, each batch weighted by its size."""

    def __init__(self, count_a: int, count_b: int):
        self.cross = np.zeros((count_a, count_b))
        self.self_a = np.zeros(count_a)
        self.self_b = np.zeros(count_b)
        self.batches = 0

    def add(self, grams_a: Tensor, grams_b: Tensor) -> None:
        size = grams_a.shape[-1]
        terms_a, terms_b = _hsic_terms(grams_a), _hsic_terms(grams_b)
        self.cross += size * _hsic(terms_a, terms_b, size).numpy()
        self.self_a += size * _hsic(terms_a, terms_a, size).diagonal().numpy()
        self.self_b += size * _hsic(terms_b, terms_b, size).diagonal().numpy()
        self.batches += 1

    def cka(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.sqrt(np.outer(self.self_a, self.self_b))
            return np.where(scale > 0, self.cross / scale, np.nan)


def _hsic_terms(grams: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For Gram matrices (L, n, n) with their diagonals zeroed: the flattened matrices, row sums, totals."""
    zeroed = grams.clone()
    zeroed.diagonal(dim1=1, dim2=2).zero_()
    rows = zeroed.sum(dim=2)
    return zeroed.flatten(1), rows, rows.sum(dim=1)


def _hsic(terms_k, terms_l, n: int) -> Tensor:
    """Song et al.'s unbiased HSIC_1 of every pair (K, L), K and L with zero diagonals:
    ``[tr(KL) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'KL1] / (n(n-3))``."""
    flat_k, rows_k, total_k = terms_k
    flat_l, rows_l, total_l = terms_l
    trace = flat_k @ flat_l.T
    totals = torch.outer(total_k, total_l) / ((n - 1) * (n - 2))
    row_products = rows_k @ rows_l.T * (2 / (n - 2))
    return (trace + totals - row_products) / (n * (n - 3))
