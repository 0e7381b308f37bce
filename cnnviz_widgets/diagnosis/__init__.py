"""Find the problems of a labelled test set for the user: suspect labels, duplicates, outliers, weak slices and
the heatmap clusters of :mod:`cnnviz_widgets.heatmap_clusters`, in one ranked list.

Everything here reads the pass over the images (:mod:`cnnviz_widgets.session.dataset_pass`): its predictions,
what it keeps of each softmax and the classifier-input embeddings. No model runs. Each kind of finding is one
small function over those arrays (:mod:`.labels` over the probabilities, :mod:`.embedding` over the
embeddings) returning a pandas DataFrame, as cleanlab's and FiftyOne's users expect; :class:`Diagnosis` holds
them and ranks them as findings: by the images each finding explains.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..checkpoint import Checkpoint, check, progress_bar
from ..data import Evaluation
from .embedding import (
    near_duplicates,
    neighbour_graph,
    outliers,
    weak_slices,
    wilson_interval,
)
from .labels import hardness, label_issues, mistakenness

KINDS = ("label issues", "conflicting duplicates", "near duplicates", "outliers", "weak slice", "heatmap cluster")
"""The kinds of finding, as :meth:`Diagnosis.findings` names them."""
FINDING_COLUMNS = ("kind", "title", "count", "weight", "members", "evidence")
SUSPECT_COLUMNS = ("index", "source", "given", "suggested", "kind", "score")
LABEL_PAIR_MIN = 2
"""Suspect labels given one class and suggested another make a finding of their own from this many on."""
NEIGHBOURS = 10
"""Neighbours per image in the embedding space, for the near duplicates and the outliers (all the others in a
smaller set)."""
APART_MAP_CORRELATION = 0.2
"""A heatmap cluster stands apart from the rest of its class when its mean map correlates with the rest's below
this (Pearson, over the grid), or when the Wilson intervals of its accuracy and of the rest's do not overlap.
Measured on the digits CNN, whose classes hold no shortcut: every cluster's map correlates with the rest of its
class at 0.46 to 0.95, and the intervals overlap. On a CNN trained on digits of which one class carries a mark
(a shortcut, ``tests/test_heatmap_clusters.py``), the marked images' clusters are 87% to 92% right against 5% to
12% for the unmarked ones: intervals far apart."""


@dataclass(frozen=True)
class Diagnosis:
    """What is wrong with a labelled test set, as far as the model's pass over it tells.

    label_issues: ``index, given, suggested, score, given_probability, suggested_probability``, most suspect
        first (confident learning, see :func:`~cnnviz_widgets.diagnosis.labels.label_issues`);
    near_duplicates: ``index_a, index_b, similarity, conflict``, conflicting labels first;
    outliers: ``index, score``, farthest from their neighbours first;
    weak_slices: ``size, accuracy, low, high, true_class, predicted_class, members``, most errors explained first;
    hardness, mistakenness: ``(N,)``, per image (FiftyOne's definitions), for sorting a gallery;
    labels, predictions: ``(N,)``, the given and the predicted class of each image;
    class_names, sources: each class's name and each image's file (or name, when it is not a file);
    heatmap_clusters: the :class:`~cnnviz_widgets.heatmap_clusters.HeatmapClusters` added by
        :meth:`with_heatmap_clusters`, one per class clustered.
    """

    label_issues: pd.DataFrame
    near_duplicates: pd.DataFrame
    outliers: pd.DataFrame
    weak_slices: pd.DataFrame
    hardness: np.ndarray
    mistakenness: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    class_names: list[str]
    sources: list[str]
    heatmap_clusters: tuple = field(default=())

    @property
    def count(self) -> int:
        """Images diagnosed."""
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        return float((self.labels == self.predictions).mean())

    def with_heatmap_clusters(self, clusters) -> Diagnosis:
        """This diagnosis with the heatmap clusters of more classes (``HeatmapClusters``, one per class; a class
        clustered again replaces its former clusters), whose clusters that stand apart become findings."""
        added = {(result.target, result.layer, result.method): result for result in clusters}
        kept = tuple(result for result in self.heatmap_clusters if (result.target, result.layer, result.method) not in added)
        return replace(self, heatmap_clusters=kept + tuple(added.values()))

    def findings(self) -> pd.DataFrame:
        """Every finding in one list, most important first: one row per finding with ``kind`` (one of
        ``KINDS``), ``title`` (a sentence), ``count`` (images involved), ``weight`` (the rank: how many of the
        set's errors, or wrong labels, the finding explains; see each kind's function), ``members`` (the images,
        most telling first; for duplicates ``a, b, a, b, ...``) and ``evidence`` (a dict, by kind: for label issues, the given and suggested class and their
        probabilities of each member)."""
        rows = [
            *self._label_findings(),
            *self._duplicate_findings(),
            *self._outlier_findings(),
            *self._slice_findings(),
            *self._cluster_findings(),
        ]
        table = pd.DataFrame(rows, columns=list(FINDING_COLUMNS))
        # Stable, so that equal weights keep the order of KINDS.
        return table.sort_values("weight", ascending=False, kind="stable", ignore_index=True)

    def _name(self, class_index: int) -> str:
        return self.class_names[class_index]

    def _label_findings(self):
        """One finding per (given, suggested) pair of classes with several suspects (a confusion in the labelling),
        and one for the other suspects together; each suspect is one wrong label."""
        issues = self.label_issues
        pair_sizes = issues.groupby(["given", "suggested"])["index"].transform("size")
        for (given, suggested), group in issues[pair_sizes >= LABEL_PAIR_MIN].groupby(["given", "suggested"], sort=False):
            count = len(group)
            yield (
                "label issues",
                f"{count} images labelled {self._name(given)} look like {self._name(suggested)}",
                count,
                float(count),
                group["index"].to_numpy(np.int64),
                _label_evidence(group),
            )
        scattered = issues[pair_sizes < LABEL_PAIR_MIN]
        if not scattered.empty:
            count = len(scattered)
            yield (
                "label issues",
                f"{count} image{_s(count)} whose label looks wrong",
                count,
                float(count),
                scattered["index"].to_numpy(np.int64),
                _label_evidence(scattered),
            )

    def _duplicate_findings(self):
        """Pairs with different labels (one of the two labels at least is wrong: one error a pair) and pairs
        with the same label (a test set that counts an image twice: the pairs the model gets wrong count)."""
        pairs = self.near_duplicates
        for kind, rows in (("conflicting duplicates", pairs[pairs["conflict"]]), ("near duplicates", pairs[~pairs["conflict"]])):
            if rows.empty:
                continue
            members = rows[["index_a", "index_b"]].to_numpy(np.int64)
            if kind == "conflicting duplicates":
                title, weight = f"{len(rows)} pair{_s(len(rows))} of near-identical images with different labels", float(len(rows))
            else:
                wrong = self.labels[members[:, 0]] != self.predictions[members[:, 0]]
                title, weight = f"{len(rows)} pair{_s(len(rows))} of near-identical images", float(wrong.sum())
            yield kind, title, len(np.unique(members)), weight, members.reshape(-1), {
                "pairs": members,
                "similarity": rows["similarity"].to_numpy(),
            }

    def _outlier_findings(self):
        """Images far from any other: the mistakes among them count."""
        if self.outliers.empty:
            return
        members = self.outliers["index"].to_numpy(np.int64)
        wrong = int((self.labels[members] != self.predictions[members]).sum())
        yield (
            "outliers",
            f"{len(members)} image{_s(len(members))} unlike any other ({wrong} misclassified)",
            len(members),
            float(wrong),
            members,
            {"score": self.outliers["score"].to_numpy()},
        )

    def _slice_findings(self):
        """Each weak slice explains the errors it makes beyond the whole set's error rate."""
        overall = self.accuracy
        for row in self.weak_slices.itertuples(index=False):
            # The most common wrong prediction can be the slice's own class: images of other labels taken for it.
            taken = "" if row.predicted_class in (row.true_class, -1) else f", mostly taken for {self._name(row.predicted_class)}"
            yield (
                "weak slice",
                (
                    f"{row.size} alike images, mostly {self._name(row.true_class)}{taken}: "
                    f"{row.accuracy:.0%} right against {overall:.0%} overall"
                ),
                int(row.size),
                float(row.size * (overall - row.accuracy)),
                np.asarray(row.members, dtype=np.int64),
                {
                    "accuracy": float(row.accuracy),
                    "low": float(row.low),
                    "high": float(row.high),
                    "overall": overall,
                    "true_class": int(row.true_class),
                    "predicted_class": int(row.predicted_class),
                },
            )

    def _cluster_findings(self):
        """The heatmap clusters that stand apart from the rest of their class (``APART_MAP_CORRELATION``): a
        shortcut the model took on part of the class ("Clever Hans"). Each explains its images in proportion
        to how far it stands: its accuracy's distance to the rest's, or one minus its map's correlation."""
        for result in self.heatmap_clusters:
            for cluster, rest_map, rest_accuracy, rest_size in _cluster_contrasts(result):
                correlation = _correlation(cluster.mean_map, rest_map)
                size = len(cluster.members)
                low, high = wilson_interval(round(cluster.accuracy * size), size)
                rest_low, rest_high = wilson_interval(round(rest_accuracy * rest_size), rest_size)
                apart_in_accuracy = high < rest_low or rest_high < low
                if correlation >= APART_MAP_CORRELATION and not apart_in_accuracy:
                    continue
                name = self._name(result.target)
                title = (
                    f"{size} images of {name} where the model looks elsewhere than in the rest of the class"
                    if correlation < APART_MAP_CORRELATION
                    else f"{size} images of {name} the model gets {cluster.accuracy:.0%} right, against {rest_accuracy:.0%} for the rest of the class"
                )
                yield (
                    "heatmap cluster",
                    title,
                    size,
                    float(size * max(abs(cluster.accuracy - rest_accuracy), 1.0 - correlation)),
                    np.asarray(cluster.members, dtype=np.int64),
                    {
                        "target": int(result.target),
                        "layer": result.layer,
                        "method": result.method,
                        "mean_map": cluster.mean_map,
                        "mean_picture": cluster.mean_picture,
                        "accuracy": float(cluster.accuracy),
                        "class_accuracy": float(rest_accuracy),
                        "map_correlation": float(correlation),
                    },
                )

    def suspects(self) -> pd.DataFrame:
        """The images to look at again, one row per image and kind, ready for relabelling: ``index``,
        ``source`` (the file, or the image's name), ``given`` and ``suggested`` (class names; the other image's
        label for a conflicting duplicate, empty for an outlier), ``kind`` and ``score`` (higher: more
        suspect). Label issues first, most suspect first, then conflicting duplicates, then outliers."""
        names = self.class_names
        rows = [
            (row.index, names[row.given], names[row.suggested], "label issue", float(row.score))
            for row in self.label_issues.itertuples(index=False)
        ]
        for row in self.near_duplicates[self.near_duplicates["conflict"]].itertuples(index=False):
            a, b = int(row.index_a), int(row.index_b)
            rows += [
                (a, names[self.labels[a]], names[self.labels[b]], "conflicting duplicate", float(row.similarity)),
                (b, names[self.labels[b]], names[self.labels[a]], "conflicting duplicate", float(row.similarity)),
            ]
        rows += [
            (int(row.index), names[self.labels[row.index]], "", "outlier", float(row.score))
            for row in self.outliers.itertuples(index=False)
        ]
        table = pd.DataFrame(rows, columns=["index", "given", "suggested", "kind", "score"])
        table.insert(1, "source", [self.sources[index] for index in table["index"]])
        return table.astype({"index": np.int64})

    def to_csv(self, path) -> None:
        """Write :meth:`suspects` to ``path`` as CSV."""
        self.suspects().to_csv(path, index=False)


def _label_evidence(issues: pd.DataFrame) -> dict:
    return {
        "given": issues["given"].to_numpy(np.int64),
        "suggested": issues["suggested"].to_numpy(np.int64),
        "given_probability": issues["given_probability"].to_numpy(),
        "suggested_probability": issues["suggested_probability"].to_numpy(),
    }


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps over their cells; 1 when either is flat (nothing to tell them apart by)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else 1.0


def _cluster_contrasts(result):
    """Each cluster of a class with the mean map, the accuracy and the size of the rest of the class."""
    sizes = np.array([len(cluster.members) for cluster in result.clusters], dtype=np.float64)
    maps = np.stack([np.asarray(cluster.mean_map, dtype=np.float64) for cluster in result.clusters])
    accuracies = np.array([cluster.accuracy for cluster in result.clusters], dtype=np.float64)
    total = sizes.sum()
    for position, cluster in enumerate(result.clusters):
        rest = total - sizes[position]
        if rest <= 0:
            continue
        others = np.arange(len(sizes)) != position
        rest_map = (maps[others] * sizes[others, None, None]).sum(axis=0) / rest
        rest_accuracy = float((accuracies[others] * sizes[others]).sum() / rest)
        yield cluster, rest_map, rest_accuracy, int(rest)


def diagnosis_of(
    evaluation: Evaluation, embeddings: np.ndarray, class_names: list[str], sources: list[str], checkpoint: Checkpoint | None = None
) -> Diagnosis:
    """The :class:`Diagnosis` of a pass's ``evaluation`` and ``embeddings``; ``checkpoint(fraction_done)`` is
    called between the kinds of finding."""
    if evaluation.given_probabilities is None and evaluation.probabilities is None:
        raise ValueError("evaluation: keeps neither every probability nor the given labels'; diagnose a pass's evaluation")
    if len(embeddings) < 2:
        raise ValueError(f"images: a diagnosis compares images with each other; it needs at least 2, got {len(embeddings)}")
    check(checkpoint, 0.0)
    issues = label_issues(evaluation)
    check(checkpoint, 0.2)
    graph = neighbour_graph(embeddings, min(NEIGHBOURS, len(embeddings) - 1))
    check(checkpoint, 0.6)
    duplicates = near_duplicates(graph, evaluation.labels, evaluation.input_digests)
    far = outliers(graph)
    check(checkpoint, 0.7)
    slices = weak_slices(embeddings, evaluation.labels, evaluation.predictions)
    return Diagnosis(
        label_issues=issues,
        near_duplicates=duplicates,
        outliers=far,
        weak_slices=slices,
        hardness=hardness(evaluation),
        mistakenness=mistakenness(evaluation),
        labels=evaluation.labels,
        predictions=evaluation.predictions,
        class_names=list(class_names),
        sources=list(sources),
    )


def diagnose(
    model, images, labels=None, preprocess=None, *, class_names=None, output=None, cache=None, checkpoint=None
) -> Diagnosis:
    """What is wrong with a labelled test set: suspect labels, near duplicates, outliers and weak slices, from
    one pass of ``model`` over ``images`` (read back from the disk cache when it ran before: a dashboard on
    the same model and pictures shares it), as a :class:`Diagnosis` of pandas DataFrames.

    images, labels, preprocess, class_names, output, cache: as :func:`~cnnviz_widgets.explore` takes them;
        labels may be omitted when the images carry them (a folder of class subfolders, a Dataset of pairs).
    checkpoint: ``checkpoint(fraction_done)``, called often; raise from it to stop. Without it, a progress
        bar shows.
    The model is never touched: the pass runs on its private replica.
    """
    from ..session import Session

    session = Session(
        model, images, preprocess=preprocess, class_names=class_names, labels=labels, output=output, cache=cache
    )
    try:
        if checkpoint is not None:
            return session.diagnosis(checkpoint)
        with progress_bar(session.count, "diagnose") as shown:
            return session.diagnosis(shown)
    finally:
        session.close()
