"""Label issues by confident learning against cleanlab (a test-only oracle) and against planted label flips;
hardness and mistakenness against FiftyOne Brain's formulas worked by hand."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from cleanlab.filter import find_label_issues
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.data import Evaluation
from cnnviz_widgets.diagnosis.labels import COLUMNS, hardness, label_issues, mistakenness

FLIPPED_FRACTION = 0.05


def flip_labels(true: np.ndarray, num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A seeded 5% of ``true`` moved to another class, uniformly -> (given labels, flipped mask)."""
    flipped = rng.random(len(true)) < FLIPPED_FRACTION
    given = true.copy()
    given[flipped] = (true[flipped] + rng.integers(1, num_classes, flipped.sum())) % num_classes
    return given, flipped


def gaussian_logits(count: int, num_classes: int, dims: int, spread: float, seed: int):
    """Images drawn from one isotropic Gaussian per class (random means), scored by the Bayes classifier of
    that model, whose softmax is each image's true posterior -> (logits, given labels, flipped mask)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dims))
    true = rng.integers(0, num_classes, count)
    features = means[true] + spread * rng.normal(size=(count, dims))
    logits = (features @ means.T - 0.5 * (means**2).sum(axis=1)) / spread**2
    given, flipped = flip_labels(true, num_classes, rng)
    return torch.from_numpy(logits.astype(np.float32)), given, flipped


def flat_tailed_logits(count: int, num_classes: int, seed: int):
    """Unit normal logits with the true class raised by 5 to 13 and its next class by up to 80% of that:
    every other class keeps a like share of the probability -> (logits, given labels, flipped mask)."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, num_classes, count)
    logits = rng.normal(size=(count, num_classes))
    strength = rng.uniform(5, 13, count)
    rows = np.arange(count)
    logits[rows, true] += strength
    logits[rows, (true + 1) % num_classes] += strength * rng.uniform(0, 0.8, count)
    given, flipped = flip_labels(true, num_classes, rng)
    return torch.from_numpy(logits.astype(np.float32)), given, flipped


def evaluation_of(logits: torch.Tensor, given: np.ndarray, top_k: int | None = None) -> Evaluation:
    """The evaluation a pass makes of a model whose logits are ``logits``: the images are the logits
    themselves, read by a flattening model."""
    count, num_classes = logits.shape
    return cw.evaluate(
        nn.Flatten(), logits.view(count, num_classes, 1, 1), given, batch_size=1000, progress=False, top_k=top_k
    )


def cleanlab_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # cleanlab warns about classes too small to prune, as label_issues silently leaves them.
        warnings.simplefilter("ignore")
        return np.flatnonzero(find_label_issues(labels, probabilities))


def jaccard(a, b) -> float:
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return len(a & b) / len(a | b) if a | b else 1.0


def precision_recall_f1(found, flipped: np.ndarray) -> tuple[float, float, float]:
    found = np.isin(np.arange(len(flipped)), found)
    hits = int((found & flipped).sum())
    precision = hits / max(int(found.sum()), 1)
    recall = hits / int(flipped.sum())
    return precision, recall, 2 * hits / (int(found.sum()) + int(flipped.sum()))


def test_label_issues_agree_with_cleanlab_on_a_synthetic_set():
    logits, given, flipped = gaussian_logits(2000, 10, dims=16, spread=1.0, seed=0)
    evaluation = evaluation_of(logits, given)
    issues = label_issues(evaluation)
    expected = cleanlab_issues(given, evaluation.probabilities)
    precision, recall, _ = precision_recall_f1(issues["index"], flipped)
    print(f"synthetic 2,000 x 10: {len(issues)} flagged, {flipped.sum()} flipped, "
          f"precision {precision:.3f}, recall {recall:.3f}, Jaccard with cleanlab "
          f"{jaccard(issues['index'], expected):.3f}")
    assert jaccard(issues["index"], expected) >= 0.95
    # Measured: precision 0.763, recall 0.874.
    assert precision >= 0.65 and recall >= 0.8


def test_label_issues_agree_with_cleanlab_on_the_digits_cnn():
    x, y, _ = cw.demo.digits()
    true = np.asarray(y, dtype=np.int64)
    given, flipped = flip_labels(true, 10, np.random.default_rng(0))
    evaluation = cw.evaluate(cw.demo.digits_model(), x, given, progress=False)
    issues = label_issues(evaluation)
    expected = cleanlab_issues(given, evaluation.probabilities)
    precision, recall, _ = precision_recall_f1(issues["index"], flipped)
    print(f"digits CNN, {len(given)} test images: {len(issues)} flagged, {flipped.sum()} flipped, "
          f"precision {precision:.3f}, recall {recall:.3f}, Jaccard with cleanlab "
          f"{jaccard(issues['index'], expected):.3f}")
    assert jaccard(issues["index"], expected) >= 0.95
    # Measured: precision 1.000, recall 0.842 (16 of 19).
    assert precision >= 0.9 and recall >= 0.7


@pytest.mark.parametrize("tails", ["gaussian", "flat"])
def test_top_ten_classes_of_a_thousand_find_the_flips_as_well_as_cleanlab_on_every_probability(tails):
    if tails == "gaussian":
        logits, given, flipped = gaussian_logits(3000, 1000, dims=64, spread=1.3, seed=0)
    else:
        logits, given, flipped = flat_tailed_logits(3000, 1000, seed=0)
    full = evaluation_of(logits, given)
    top = evaluation_of(logits, given, top_k=10)
    assert top.probabilities is None and top.top_classes.shape == (3000, 10)
    *_, ours = precision_recall_f1(label_issues(top)["index"], flipped)
    *_, theirs = precision_recall_f1(cleanlab_issues(given, full.probabilities), flipped)
    print(f"3,000 x 1,000, {tails} tails: F1 top-10 {ours:.3f}, cleanlab on every probability {theirs:.3f}")
    assert abs(ours - theirs) <= 0.05


