"""The images nearest to one image as the model sees them: cosine similarity of their embeddings, exactly.

No index: the exact answer is two passes over the embeddings (the row norms, then one matrix-vector
product), which at 50,000 x 1,280 is well under a second (``bench/bench_projector.py``). An approximate index
would cost more than that to build for each layer, and could miss a neighbour the user is looking for.
"""

from __future__ import annotations

import numpy as np

NEIGHBOURS = 12


def _embeddings_matrix(embeddings) -> np.ndarray:
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().numpy()
    try:
        array = np.asarray(embeddings)
    except (TypeError, ValueError) as error:
        raise TypeError(f"embeddings: expected a numeric array (N, D), got {type(embeddings).__name__}") from error
    if array.ndim != 2:
        raise ValueError(f"embeddings: expected a 2-D array (N, D), got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"embeddings: expected numbers, got dtype {array.dtype}")
    # float64 embeddings stay float64; anything narrower is computed in float32, never copied wider.
    return array.astype(np.result_type(array.dtype, np.float32), copy=False)


def _checked_int(value, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argument}: expected an int, got {type(value).__name__}")
    return int(value)


def nearest(embeddings, index: int, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``embeddings`` most similar to row ``index`` by cosine similarity, most similar first.

    embeddings: an array or tensor ``(N, D)``.
    index: the image whose neighbours are wanted; it is not among them (other rows equal to it are).
    k: how many, from 1 to N - 1.
    Returns ``(indices, similarities)``: int64 ``(k,)`` and ``(k,)`` floats in [-1, 1]. Rows equally similar
    come in index order. A row of zeros has similarity 0 to every row, as in scikit-learn.
    """
    array = _embeddings_matrix(embeddings)
    count = len(array)
    index = _checked_int(index, "index")
    if not 0 <= index < count:
        raise ValueError(f"index: {index} out of range 0..{count - 1}")
    k = _checked_int(k, "k")
    if not 1 <= k < count:
        raise ValueError(f"k: expected 1..{count - 1} neighbours (one fewer than the {count} rows), got {k}")
    # sqrt of a row's dot product with itself: no squared copy of the whole matrix is made.
    norms = np.sqrt(np.einsum("ij,ij->i", array, array))
    if not np.isfinite(norms).all():
        raise ValueError("embeddings: contains NaN or infinite values")
    scale = norms * norms[index]
    scale[scale == 0] = 1.0
    similarities = (array @ array[index]) / scale
    similarities[index] = -np.inf
    # A stable sort of the whole row (a few milliseconds at 50,000) keeps ties in index order, which
    # np.argpartition would not.
    order = np.argsort(-similarities, kind="stable")[:k]
    return order.astype(np.int64), np.clip(similarities[order], -1.0, 1.0)
