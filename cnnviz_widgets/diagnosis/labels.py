"""Which labels look wrong, from an :class:`~cnnviz_widgets.data.Evaluation`: confident learning (label
issues), and FiftyOne Brain's hardness and mistakenness of each image.

Confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset
Labels", JAIR 2021) is computed here as ``cleanlab.filter.find_label_issues(labels, pred_probs)`` computes it
by default (``filter_by="prune_by_noise_rate"``), vectorised over classes so that 1,000 classes cost no
Python loop per class.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd

from ..data import Evaluation

COLUMNS = ("index", "given", "suggested", "score", "given_probability", "suggested_probability")
# cleanlab's fuzzy comparison: a probability this close below a class's threshold still passes it, and a
# given label this close below the top probability still counts as the prediction.
TOLERANCE = 1e-6
# cleanlab's floor on a threshold (twice the tolerance, so that a class of all-zero probabilities passes
# nothing), and the threshold of a class no image is labelled with: above any probability.
THRESHOLD_FLOOR = 2e-6
ABSENT_CLASS_THRESHOLD = 2.0
# A class with this many images or fewer keeps them all, as cleanlab's ``min_examples_per_class`` default.
MIN_IMAGES_PER_CLASS = 1
# Rows of the probability matrix compared with the thresholds at once: 8 MB of booleans at 1,000 classes.
CHUNK_ROWS = 8192
# Margins ranked at once while pruning: about 100 MB of working arrays.
PRUNE_BATCH = 4_000_000


def label_issues(evaluation: Evaluation) -> pd.DataFrame:
    """The images whose given label confident learning finds wrong, most suspect first.

    Columns: ``index`` (the image), ``given`` (its label), ``suggested`` (the class the confident joint
    counts it in: the class other than its label whose per-class threshold it passes, the most probable
    one when it passes several; the most probable class when it passes none but its label's), ``score`` in
    [0, 1], higher is more suspect: ``1 - given_probability``, cleanlab's ``"self_confidence"`` ranking
    turned round, ``given_probability`` and ``suggested_probability`` (the softmax probabilities of both).

    As cleanlab's default:

    1. each class's threshold is the mean probability of that class over the images labelled with it;
    2. an image counts in the confident joint ``C[given, true]`` under the class it passes the threshold of
       (within 1e-6), the most probable one if several; images passing none are left out;
    3. the joint gets at least one image on each diagonal cell, then is calibrated: each row scaled to the
       number of images with that label, the whole to the number of images, rounded keeping row totals;
    4. for each off-diagonal cell ``(given k, true j)`` the ``C[k, j]`` images labelled ``k`` with the
       largest ``p(j) - p(k)`` are flagged (a class of one image keeps it);
    5. an image whose given label is (within 1e-6) the most probable class is never flagged.

    With every probability kept (``evaluation.probabilities``) this is exact: the same images as cleanlab.
    With only each image's top classes kept (``probabilities`` None: ``top_classes``, ``top_probabilities``
    and ``given_probabilities``, as a pass over a large test set keeps them), the thresholds are still exact
    (every image keeps its given label's probability), and so are the most probable class and step 5. Step
    2 sees the kept classes and the given label with their probabilities, and gives every other class an
    even share of the probability they leave. What this can miss: a class outside an image's top k whose
    own probability passes its threshold while the even share does not, or the other way round. Only a class
    whose own images get little of its probability (one or two images, mislabelled) has a threshold that
    low; what it changes is mostly whether an image counts under its most probable class or is left out.
    Step 4 ranks a class outside an image's top k at the same even share.
    """
    _check_evaluation(evaluation)
    if evaluation.probabilities is not None:
        view = _FullProbabilities(evaluation)
    elif evaluation.given_probabilities is not None:
        view = _TopProbabilities(evaluation)
    else:
        raise ValueError(
            "evaluation: keeps neither every probability (probabilities is None) nor the probability of the "
            "given labels (given_probabilities is None); use the evaluation of a pass over the test set, or "
            "evaluate(..., top_k=None) to keep every probability"
        )
    given = view.given
    num_classes = view.num_classes
    label_counts = np.bincount(given, minlength=num_classes)

    guess, confident = view.confident_classes(_thresholds(given, view.given_probabilities, label_counts))
    joint = np.bincount(
        given[confident] * num_classes + guess[confident], minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    prune_counts = _keep_one_per_class(_calibrated(joint, label_counts))

    flagged = _pruned(view, given, label_counts, prune_counts)
    flagged &= ~_given_is_predicted(view)

    index = np.flatnonzero(flagged)
    suggested = np.where(confident[index] & (guess[index] != given[index]), guess[index], view.top_class[index])
    given_probability = view.given_probabilities[index].astype(np.float64)
    order = np.argsort(given_probability, kind="stable")
    index, suggested, given_probability = index[order], suggested[order], given_probability[order]
    return pd.DataFrame(
        {
            "index": index.astype(np.int64),
            "given": given[index].astype(np.int64),
            "suggested": suggested.astype(np.int64),
            "score": 1.0 - given_probability,
            "given_probability": given_probability,
            "suggested_probability": view.probabilities_of(index, suggested).astype(np.float64),
        },
        columns=list(COLUMNS),
    )


def hardness(evaluation: Evaluation) -> np.ndarray:
    """(N,) float64: FiftyOne Brain's hardness of each image, ``entropy(softmax(logits))`` in nats
    (``fiftyone.brain.compute_hardness`` for classifications: ``scipy.stats.entropy`` of the softmax).

    From ``evaluation.entropy`` when the pass kept it, else from ``evaluation.probabilities``."""
    _check_evaluation(evaluation)
    if evaluation.entropy is not None:
        return np.asarray(evaluation.entropy, dtype=np.float64)
    if evaluation.probabilities is None:
        raise ValueError(
            "evaluation: keeps neither the entropy of each softmax (entropy is None) nor every probability "
            "(probabilities is None); use the evaluation of a pass over the test set, or "
            "evaluate(..., top_k=None) to keep every probability"
        )
    probabilities = np.asarray(evaluation.probabilities, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probabilities > 0, probabilities * np.log(probabilities), 0.0)
    return -terms.sum(axis=1)


def mistakenness(evaluation: Evaluation) -> np.ndarray:
    """(N,) float64 in [0, 1]: FiftyOne Brain's mistakenness of each image's label, from the prediction's
    confidence (``fiftyone.brain.compute_mistakenness`` for classifications, its default
    ``use_logits=False``): ``(m * confidence + 1) / 2`` with ``m = -1`` when the prediction agrees with the
    label and ``m = +1`` when it does not. A confident mistake scores near 1, a confident right answer near
    0, an unsure prediction near 0.5."""
    _check_evaluation(evaluation)
    sign = np.where(evaluation.correct, -1.0, 1.0)
    return (sign * np.asarray(evaluation.confidence, dtype=np.float64) + 1.0) / 2.0


def _check_evaluation(evaluation) -> None:
    if not isinstance(evaluation, Evaluation):
        raise TypeError(
            f"evaluation: expected a cnnviz_widgets.data.Evaluation (from evaluate or a pass over the test "
            f"set), got {type(evaluation).__name__}"
        )
    labels = np.asarray(evaluation.labels)
    if labels.size and (labels.min() < 0 or labels.max() >= evaluation.num_classes):
        raise ValueError(
            f"evaluation: labels range over {labels.min()}..{labels.max()}; expected class indices "
            f"0..{evaluation.num_classes - 1}"
        )


def _thresholds(given: np.ndarray, given_probabilities: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """Each class's mean self-confidence: the mean probability of the class over the images labelled with
    it (the exact per-class threshold of confident learning)."""
    sums = np.bincount(given, weights=given_probabilities.astype(np.float64), minlength=len(label_counts))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(label_counts > 0, sums / label_counts, ABSENT_CLASS_THRESHOLD)
    return np.maximum(means, THRESHOLD_FLOOR)


def _rounded_keeping_row_totals(counts: np.ndarray) -> np.ndarray:
    """Round each row to integers whose sum is the row's sum rounded: the rows that rounding left short
    (over) gain (lose) one on the entries rounded down (up) the most, as cleanlab's
    ``round_preserving_row_totals``."""
    rounded = np.round(counts)
    shortfall = (np.round(counts.sum(axis=1)) - rounded.sum(axis=1)).astype(np.int64)
    rows = np.flatnonzero(shortfall)
    if rows.size:
        residual = counts[rows] - rounded[rows]
        # Short rows take the largest residuals first, over rows the smallest; equal residuals in the order
        # of numpy's default sort, as cleanlab takes them.
        order = np.argsort(residual, axis=1)
        order = np.where((shortfall[rows] > 0)[:, None], order[:, ::-1], order)
        chosen = np.arange(counts.shape[1])[None, :] < np.abs(shortfall[rows])[:, None]
        row_of, rank = np.nonzero(chosen)
        rounded[rows[row_of], order[row_of, rank]] += np.sign(shortfall[rows])[row_of]
    return rounded.astype(np.int64)


def _calibrated(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """The confident joint scaled so that each row holds as many images as carry that label, then so that
    the whole holds every image, in integer counts."""
    row_totals = np.maximum(joint.sum(axis=1), 1e-100)
    scaled = joint / row_totals[:, None] * label_counts[:, None]
    scaled = scaled / max(scaled.sum(), 1e-100) * label_counts.sum()
    return _rounded_keeping_row_totals(scaled)


def _keep_one_per_class(joint: np.ndarray) -> np.ndarray:
    """How many images to flag in each cell ``(given k, true j)``: the calibrated joint, with each diagonal
    raised to at least ``MIN_IMAGES_PER_CLASS`` and the amount taken evenly from the row's nonzero
    off-diagonal cells, rounded down (cleanlab's ``_keep_at_least_n_per_class``)."""
    diagonal = joint.diagonal()
    raised = np.maximum(diagonal, MIN_IMAGES_PER_CLASS)
    off_cells = np.maximum(np.count_nonzero(joint, axis=1) - 1, 1)
    counts = joint - ((raised - diagonal) / off_cells)[:, None]
    counts[counts < 0] = 0
    np.fill_diagonal(counts, raised)
    return np.floor(counts).astype(np.int64)


def _pruned(view, given: np.ndarray, label_counts: np.ndarray, prune_counts: np.ndarray) -> np.ndarray:
    """(N,) bool: in each off-diagonal cell ``(k, j)``, the ``prune_counts[k, j]`` images labelled ``k``
    with the largest ``p(j) - p(k)``, every cell's margins ranked in one sort."""
    num_images = len(given)
    flagged = np.zeros(num_images, dtype=bool)
    cells = prune_counts.copy()
    np.fill_diagonal(cells, 0)
    cells[label_counts <= MIN_IMAGES_PER_CLASS] = 0
    cell_given, cell_true = np.nonzero(cells)
    if not cell_given.size:
        return flagged
    by_class = np.argsort(given, kind="stable")
    class_starts = np.concatenate(([0], np.cumsum(label_counts)[:-1]))
    cell_sizes = label_counts[cell_given]
    # Batches of whole cells, each holding at most PRUNE_BATCH margins (or one larger cell).
    ends = np.cumsum(cell_sizes)
    batch_starts = [0]
    while batch_starts[-1] < len(cell_sizes):
        limit = (ends[batch_starts[-1] - 1] if batch_starts[-1] else 0) + PRUNE_BATCH
        batch_starts.append(max(int(np.searchsorted(ends, limit, side="right")), batch_starts[-1] + 1))
    for first, last in pairwise(batch_starts):
        sizes = cell_sizes[first:last]
        cell = np.repeat(np.arange(last - first), sizes)
        cell_offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        position = np.arange(len(cell)) - cell_offsets[cell]
        images = by_class[class_starts[cell_given[first:last]][cell] + position]
        true_class = cell_true[first:last][cell]
        margins = view.probabilities_of(images, true_class) - view.given_probabilities[images]
        # Largest margin first within each cell; equal margins keep the images' order, as cleanlab's sort.
        order = np.lexsort((-margins, cell))
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order)) - cell_offsets[cell[order]]
        flagged[images[rank < cells[cell_given[first:last], cell_true[first:last]][cell]]] = True
    return flagged


