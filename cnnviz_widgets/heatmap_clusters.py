"""SpRAy, spectral relevance analysis (Lapuschkin et al. 2019, "Unmasking Clever Hans predictors"): the maps
of one class, clustered, so that the strategies the model uses for that class show as groups of images.

A model that found a shortcut (a watermark, a frame, a mark in a corner) looks at it in the images that carry
it and at the object in the others: the class's maps fall into groups by where their evidence lies. Each map
of the CAM family is computed for the images of the class (one forward and one backward pass per batch),
averaged down to a small grid, scaled to unit sum, and the grids are clustered spectrally, as CoRelAy, the
pipeline behind ViRelAy, does: a symmetric k-nearest-neighbour graph, its normalised Laplacian, k-means on
its first eigenvectors. The number of clusters is the eigengap's unless given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.neighbors import kneighbors_graph
from torch import Tensor, nn

from .checkpoint import Checkpoint, check, progress_bar, scaled
from .fast import forwarder
from .inputs import check_int, model_device
from .methods.grad_cam import CAM_METHODS, CamMethod, LayerPass, batch_layer_pass
from .outputs import logits_of
from .probe import probe
from .replica import WORK

GRID_SIDE = 16
"""The side of the grid the maps are averaged down to, at most. Distances between maps of 224 x 224 pixels
are dominated by the resize's smooth detail and cost 200 times more; SpRAy's authors cluster maps
downsized to a few dozen pixels a side. A layer coarser than this (EfficientNet-Lite0's last convolution:
7 x 7) keeps its own resolution: upsampling it would add dimensions, not information."""
BATCH_SIZE = 16
"""Images per forward and backward pass: the pass over a test set measured 16 fastest on EfficientNet-Lite0."""
NEIGHBOURS = 10
"""Neighbours of each map in the affinity graph (CoRelAy's default), fewer for small classes (see
:func:`neighbour_count`)."""
MAX_CLUSTERS = 10
"""The largest number of clusters the eigengap may choose."""
EIGENVALUES = 32
"""Smallest eigenvalues of the Laplacian kept for the eigengap plot (as many as CoRelAy computes)."""
DENSE_EIGEN_MAX = 300
"""Up to this many images the Laplacian is decomposed whole; above, its few smallest eigenvalues are found by
Lanczos iteration (1,000 images: 0.08 s against 0.24 s; 3,000: 0.12 s against 6 s)."""
MIN_IMAGES = 4
PASS_SHARE = 0.5
"""The share of the progress bar the pass over every image takes, when the predictions are needed."""
MAPS_SHARE = 0.9
"""Where the maps end on the progress bar; the clustering and the mean pictures take the rest."""


@dataclass(frozen=True)
class HeatmapCluster:
    """One group of a class's images whose maps look alike.

    members: int64 indices into the images given, ascending.
    mean_map: ``(h, w)`` float32, the mean of the members' maps on the grid, each scaled to unit sum.
    mean_picture: ``(H, W, 3)`` uint8, the mean of the members' pictures as the model sees them (the crop the
        preprocessing takes, at the input's size).
    accuracy: the share of the members the model classifies as the class, i.e. classifies right, since every
        member is labelled with it; NaN when the images have no labels (every member was picked because it
        is predicted as the class).
    """

    members: np.ndarray
    mean_map: np.ndarray
    mean_picture: np.ndarray
    accuracy: float

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class HeatmapClusters:
    """The maps of class ``target`` at ``layer`` by ``method``, clustered (see :func:`heatmap_clusters`).

    indices: int64, the images used (labelled ``target``, or predicted so without labels), ascending.
    clusters: the groups, largest first; their members partition ``indices``.
    eigenvalues: float64, the smallest eigenvalues of the affinity graph's normalised Laplacian, ascending
        (up to 32); the largest gap among the first ones chose the number of clusters.
    outlier_scores: float32, one per image of ``indices``: the distance from its map to its cluster's mean
        map, both on the grid and scaled to unit sum (at most the square root of 2); an image far from its cluster's
        mean map fits none of the class's strategies well.
    class_accuracy: the share of ``indices`` classified right; NaN without labels.
    """

    target: int
    layer: str
    method: str
    indices: np.ndarray
    clusters: tuple[HeatmapCluster, ...]
    eigenvalues: np.ndarray
    outlier_scores: np.ndarray
    class_accuracy: float

    @property
    def k(self) -> int:
        return len(self.clusters)


def heatmap_clusters(
    model: nn.Module,
    images,
    target,
    labels=None,
    layer=None,
    method: str = "grad-cam",
    *,
    k=None,
    preprocess=None,
    output=None,
    checkpoint: Checkpoint | None = None,
) -> HeatmapClusters:
    """SpRAy: the maps of the images of class ``target``, clustered by where their evidence lies.

    images, preprocess, output: as for :func:`~cnnviz_widgets.explore` (pictures and the callable that makes
        model inputs of them, or a tensor of inputs).
    labels: the true class of each image; the images labelled ``target`` are clustered. Without labels (and
        none that the images come with, such as a folder's subfolders), the images the model predicts as
        ``target`` are, after a pass over every image (kept in the default disk cache).
    layer: where the maps are taken; by default the last convolution the logits depend on.
    method: one of the CAM family, ``cnnviz_widgets.methods.CAM_METHODS``.
    k: the number of clusters (at least 2); by default the eigengap's, from 2 to 10.
    checkpoint: ``checkpoint(fraction_done)``, called between batches; raise from it to stop.

    Each map is the method's ``(h, w)`` map at the layer, averaged down to at most 16 x 16 (see ``GRID_SIDE``)
    and scaled to unit sum, so that maps compare by where the evidence lies, not by how strong it is. The
    graph links each map to its nearest maps (Euclidean); k-means clusters the rows, scaled to unit length,
    of the Laplacian's first ``k`` eigenvectors (Ng, Jordan and Weiss 2002). A class with fewer than 4 images,
    or fewer than 2 per cluster asked, raises a ValueError.
    """
    # The session's calls come back to this module for the computation: imported here, not at the top.
    from .session import Session

    session = Session(model, images, preprocess=preprocess, labels=labels, output=output)
    try:
        with progress_bar(100, "heatmap clusters", "%", then=checkpoint) as report:
            return session.heatmap_clusters(target, layer, method, k, report)
    finally:
        session.close()


def check_cluster_count(k) -> int | None:
    if k is None:
        return None
    count = check_int(k, "k")
    if count < 2:
        raise ValueError(f"k: expected None (chosen by the eigengap) or a number of clusters of at least 2, got {count}")
    return count


def class_clusters(session, target: int, layer: str, method: str, k: int | None, checkpoint=None) -> HeatmapClusters:
    """:func:`heatmap_clusters` for a session's images; ``target``, ``layer``, ``method`` and ``k`` checked."""
    labelled = session.labels is not None
    indices, maps_from = class_images(session, target, k, checkpoint)
    points, predictions = class_maps(session, indices, layer, target, CAM_METHODS[method], checkpoint, maps_from)
    assignments, eigenvalues = spectral_clusters(points.reshape(len(points), -1), k)
    right = predictions == target
    clusters, outlier_scores = [], np.zeros(len(indices), dtype=np.float32)
    order = np.argsort(-np.bincount(assignments), kind="stable")
    for position, cluster in enumerate(order):
        members = assignments == cluster
        mean_map = points[members].mean(axis=0)
        outlier_scores[members] = np.linalg.norm((points[members] - mean_map).reshape(members.sum(), -1), axis=1)
        clusters.append(
            HeatmapCluster(
                members=indices[members],
                mean_map=mean_map,
                mean_picture=mean_picture(session, indices[members]),
                accuracy=float(right[members].mean()) if labelled else float("nan"),
            )
        )
        check(checkpoint, MAPS_SHARE + (1 - MAPS_SHARE) * (position + 1) / len(order))
    return HeatmapClusters(
        target=target,
        layer=layer,
        method=method,
        indices=indices,
        clusters=tuple(clusters),
        eigenvalues=eigenvalues,
        outlier_scores=outlier_scores,
        class_accuracy=float(right.mean()) if labelled else float("nan"),
    )


def class_images(session, target: int, k: int | None, checkpoint=None) -> tuple[np.ndarray, float]:
    """The int64 indices of the session's images labelled ``target`` (predicted so without labels), and the
    fraction of the work done once they are known (the pass over every image, when it had to run)."""
    if session.labels is not None:
        indices, done, picked = np.flatnonzero(session.labels == target), 0.0, "labelled"
    else:
        predictions = session.predictions(scaled(checkpoint, 0.0, PASS_SHARE))
        indices, done, picked = np.flatnonzero(predictions == target), PASS_SHARE, "predicted as"
    needed = max(MIN_IMAGES, 2 * (k or 2))
    if len(indices) < needed:
        raise ValueError(
            f"target: {len(indices)} images are {picked} class {target}; clustering their maps needs at least {needed}"
            + (f" ({k} clusters of 2)" if k else "")
        )
    return indices.astype(np.int64), done


def class_maps(session, indices, layer, target, method: CamMethod, checkpoint, done: float) -> tuple[np.ndarray, np.ndarray]:
    """The maps of the images ``indices`` on the grid (see :func:`grid_maps`), float32 ``(N, h, w)``, and their
    predicted classes; on the session's WORK replica, in batches, with progress from ``done`` to ``MAPS_SHARE``."""
    maps, predictions = [], []
    span = MAPS_SHARE - done
    with session.replicas.borrow(WORK) as replica:
        for start in range(0, len(indices), BATCH_SIZE):
            batch = indices[start : start + BATCH_SIZE]
            batch_checkpoint = scaled(
                checkpoint, done + span * start / len(indices), done + span * (start + len(batch)) / len(indices)
            )
            check(batch_checkpoint, 0.0)
            inputs = torch.cat([session.input(int(index)) for index in batch]).to(model_device(replica))
            batch_maps, batch_predictions = activation_maps(
                replica, inputs, layer, target, method, session.output, batch_checkpoint
            )
            maps.append(grid_maps(batch_maps))
            predictions.append(batch_predictions)
    check(checkpoint, MAPS_SHARE)
    return torch.cat(maps).numpy(), np.concatenate(predictions)


def activation_maps(
    replica: nn.Module, inputs: Tensor, layer: str, target: int, method: CamMethod, output=None, checkpoint=None
) -> tuple[Tensor, np.ndarray]:
    """The ``(N, h, w)`` maps of ``method`` for a batch of inputs, each equal to ``cam(..., raw=True)`` of its
    image, from one forward and one backward pass; and the predicted class of each image.

    Score-CAM's own forward passes over masked copies still run image by image."""
    activations, gradients, logits, explained = batch_layer_pass(replica, inputs, layer, target, None, output, method)
    forward = None

    def score(batch: Tensor) -> Tensor:
        nonlocal forward
        with probe(replica), torch.no_grad():
            if forward is None:
                forward = forwarder(replica, inputs[:1], "score-cam", BATCH_SIZE)
            return explained(logits_of(forward(batch), output))

    maps = []
    for position in range(len(inputs)):
        image_checkpoint = scaled(checkpoint, position / len(inputs), (position + 1) / len(inputs))
        layer_pass = LayerPass(
            activations[position],
            None if gradients is None else gradients[position],
            inputs[position : position + 1],
            score,
            BATCH_SIZE,
            image_checkpoint,
        )
        maps.append(torch.relu(method.map(layer_pass)))
    return torch.stack(maps).float().cpu(), logits.argmax(dim=1).cpu().numpy()


def grid_maps(maps: Tensor) -> Tensor:
    """``(N, h, w)`` maps averaged down to at most ``GRID_SIDE`` a side, each scaled to unit sum (a map with
    no evidence anywhere stays all zeros)."""
    height, width = maps.shape[-2:]
    grid = F.adaptive_avg_pool2d(maps[:, None].double(), (min(height, GRID_SIDE), min(width, GRID_SIDE)))[:, 0]
    totals = grid.sum(dim=(1, 2), keepdim=True)
    return torch.where(totals > 0, grid / totals.clamp(min=torch.finfo(grid.dtype).tiny), grid).float()


def neighbour_count(count: int) -> int:
    """Neighbours per point in the affinity graph: ``NEIGHBOURS``, or about the square root of the number of
    points for small sets, so that a group of a few images is not forced to link into the others."""
    return int(min(count - 1, max(3, min(NEIGHBOURS, round(np.sqrt(count))))))


def spectral_clusters(points: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Spectral clustering of ``(N, D)`` points -> ``(cluster of each point (N,) int64, eigenvalues)``.

    The affinity links each point to its ``neighbour_count`` nearest points, symmetrised as the mean of the
    graph and its transpose (CoRelAy's ``SparseKNN``); the eigenvalues are the smallest of its symmetric
    normalised Laplacian ``I - D^-1/2 A D^-1/2``, ascending. Without ``k``, the number of clusters is the
    ``i`` from 2 to ``MAX_CLUSTERS`` (at most half the points) with the largest gap ``lambda_(i+1) - lambda_i``:
    a graph of ``i`` groups loosely linked has ``i`` eigenvalues near 0 and a jump after them.
    """
    count = len(points)
    graph = kneighbors_graph(points.astype(np.float64), neighbour_count(count), include_self=False)
    affinity = (graph + graph.T) / 2
    degrees = np.asarray(affinity.sum(axis=1)).ravel()
    scaling = scipy.sparse.diags(1 / np.sqrt(degrees))
    normalised = (scaling @ affinity @ scaling).tocsr()
    kept = min(count, EIGENVALUES)
    # The Laplacian's smallest eigenvalues are 1 minus the largest of the normalised affinity.
    if count <= DENSE_EIGEN_MAX:
        similarities, vectors = scipy.linalg.eigh(normalised.toarray(), subset_by_index=[count - kept, count - 1])
    else:
        similarities, vectors = scipy.sparse.linalg.eigsh(normalised, k=kept, which="LA", v0=np.ones(count))
    order = np.argsort(-similarities, kind="stable")
    eigenvalues = np.clip(1 - similarities[order], 0.0, None)
    vectors = vectors[:, order]
    if k is None:
        largest = min(MAX_CLUSTERS, count // 2, kept - 1)
        gaps = np.diff(eigenvalues[: largest + 1])
        k = int(np.argmax(gaps[1:]) + 2)
    embedded = vectors[:, :k]
    embedded = embedded / np.maximum(np.linalg.norm(embedded, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    assignments = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(embedded)
    return assignments.astype(np.int64), eigenvalues


def mean_picture(session, indices: np.ndarray) -> np.ndarray:
    """The mean of the pictures of ``indices`` as the model sees them, ``(H, W, 3)`` uint8."""
    total = None
    for index in indices:
        view = np.asarray(session.view(int(index)), dtype=np.float64)
        view = np.repeat(view[..., None], 3, axis=2) if view.ndim == 2 else view[..., :3]
        total = view if total is None else total + view
    return np.clip(np.rint(total / len(indices)), 0, 255).astype(np.uint8)
