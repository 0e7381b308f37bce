"""Findings in the embedding space of a test set: near duplicates, outliers and weak slices.

All three start from one cosine neighbour graph (:func:`neighbour_graph`), computed once and shared.

Up to ``EXACT_LIMIT`` images the graph is exact, on the full embeddings. Above it, the embeddings are reduced
by PCA to ``COMPONENTS`` dimensions, an exact search there gives ``CANDIDATES`` candidates per image, and the
candidates are ranked again by their cosine similarity on the full embeddings, so the similarities reported are
exact even when a neighbour is missed. ``bench/bench_diagnosis.py`` (``bench_neighbours``) measured it against
pynndescent on 50,000 x 1,280 clustered embeddings: faster, with less memory and a better recall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cnnviz_widgets.neighbours import _checked_int, _embeddings_matrix

NEIGHBOURS = 10
EXACT_LIMIT = 4096
COMPONENTS = 128
CANDIDATES = 3
# Images compared at once against the whole set: a (BLOCK, N) float32 block is 50 MB at N = 50,000.
BLOCK = 256
# Rows of a sample large enough to fit the principal axes, small enough to copy.
PCA_SAMPLE = 5000
# Measured on the six bundled photos through EfficientNet-Lite0: resized to 3/4 and re-encoded as JPEG at
# quality 75, a photo keeps a similarity of 0.91 to 0.98 with its original (at 1/2 size, 0.83 to 0.96); two
# crops of the same photo, each 80% of it, framed from opposite corners, are 0.76 to 0.91 alike; two different
# photos are at most 0.34 alike.
DUPLICATE_THRESHOLD = 0.9
DUPLICATE_RELATIVE = 0.15
SLICE_COMPONENTS = 32
SLICE_MIN_SIZE = 10
SLICE_MAX_CLUSTERS = 256
WILSON_Z = 1.959963984540054  # the 97.5th percentile of the standard normal: a two-sided 95% interval

METHODS = ("auto", "exact", "pca")


@dataclass(frozen=True)
class NeighbourGraph:
    """Each image's ``k`` nearest other images by cosine similarity of their embeddings.

    indices: int64 ``(N, k)``, nearest first; an image is never its own neighbour (its duplicates are).
    similarities: float32 ``(N, k)``, the cosine similarity of each neighbour, descending along each row.
    method: the search that made it: ``"exact"`` or ``"pca"``.
    """

    indices: np.ndarray
    similarities: np.ndarray
    method: str

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def __len__(self) -> int:
        return len(self.indices)


def _unit_rows(array: np.ndarray, rows: slice | np.ndarray, inverse_norms: np.ndarray) -> np.ndarray:
    return array[rows] * inverse_norms[rows, None]


def _inverse_norms(array: np.ndarray) -> np.ndarray:
    # sqrt of each row's dot product with itself: no squared copy of the whole matrix is made.
    norms = np.sqrt(np.einsum("ij,ij->i", array, array))
    if not np.isfinite(norms).all():
        raise ValueError("embeddings: contains NaN or infinite values")
    # A row of zeros has similarity 0 to every row, as in scikit-learn.
    return np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)


def _exact_graph(array: np.ndarray, inverse_norms: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    unit = torch.from_numpy(np.ascontiguousarray(array * inverse_norms[:, None], dtype=np.float32))
    indices = np.empty((len(unit), k), np.int64)
    similarities = np.empty((len(unit), k), np.float32)
    for start in range(0, len(unit), BLOCK):
        block = unit[start : start + BLOCK] @ unit.T
        rows = torch.arange(len(block))
        block[rows, rows + start] = -math.inf
        # torch.topk selects the k largest of a 50,000-wide row five times faster than np.argpartition.
        values, columns = torch.topk(block, k, dim=1)
        indices[start : start + BLOCK] = columns.numpy()
        similarities[start : start + BLOCK] = values.numpy()
    return indices, np.clip(similarities, -1.0, 1.0)


def _principal_axes(array: np.ndarray, inverse_norms: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the leading ``components`` principal axes ``(D, components)`` of the unit rows."""
    rng = np.random.default_rng(0)
    sample = rng.choice(len(array), size=min(PCA_SAMPLE, len(array)), replace=False)
    sample.sort()
    unit = _unit_rows(array, sample, inverse_norms).astype(np.float32, copy=False)
    mean = unit.mean(axis=0)
    unit -= mean
    if len(unit) < unit.shape[1]:
        # Fewer rows than dimensions: the rows' own decomposition, where a (D, D) covariance of 8,960 dimensions
        # took a minute for three images.
        _, _, right = np.linalg.svd(unit, full_matrices=False)
        return mean, np.ascontiguousarray(right[:components].T, dtype=np.float32)
    # The (D, D) covariance and its eigenvectors: 1,280 x 1,280 takes a fraction of a second and copies nothing
    # of size N.
    eigenvalues, eigenvectors = np.linalg.eigh(unit.T @ unit)
    return mean, np.ascontiguousarray(eigenvectors[:, ::-1][:, :components], dtype=np.float32)