def _given_is_predicted(view) -> np.ndarray:
    """(N,) bool: whether the given label, raised by the tolerance, is the most probable class (the first
    of equal ones), as cleanlab's final filter sees it."""
    dtype = view.given_probabilities.dtype
    raised = view.given_probabilities + dtype.type(TOLERANCE)
    top = view.top_class
    return (top == view.given) | (raised > view.top_probability) | (
        (raised == view.top_probability) & (view.given < top)
    )


class _FullProbabilities:
    """Every probability of every image: confident learning computed exactly."""

    def __init__(self, evaluation: Evaluation):
        self.probabilities = np.asarray(evaluation.probabilities)
        if self.probabilities.ndim != 2 or len(self.probabilities) != len(evaluation.labels):
            raise ValueError(
                f"evaluation: probabilities of shape {self.probabilities.shape}; expected "
                f"({len(evaluation.labels)}, K), one row per label"
            )
        self.num_classes = self.probabilities.shape[1]
        self.given = np.asarray(evaluation.labels, dtype=np.int64)
        rows = np.arange(len(self.given))
        self.given_probabilities = self.probabilities[rows, self.given]
        self.top_class = np.empty(len(self.given), dtype=np.int64)
        self.top_probability = np.empty(len(self.given), dtype=self.probabilities.dtype)

    def confident_classes(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each image's class in the confident joint and whether it has one; also fills the most probable
        class and its probability, in the same pass over the matrix."""
        guess = np.empty(len(self.given), dtype=np.int64)
        confident = np.empty(len(self.given), dtype=bool)
        lowered = (thresholds - TOLERANCE).astype(self.probabilities.dtype)
        for start in range(0, len(self.given), CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            chunk = self.probabilities[rows]
            passes = chunk >= lowered
            passed = np.count_nonzero(passes, axis=1)
            self.top_class[rows] = chunk.argmax(axis=1)
            self.top_probability[rows] = chunk[np.arange(len(chunk)), self.top_class[rows]]
            guess[rows] = np.where(passed > 1, self.top_class[rows], passes.argmax(axis=1))
            confident[rows] = passed > 0
        return guess, confident

    def probabilities_of(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        return self.probabilities[images, classes]


class _TopProbabilities:
    """Each image's top classes and its given label's probability only: thresholds exact, the confident
    joint from what was kept and an even share of the rest (see :func:`label_issues`)."""

    def __init__(self, evaluation: Evaluation):
        self.top_classes = np.asarray(evaluation.top_classes, dtype=np.int64)
        self.top_probabilities = np.asarray(evaluation.top_probabilities)
        self.given = np.asarray(evaluation.labels, dtype=np.int64)
        self.given_probabilities = np.asarray(evaluation.given_probabilities)
        count = len(self.given)
        if (
            self.top_classes.ndim != 2
            or self.top_classes.shape != self.top_probabilities.shape
            or len(self.top_classes) != count
            or self.given_probabilities.shape != (count,)
        ):
            raise ValueError(
                f"evaluation: top_classes of shape {self.top_classes.shape}, top_probabilities of shape "
                f"{self.top_probabilities.shape} and given_probabilities of shape "
                f"{self.given_probabilities.shape}; expected ({count}, k), ({count}, k) and ({count},)"
            )
        self.num_classes = evaluation.num_classes
        self.top_class = self.top_classes[:, 0]
        self.top_probability = self.top_probabilities[:, 0]
        self.given_listed = (self.top_classes == self.given[:, None]).any(axis=1)
        # What the kept probabilities leave, shared evenly by the classes not kept.
        unlisted_given = np.where(self.given_listed, 0.0, self.given_probabilities.astype(np.float64))
        rest = np.maximum(1.0 - self.top_probabilities.astype(np.float64).sum(axis=1) - unlisted_given, 0.0)
        unkept = self.num_classes - self.top_classes.shape[1] - (~self.given_listed)
        self.share = np.where(unkept > 0, rest / np.maximum(unkept, 1), 0.0)

    def confident_classes(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lowered = thresholds - TOLERANCE
        passes = self.top_probabilities >= lowered[self.top_classes]
        given_passes = (self.given_probabilities >= lowered[self.given]) & ~self.given_listed
        kept_passed = np.count_nonzero(passes, axis=1) + given_passes
        # The classes not kept pass when their share of the rest reaches their threshold: every class with
        # so low a threshold, less the kept ones (whose own probability, at least the share, said instead).
        by_threshold = np.argsort(lowered, kind="stable")
        low = np.searchsorted(lowered[by_threshold], self.share, side="right")
        kept_low = np.count_nonzero(lowered[self.top_classes] <= self.share[:, None], axis=1) + (
            ~self.given_listed & (lowered[self.given] <= self.share)
        )
        unkept_passed = low - kept_low
        passed = kept_passed + unkept_passed
        # With one class passing, cleanlab takes it (the lowest passing class index); with several, the argmax.
        lowest = np.where(passes, self.top_classes, self.num_classes).min(axis=1)
        lowest = np.where(given_passes, np.minimum(lowest, self.given), lowest)
        lowest_index_below = np.minimum.accumulate(by_threshold)
        lowest_unkept = lowest_index_below[np.maximum(low - 1, 0)]
        lowest = np.where(kept_passed == 0, lowest_unkept, lowest)
        return np.where(passed > 1, self.top_class, lowest), passed > 0

    def probabilities_of(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """The kept probability of each ``(image, class)``: the given label's, one of the top classes', or
        the image's even share of the rest for a class not kept."""
        listed = self.top_classes[images] == classes[:, None]
        kept = np.where(listed, self.top_probabilities[images], 0).max(axis=1)
        kept = np.where(listed.any(axis=1), kept, self.share[images])
        is_given = classes == self.given[images]
        return np.where(is_given, self.given_probabilities[images], kept).astype(self.top_probabilities.dtype)