def hand_evaluation(probabilities, labels, top_k=None) -> Evaluation:
    probabilities = np.asarray(probabilities, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    predictions = probabilities.argmax(axis=1)
    confusion = np.zeros((probabilities.shape[1],) * 2, dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return Evaluation(
        labels=labels,
        predictions=predictions,
        probabilities=probabilities if top_k is None else None,
        confusion=confusion,
        top_classes=order.astype(np.int32),
        top_probabilities=np.take_along_axis(probabilities, order, axis=1),
        given_probabilities=probabilities[np.arange(len(labels)), labels],
    )


# Thresholds (mean probability of each class over its own images): class 0 (0.9 + 0.8) / 2 = 0.85,
# class 1 (0.8 + 0.7 + 0.1) / 3 = 0.533, class 2 0.8. Confident joint (rows given, columns true): image 0
# in (0, 0), image 1 passes nothing, images 2, 3 in (1, 1), image 6 in (1, 0), images 4, 5 in (2, 2);
# calibrated: [[2, 0, 0], [1, 2, 0], [0, 0, 2]]. Cell (1, 0) prunes one image labelled 1, the largest
# p(0) - p(1): image 6 (0.78, against -0.7 and -0.6). Image 1 is unsure but its label is its prediction.
TINY_PROBABILITIES = [
    [0.90, 0.05, 0.05],
    [0.80, 0.10, 0.10],
    [0.10, 0.80, 0.10],
    [0.10, 0.70, 0.20],
    [0.10, 0.10, 0.80],
    [0.05, 0.15, 0.80],
    [0.88, 0.10, 0.02],
]
TINY_LABELS = [0, 0, 1, 1, 2, 2, 1]


@pytest.mark.parametrize("top_k", [None, 2])
def test_a_tiny_case_flags_the_image_worked_out_by_hand(top_k):
    issues = label_issues(hand_evaluation(TINY_PROBABILITIES, TINY_LABELS, top_k))
    assert list(issues.columns) == list(COLUMNS)
    assert issues["index"].tolist() == [6]
    row = issues.iloc[0]
    assert (row["given"], row["suggested"]) == (1, 0)
    assert row["given_probability"] == pytest.approx(0.10)
    assert row["suggested_probability"] == pytest.approx(0.88)
    assert row["score"] == pytest.approx(0.90)


def test_the_most_suspect_come_first():
    logits, given, _ = gaussian_logits(2000, 10, dims=16, spread=1.0, seed=1)
    issues = label_issues(evaluation_of(logits, given))
    assert len(issues) > 10
    assert issues["score"].is_monotonic_decreasing
    assert ((issues["score"] >= 0) & (issues["score"] <= 1)).all()
    assert (issues["suggested"] != issues["given"]).all()
    assert issues.dtypes["index"] == np.int64


def test_hardness_is_the_entropy_of_the_softmax():
    evaluation = hand_evaluation([[0.5, 0.5], [1.0, 0.0], [0.7, 0.3]], [0, 1, 0])
    expected = [math.log(2), 0.0, -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))]
    assert hardness(evaluation) == pytest.approx(expected, abs=1e-6)
    kept_by_a_pass = hand_evaluation([[0.5, 0.5]], [0], top_k=1)
    kept_by_a_pass = Evaluation(**{**kept_by_a_pass.__dict__, "entropy": np.array([0.25], dtype=np.float32)})
    assert hardness(kept_by_a_pass) == pytest.approx([0.25])


def test_mistakenness_is_fiftyones_from_the_confidence_and_the_agreement():
    # Right at 0.5: (-0.5 + 1) / 2; wrong at 1.0: (1 + 1) / 2; right at 0.7: (-0.7 + 1) / 2; wrong at 0.6.
    evaluation = hand_evaluation([[0.5, 0.5], [1.0, 0.0], [0.7, 0.3], [0.4, 0.6]], [0, 1, 0, 0])
    assert mistakenness(evaluation) == pytest.approx([0.25, 1.0, 0.15, 0.8], abs=1e-6)


def test_an_evaluation_keeping_neither_probabilities_nor_the_given_ones_is_refused():
    bare = hand_evaluation(TINY_PROBABILITIES, TINY_LABELS, top_k=2)
    bare = Evaluation(**{**bare.__dict__, "given_probabilities": None})
    with pytest.raises(ValueError, match=r"^evaluation: keeps neither"):
        label_issues(bare)
    with pytest.raises(ValueError, match=r"^evaluation: keeps neither"):
        hardness(bare)


def test_bad_input_is_refused_with_the_arguments_name():
    with pytest.raises(TypeError, match=r"^evaluation: expected a cnnviz_widgets.data.Evaluation.*DataFrame"):
        label_issues(pd.DataFrame())
    with pytest.raises(TypeError, match=r"^evaluation: .*ndarray"):
        mistakenness(np.zeros((3, 3)))
    outside = hand_evaluation(TINY_PROBABILITIES, TINY_LABELS)
    outside = Evaluation(**{**outside.__dict__, "labels": np.array([0, 0, 1, 1, 2, 2, 3])})
    with pytest.raises(ValueError, match=r"^evaluation: labels range over 0\.\.3; expected class indices 0\.\.2"):
        label_issues(outside)