def _reduced(array: np.ndarray, inverse_norms: np.ndarray, components: int) -> np.ndarray:
    mean, axes = _principal_axes(array, inverse_norms, components)
    reduced = np.empty((len(array), axes.shape[1]), np.float32)
    offset = mean @ axes
    # Scaling and centring after the product: no copy of the embeddings is made, only of the reduced block.
    for start in range(0, len(array), 4 * BLOCK):
        rows = slice(start, start + 4 * BLOCK)
        reduced[rows] = (array[rows] @ axes) * inverse_norms[rows, None] - offset
    return reduced


def _pca_graph(array: np.ndarray, inverse_norms: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates by exact search in the PCA reduction, ranked again by their exact cosine similarity."""
    reduced = torch.from_numpy(_reduced(array, inverse_norms, min(COMPONENTS, array.shape[1])))
    squared = (reduced * reduced).sum(dim=1)
    candidates = min(CANDIDATES * k, len(array) - 1)
    indices = np.empty((len(array), k), np.int64)
    similarities = np.empty((len(array), k), np.float32)
    for start in range(0, len(array), BLOCK):
        stop = min(start + BLOCK, len(array))
        # Unit rows: the nearest by Euclidean distance are the most similar by cosine. The squared norm of the
        # row itself is the same along the row and does not change the order.
        block = reduced[start:stop] @ reduced.T
        block.mul_(2).sub_(squared)
        rows = torch.arange(stop - start)
        block[rows, rows + start] = -math.inf
        _, columns = torch.topk(block, candidates, dim=1)
        columns = columns.numpy()
        unit = _unit_rows(array, slice(start, stop), inverse_norms)
        exact = np.einsum("bd,bcd->bc", unit, array[columns]) * inverse_norms[columns]
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        indices[start:stop] = np.take_along_axis(columns, order, axis=1)
        similarities[start:stop] = np.take_along_axis(exact, order, axis=1)
    return indices, np.clip(similarities, -1.0, 1.0)


def neighbour_graph(embeddings, k: int = NEIGHBOURS, method: str = "auto") -> NeighbourGraph:
    """Each image's ``k`` nearest other images by cosine similarity of ``embeddings``.

    embeddings: an array or tensor ``(N, D)``, e.g. :func:`cnnviz_widgets.embed`'s.
    k: neighbours per image, from 1 to N - 1.
    method: ``"exact"`` compares every pair on the full embeddings; ``"pca"`` finds ``3 k`` candidates by an
    exact search on a 128-component PCA of the unit rows, then keeps the ``k`` most similar on the full
    embeddings (recall 0.99 of the true 10 neighbours on 50,000 x 1,280 clustered embeddings); ``"auto"`` is
    exact up to 4,096 images, ``"pca"`` above.
    """
    array = _embeddings_matrix(embeddings)
    count = len(array)
    k = _checked_int(k, "k")
    if not 1 <= k < count:
        raise ValueError(f"k: expected 1..{count - 1} neighbours (one fewer than the {count} rows), got {k}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {method!r}")
    inverse_norms = _inverse_norms(array)
    if method == "auto":
        method = "exact" if count <= EXACT_LIMIT else "pca"
    if method == "exact":
        indices, similarities = _exact_graph(array, inverse_norms, k)
    else:
        indices, similarities = _pca_graph(array, inverse_norms, k)
    return NeighbourGraph(indices, similarities.astype(np.float32, copy=False), method)


def _check_graph(graph) -> NeighbourGraph:
    if not isinstance(graph, NeighbourGraph):
        raise TypeError(f"graph: expected a NeighbourGraph from neighbour_graph(), got {type(graph).__name__}")
    return graph


def _class_array(values, count: int, argument: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        raise TypeError(f"{argument}: expected a 1-D array of class indices, got {array.dtype} of shape {array.shape}")
    if len(array) != count:
        raise ValueError(f"{argument}: expected {count} entries, one per image, got {len(array)}")
    return array.astype(np.int64, copy=False)


def _checked_fraction(value, argument: str, *, closed: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{argument}: expected a number, got {type(value).__name__}")
    value = float(value)
    inside = 0.0 < value <= 1.0 if closed else 0.0 < value < 1.0
    if not inside:
        raise ValueError(f"{argument}: expected a number in {'(0, 1]' if closed else '(0, 1)'}, got {value}")
    return value


def _digest_pairs(input_digests: np.ndarray) -> np.ndarray:
    """Every pair ``(a, b)``, a < b, of images whose inputs have the same digest."""
    order = np.argsort(input_digests, kind="stable")
    sorted_digests = input_digests[order]
    starts = np.flatnonzero(np.r_[True, sorted_digests[1:] != sorted_digests[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    found = [np.empty((0, 2), np.int64)]
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        members = order[start : start + size]
        first, second = np.triu_indices(size, 1)
        found.append(np.column_stack([members[first], members[second]]))
    return np.sort(np.concatenate(found), axis=1).astype(np.int64)


def near_duplicates(
    graph, labels=None, input_digests=None, threshold: float = DUPLICATE_THRESHOLD, relative: float = DUPLICATE_RELATIVE
) -> pd.DataFrame:
    """Pairs of images that look the same to the model, conflicting labels first.

    graph: :func:`neighbour_graph`'s result; a pair is found when one is among the other's neighbours with a
    cosine similarity of at least ``threshold``, and a cosine distance of at most ``relative`` times the set's
    median distance from an image to its farthest neighbour in the graph.
    labels: ``(N,)`` class indices, or None (then no pair is a conflict).
    input_digests: ``(N,)`` digests of the model's inputs (``Evaluation.input_digests``), or None; images with
    equal digests are exact duplicates, reported with similarity 1.0 even when they are not among each other's
    neighbours.
    threshold: the cosine similarity from which a pair is a near duplicate, in (0, 1].
    relative: in (0, 1]; how much closer than the set's images usually are to their neighbours a near duplicate
    is. What "alike" means depends on the embedding: the digits CNN places two different images of a digit at a
    cosine similarity of 0.99 (its median distance to the 10th neighbour is 0.015, and 0.15 of it keeps 35
    pairs of its 450 images), where EfficientNet-Lite0 places two different photos below 0.35.
    Returns a DataFrame ``index_a, index_b, similarity, conflict``, one row per pair with ``index_a < index_b``:
    the pairs whose labels differ first, then by similarity, most similar first.
    """
    graph = _check_graph(graph)
    count = len(graph)
    labels = None if labels is None else _class_array(labels, count, "labels")
    threshold = _checked_fraction(threshold, "threshold", closed=True)
    relative = _checked_fraction(relative, "relative", closed=True)
    usual = float(np.median(1.0 - graph.similarities[:, -1]))
    close = (graph.similarities >= threshold) & (1.0 - graph.similarities <= relative * usual)
    rows = np.repeat(np.arange(count, dtype=np.int64), close.sum(axis=1))
    pairs = np.sort(np.column_stack([rows, graph.indices[close]]), axis=1)
    similarity = graph.similarities[close].astype(np.float64)
    if input_digests is not None:
        digests = np.asarray(input_digests)
        if digests.shape != (count,):
            raise ValueError(f"input_digests: expected {count} digests, one per image, got shape {digests.shape}")
        exact = _digest_pairs(digests)
        pairs = np.concatenate([exact, pairs])
        similarity = np.concatenate([np.ones(len(exact)), similarity])
    # Each pair once: a pair found from both sides, or by digest and by the graph, keeps its first row, which
    # is the digest's when there is one.
    _, first = np.unique(pairs, axis=0, return_index=True)
    pairs, similarity = pairs[first], similarity[first]
    conflict = np.zeros(len(pairs), bool) if labels is None else labels[pairs[:, 0]] != labels[pairs[:, 1]]
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -similarity, ~conflict))
    return pd.DataFrame(
        {
            "index_a": pairs[order, 0],
            "index_b": pairs[order, 1],
            "similarity": similarity[order],
            "conflict": conflict[order],
        }
    )


def outliers(graph, k: int | None = None, quantile: float = 0.99) -> pd.DataFrame:
    """The images farthest from their neighbours: the mean cosine distance to their ``k`` nearest, top part.

    graph: :func:`neighbour_graph`'s result.
    k: how many of each image's neighbours count, 1 to ``graph.k``; None: all of them.
    quantile: images whose score is above this quantile of all scores are reported, in (0, 1).
    Returns a DataFrame ``index, score``, highest score first.
    """
    graph = _check_graph(graph)
    if k is None:
        k = graph.k
    k = _checked_int(k, "k")
    if not 1 <= k <= graph.k:
        raise ValueError(f"k: expected 1..{graph.k}, the neighbours the graph holds, got {k}")
    quantile = _checked_fraction(quantile, "quantile", closed=False)
    scores = 1.0 - graph.similarities[:, :k].astype(np.float64).mean(axis=1)
    above = np.flatnonzero(scores > np.quantile(scores, quantile))
    above = above[np.argsort(-scores[above], kind="stable")]
    return pd.DataFrame({"index": above.astype(np.int64), "score": scores[above]})


def wilson_interval(successes, count, z: float = WILSON_Z) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of a proportion ``successes / count`` (95% two-sided by default).

    Unlike the normal approximation it stays inside [0, 1] and does not collapse to a point at 0 or 1
    (Wilson 1927; Brown, Cai and DasGupta 2001 recommend it for small counts).
    """
    successes = np.asarray(successes, dtype=np.float64)
    count = np.asarray(count, dtype=np.float64)
    proportion = successes / count
    denominator = 1.0 + z * z / count
    centre = (proportion + z * z / (2 * count)) / denominator
    spread = z / denominator * np.sqrt(proportion * (1 - proportion) / count + z * z / (4 * count * count))
    return centre - spread, centre + spread


def _check_slice_arguments(granularities, min_size: int, overlap: float, count: int) -> tuple[list[int], int, float]:
    min_size = _checked_int(min_size, "min_size")
    if min_size < 1:
        raise ValueError(f"min_size: expected at least 1 image, got {min_size}")
    overlap = _checked_fraction(overlap, "overlap", closed=True)
    if granularities is None:
        # Four times as many clusters at each level (k-means at 50,000 images takes seconds per level), down to
        # slices of about twice the smallest size reported.
        largest = max(2, min(SLICE_MAX_CLUSTERS, count // (2 * min_size)))
        return [4**level for level in range(1, 5) if 4**level <= largest] or [2], min_size, overlap
    if isinstance(granularities, (int, np.integer)) or not all(
        isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in granularities
    ):
        raise TypeError(f"granularities: expected a list of cluster counts, got {granularities!r}")
    if not granularities or not all(2 <= value <= count for value in granularities):
        raise ValueError(f"granularities: expected cluster counts from 2 to {count}, got {list(granularities)}")
    return sorted({int(value) for value in granularities}), min_size, overlap


def weak_slices(
    embeddings,
    labels,
    predictions,
    *,
    granularities=None,
    min_size: int = SLICE_MIN_SIZE,
    overlap: float = 0.5,
    seed: int = 0,
) -> pd.DataFrame:
    """Regions of the embedding space where the model is much less accurate than on the whole set.

    The unit embeddings are reduced by PCA to 32 components and clustered by k-means at several granularities
    (4, 16, 64 and 256 clusters), as slice finders such as Spotlight and Domino search the embedding space rather
    than the metadata. A cluster is a weak slice when the whole 95% Wilson interval of its accuracy lies below
    the accuracy of the whole set. Slices are ranked by the errors they explain, ``size x (overall accuracy -
    slice accuracy)``: the errors beyond those the overall accuracy predicts. A slice sharing at least
    ``overlap`` of the smaller one's images with a slice ranked above it is left out.

    embeddings: ``(N, D)``; labels, predictions: ``(N,)`` class indices.
    granularities: the numbers of clusters to try; None: 4, 16, 64, 256 clusters, or fewer for small sets.
    min_size: the smallest slice reported, in images.
    overlap: in (0, 1], the share of the smaller slice's images above which two slices are the same.
    Returns a DataFrame ``size, accuracy, low, high, true_class, predicted_class, members``: ``low, high`` the
    Wilson interval, ``true_class`` the slice's most common label, ``predicted_class`` its most common wrong
    prediction (-1 without errors), ``members`` an int64 array of image indices. ``attrs["overall"]`` holds the
    whole set's accuracy.
    """
    from sklearn.cluster import KMeans

    array = _embeddings_matrix(embeddings)
    count = len(array)
    labels = _class_array(labels, count, "labels")
    predictions = _class_array(predictions, count, "predictions")
    granularities, min_size, overlap = _check_slice_arguments(granularities, min_size, overlap, count)
    seed = _checked_int(seed, "seed")
    correct = labels == predictions
    overall = float(correct.mean())
    reduced = _reduced(array, _inverse_norms(array), min(SLICE_COMPONENTS, array.shape[1], count))

    if count < 2 * min_size:
        # A set smaller than two slices has no part to compare with the rest.
        granularities = []
    candidates = []
    for clusters in granularities:
        assignment = KMeans(clusters, n_init=1, random_state=seed).fit_predict(reduced)
        sizes = np.bincount(assignment, minlength=clusters)
        hits = np.bincount(assignment, weights=correct, minlength=clusters)
        with np.errstate(invalid="ignore", divide="ignore"):
            low, high = wilson_interval(hits, sizes)
        for cluster in np.flatnonzero((sizes >= min_size) & (high < overall)):
            accuracy = hits[cluster] / sizes[cluster]
            explained = sizes[cluster] * (overall - accuracy)
            candidates.append((explained, clusters, cluster, assignment, accuracy, low[cluster], high[cluster]))

    rows = []
    kept: list[np.ndarray] = []
    for explained, _, cluster, assignment, accuracy, low, high in sorted(candidates, key=lambda row: (-row[0], row[1])):
        members = np.flatnonzero(assignment == cluster).astype(np.int64)
        if any(np.intersect1d(members, other, assume_unique=True).size >= overlap * min(len(members), len(other)) for other in kept):
            continue
        kept.append(members)
        wrong = members[~correct[members]]
        rows.append(
            {
                "size": len(members),
                "accuracy": float(accuracy),
                "low": float(low),
                "high": float(high),
                "true_class": int(np.bincount(labels[members]).argmax()),
                "predicted_class": int(np.bincount(predictions[wrong]).argmax()) if len(wrong) else -1,
                "members": members,
            }
        )
    table = pd.DataFrame(rows, columns=["size", "accuracy", "low", "high", "true_class", "predicted_class", "members"])
    table.attrs["overall"] = overall
    return table
