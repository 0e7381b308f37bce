"""What changed between two models on one labelled test set: which images flipped, which classes gained or
lost, how the confusion moved and whether the two models see the same images as alike.

Everything comes from one pass of each model over the images (:mod:`cnnviz_widgets.session.dataset_pass`),
read back from the disk cache when it ran before: a dashboard or a diagnosis of either model shares it. The
two models may have different architectures and input sizes; they must have the same classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .checkpoint import check, progress_bar, scaled
from .diagnosis.embedding import NEIGHBOURS, neighbour_graph
from .inputs import check_callable_pair

FLIP_KINDS = ("newly_wrong", "newly_right", "changed_wrong")
"""The kinds of flip, as :attr:`ModelDiff.flips` names them."""
FLIP_COLUMNS = ("index", "label", "prediction_a", "prediction_b", "kind")
PER_CLASS_COLUMNS = ("class_name", "accuracy_a", "accuracy_b", "delta", "images")


@dataclass(frozen=True)
class ModelDiff:
    """What changed from model A to model B on the same labelled images.

    accuracy_a, accuracy_b: the share of the images each model classifies right.

    flips: one row per image whose prediction changed in a way that matters, by image index, with columns
        ``index, label, prediction_a, prediction_b, kind``; ``kind`` is ``"newly_wrong"`` (A right, B wrong),
        ``"newly_right"`` (A wrong, B right) or ``"changed_wrong"`` (both wrong, with different predictions).

    negative_flip_rate: the share of all images that are newly wrong (Yan et al. 2021, "Positive-congruent
        training"): the regressions a user of A meets with B, however B's accuracy moved.

    positive_flip_rate: the share of all images that are newly right.

    per_class: one row per class, indexed by class, with ``class_name``, ``accuracy_a``, ``accuracy_b``,
        ``delta`` (``accuracy_b - accuracy_a``) and ``images`` (how many images the class has; the
        accuracies are NaN for a class without images).

    confusion_delta: B's confusion matrix minus A's, ``(K, K)`` int64, rows the true class and columns the
        predicted one: positive where B makes more of that (right or wrong) prediction than A.

    embedding_agreement: ``(N,)`` float, per image, the share of its ``k`` nearest neighbours (cosine, in
        each model's classifier-input embedding) that are the same in A's space and in B's: ``|N_A & N_B| / k``,
        1 when both models see the same images as its closest, 0 when they share none. Neighbours are
        images, not coordinates, so the embeddings may differ in size and basis (two architectures).

    neighbours: ``k``, the neighbours per image ``embedding_agreement`` compares (10, or one fewer than the
        images when there are fewer).

    labels, predictions_a, predictions_b: ``(N,)`` int64, the true class and each model's prediction.

    class_names: one name per class.
    """

    accuracy_a: float
    accuracy_b: float
    flips: pd.DataFrame
    negative_flip_rate: float
    positive_flip_rate: float
    per_class: pd.DataFrame
    confusion_delta: np.ndarray
    embedding_agreement: np.ndarray
    neighbours: int
    labels: np.ndarray
    predictions_a: np.ndarray
    predictions_b: np.ndarray
    class_names: list[str]

    @property
    def count(self) -> int:
        """Images compared."""
        return len(self.labels)


def model_diff(
    model_a, model_b, images, labels=None, preprocess=None, *, class_names=None, output=None, cache=None, checkpoint=None
) -> ModelDiff:
    """What changed from ``model_a`` to ``model_b`` on labelled ``images``, from one pass of each model (read
    back from the disk cache when it ran before), as a :class:`ModelDiff`.

    images, labels, class_names, output, cache: as :func:`~cnnviz_widgets.explore` takes them; labels may be
        omitted when the images carry them (a folder of class subfolders, a Dataset of pairs).
    preprocess: one callable for both models, or a pair ``(preprocess_a, preprocess_b)`` when they read
        different inputs (another size, another normalisation).
    checkpoint: ``checkpoint(fraction_done)``, called often; raise from it to stop. Model A's pass fills the
        first half, model B's the second. Without it, a progress bar shows.
    Neither model is touched: each pass runs on the model's private replica.
    """
    from .session import Session

    preprocess_a, preprocess_b = check_callable_pair(preprocess, "preprocess")
    session_a = Session(
        model_a, images, preprocess=preprocess_a, class_names=class_names, labels=labels, output=output, cache=cache
    )
    session_b = None
    try:
        if session_a.labels is None:
            raise ValueError("labels: comparing two models needs the true class of each image; pass labels=")
        if session_a.count < 2:
            raise ValueError(f"images: expected at least 2 images to compare neighbours, got {session_a.count}")
        # B reads the labels A resolved, so a folder's subfolders map to the same classes for both; the class
        # names are A's, so B's count is checked here rather than against class_names.
        session_b = Session(model_b, images, preprocess=preprocess_b, labels=session_a.labels, output=output, cache=cache)
        if session_b.num_classes != session_a.num_classes:
            raise ValueError(
                f"model_b: outputs {session_b.num_classes} classes, but model_a outputs {session_a.num_classes}; "
                "both models must classify the same classes"
            )
        if checkpoint is not None:
            return diff_of(session_a, session_b, checkpoint)
        with progress_bar(2 * session_a.count, "model_diff") as shown:
            return diff_of(session_a, session_b, shown)
    finally:
        session_a.close()
        if session_b is not None:
            session_b.close()


def diff_of(session_a, session_b, checkpoint=None, class_names=None) -> ModelDiff:
    """The :class:`ModelDiff` of two sessions on the same labelled images, from each one's pass (read back from
    its caches when it ran before); A's pass fills the first half of ``checkpoint``'s progress. The classes
    are named by ``class_names``, by default A's."""
    evaluation_a, embeddings_a = session_a.dataset_pass.results(scaled(checkpoint, 0.0, 0.5))
    evaluation_b, embeddings_b = session_b.dataset_pass.results(scaled(checkpoint, 0.5, 1.0))
    # A pass read from the disk cache, or one that ends on a partial batch, reports no last step.
    check(checkpoint, 1.0)
    labels = session_a.labels
    predictions_a = np.asarray(evaluation_a.predictions, dtype=np.int64)
    predictions_b = np.asarray(evaluation_b.predictions, dtype=np.int64)
    count = len(labels)
    flips = flip_table(labels, predictions_a, predictions_b)
    kinds = flips["kind"].value_counts()
    neighbours = min(NEIGHBOURS, count - 1)
    return ModelDiff(
        accuracy_a=float((predictions_a == labels).mean()),
        accuracy_b=float((predictions_b == labels).mean()),
        flips=flips,
        negative_flip_rate=float(kinds.get("newly_wrong", 0) / count),
        positive_flip_rate=float(kinds.get("newly_right", 0) / count),
        per_class=per_class_table(labels, predictions_a, predictions_b, class_names or session_a.class_names),
        confusion_delta=evaluation_b.confusion.astype(np.int64) - evaluation_a.confusion.astype(np.int64),
        embedding_agreement=neighbour_agreement(embeddings_a, embeddings_b, neighbours),
        neighbours=neighbours,
        labels=labels,
        predictions_a=predictions_a,
        predictions_b=predictions_b,
        class_names=list(class_names or session_a.class_names),
    )


def flip_table(labels: np.ndarray, predictions_a: np.ndarray, predictions_b: np.ndarray) -> pd.DataFrame:
    """The images whose prediction changed in a way that matters (see :attr:`ModelDiff.flips`), by index."""
    right_a, right_b = predictions_a == labels, predictions_b == labels
    kind = np.full(len(labels), "", dtype=object)
    kind[right_a & ~right_b] = "newly_wrong"
    kind[~right_a & right_b] = "newly_right"
    kind[~right_a & ~right_b & (predictions_a != predictions_b)] = "changed_wrong"
    index = np.flatnonzero(kind != "")
    return pd.DataFrame(
        {
            "index": index.astype(np.int64),
            "label": labels[index],
            "prediction_a": predictions_a[index],
            "prediction_b": predictions_b[index],
            "kind": pd.Categorical(kind[index], categories=FLIP_KINDS),
        },
        columns=list(FLIP_COLUMNS),
    )


def per_class_table(labels, predictions_a, predictions_b, class_names: list[str]) -> pd.DataFrame:
    """Each class's accuracy under A and B (see :attr:`ModelDiff.per_class`)."""
    classes = len(class_names)
    images = np.bincount(labels, minlength=classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy_a = np.bincount(labels, weights=predictions_a == labels, minlength=classes) / images
        accuracy_b = np.bincount(labels, weights=predictions_b == labels, minlength=classes) / images
    table = pd.DataFrame(
        {
            "class_name": class_names,
            "accuracy_a": accuracy_a,
            "accuracy_b": accuracy_b,
            "delta": accuracy_b - accuracy_a,
            "images": images.astype(np.int64),
        },
        columns=list(PER_CLASS_COLUMNS),
    )
    table.index.name = "class"
    return table


def neighbour_agreement(embeddings_a, embeddings_b, k: int) -> np.ndarray:
    """Per image, the share of its ``k`` nearest neighbours (cosine) that are the same in both embeddings."""
    indices_a = neighbour_graph(embeddings_a, k).indices
    indices_b = neighbour_graph(embeddings_b, k).indices
    # Each row's neighbours are distinct images: the shared ones are the repeats in the joined row.
    joined = np.sort(np.concatenate([indices_a, indices_b], axis=1), axis=1)
    shared = (joined[:, 1:] == joined[:, :-1]).sum(axis=1)
    return shared / k
