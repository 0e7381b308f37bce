"""The Diagnosis: every kind of finding from one pass, ranked, exported, cached per weights, read back from disk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import cnnviz_widgets as cw
from cnnviz_widgets.diagnosis import KINDS, diagnosis_of
from cnnviz_widgets.heatmap_clusters import HeatmapCluster, HeatmapClusters
from cnnviz_widgets.session import Session, dataset_pass
from tests.model_state import ModelState


@pytest.fixture(scope="module")
def planted():
    """The digits test set with 5% of its labels flipped (seeded) and image 3's copy appended with another
    label: the suspects the diagnosis must find."""
    x, y, names = cw.demo.digits("test")
    rng = np.random.default_rng(11)
    labels = y.numpy().copy()
    flipped = rng.choice(len(labels), size=len(labels) // 20, replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10
    images = torch.cat([x, x[3:4]])
    copy_label = (labels[3] + 1) % 10
    labels = np.append(labels, copy_label)
    return images, labels, names, set(flipped.tolist()), (3, len(labels) - 1)


@pytest.fixture(scope="module")
def diagnosis(planted):
    images, labels, names, _, _ = planted
    model = cw.demo.digits_model()
    state = ModelState(model)
    result = cw.diagnose(model, images, labels, class_names=names, cache=False)
    state.assert_unchanged()
    return result


def test_the_planted_suspects_are_found_and_ranked(diagnosis, planted):
    _, labels, _, flipped, copy_pair = planted
    suspects = set(diagnosis.label_issues["index"].tolist())
    # The copy's label conflicts with its original's: one of the two is a suspect whichever is right.
    recall = len(suspects & flipped) / len(flipped)
    precision = len(suspects & flipped) / len(suspects)
    assert recall >= 0.75 and precision >= 0.8, (recall, precision)
    conflicts = diagnosis.near_duplicates[diagnosis.near_duplicates["conflict"]]
    assert copy_pair in set(map(tuple, conflicts[["index_a", "index_b"]].to_numpy().tolist()))
    assert diagnosis.near_duplicates["conflict"].is_monotonic_decreasing
    findings = diagnosis.findings()
    assert list(findings.columns) == ["kind", "title", "count", "weight", "members", "evidence"]
    assert set(findings["kind"]) <= set(KINDS)
    assert findings["weight"].is_monotonic_decreasing
    # Every suspect label is in exactly one label-issues finding, with its given and suggested class.
    label_rows = findings[findings["kind"] == "label issues"]
    members = np.concatenate(label_rows["members"].to_list())
    assert sorted(members.tolist()) == sorted(suspects)
    for row in label_rows.itertuples():
        np.testing.assert_array_equal(row.evidence["given"], labels[row.members])
        assert len(row.evidence["given_probability"]) == row.count == len(row.members)


def test_suspects_export_as_csv_ready_for_relabelling(diagnosis, planted, tmp_path):
    _, labels, names, flipped, copy_pair = planted
    path = tmp_path / "suspects.csv"
    diagnosis.to_csv(path)
    table = pd.read_csv(path, keep_default_na=False, dtype={"source": str, "given": str, "suggested": str})
    assert list(table.columns) == ["index", "source", "given", "suggested", "kind", "score"]
    label_rows = table[table["kind"] == "label issue"]
    assert set(label_rows["index"]) == set(diagnosis.label_issues["index"])
    assert all(given == names[labels[index]] for index, given in zip(table["index"], table["given"]))
    conflict_rows = table[table["kind"] == "conflicting duplicate"]
    assert set(copy_pair) <= set(conflict_rows["index"])
    assert len(set(table["index"]) & flipped) >= 0.75 * len(flipped)


def test_a_folder_exports_each_suspects_file(tmp_path):
    x, y, names = cw.demo.digits("test")
    pictures = cw.demo.digit_pictures(x[:60])
    labels = y[:60].numpy().copy()
    labels[[4, 9]] = (labels[[4, 9]] + 5) % 10
    for index, (picture, label) in enumerate(zip(pictures, labels)):
        folder = tmp_path / "digits" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(folder / f"{index:03d}.png")
    result = cw.diagnose(cw.demo.digits_model(), tmp_path / "digits", preprocess=cw.demo.digits_preprocess, cache=False)
    suspects = result.suspects()
    assert {f"{index:03d}.png" for index in (4, 9)} <= {path.rsplit("/", 1)[-1] for path in suspects["source"]}
    assert all(path.startswith(str(tmp_path)) for path in suspects["source"])


def test_the_session_diagnoses_once_per_weights_and_reads_the_pass_back_from_disk(planted, tmp_path, monkeypatch):
    images, labels, names, _, _ = planted
    images, labels = images[:200], labels[:200]
    passes = []
    run = dataset_pass.evaluate_and_embed
    monkeypatch.setattr(dataset_pass, "evaluate_and_embed", lambda *a, **k: passes.append(1) or run(*a, **k))
    model = cw.demo.digits_model()
    session = Session(model, images, labels=labels, cache=tmp_path)
    first = session.diagnosis()
    assert session.diagnosis() is first and len(passes) == 1
    # Another session on the same model, images and labels: the pass and what diagnosis needs come from disk.
    again = Session(model, images, labels=labels, cache=tmp_path).diagnosis()
    assert len(passes) == 1
    pd.testing.assert_frame_equal(again.label_issues, first.label_issues)
    np.testing.assert_array_equal(again.hardness, first.hardness)
    # New weights: a new pass, a new diagnosis.
    with torch.no_grad():
        model.classifier.weight.data.mul_(0.5)
    assert session.diagnosis() is not first and len(passes) == 2


def test_a_heatmap_cluster_apart_from_its_class_becomes_a_finding(diagnosis):
    centre = np.zeros((8, 8), np.float32)
    centre[3:5, 3:5] = 1
    corner = np.zeros((8, 8), np.float32)
    corner[0:2, 6:8] = 1
    picture = np.zeros((8, 8, 3), np.uint8)

    def clusters(maps_and_members):
        return HeatmapClusters(
            target=7, layer="conv", method="grad-cam", indices=np.arange(30), eigenvalues=np.zeros(3),
            outlier_scores=np.zeros(30), class_accuracy=1.0, clusters=tuple(
                HeatmapCluster(members=np.asarray(members), mean_map=mean_map, mean_picture=picture, accuracy=accuracy)
                for mean_map, members, accuracy in maps_and_members
            ),
        )

    alike = diagnosis.with_heatmap_clusters([clusters([(centre, range(0, 20), 1.0), (centre * 0.9, range(20, 30), 1.0)])])
    assert "heatmap cluster" not in set(alike.findings()["kind"])
    shortcut = diagnosis.with_heatmap_clusters([clusters([(centre, range(0, 20), 1.0), (corner, range(20, 30), 1.0)])])
    found = shortcut.findings()
    rows = found[found["kind"] == "heatmap cluster"]
    # Each of the two clusters stands apart from the rest of its class (the other one).
    assert sorted(len(row.members) for row in rows.itertuples()) == [10, 20]
    assert all(row.evidence["map_correlation"] < 0 for row in rows.itertuples())
    # Maps alike, accuracies apart: 19 of 20 right against 2 of 10 (a shortcut that works on part of the class),
    # but not 20 of 20 against 9 of 10 (the Wilson intervals, [0.84, 1] and [0.6, 0.98], overlap).
    shortcut = diagnosis.with_heatmap_clusters([clusters([(centre, range(0, 20), 0.95), (centre * 0.9, range(20, 30), 0.2)])])
    assert sorted(len(row.members) for row in shortcut.findings().query("kind == 'heatmap cluster'").itertuples()) == [10, 20]
    chance = diagnosis.with_heatmap_clusters([clusters([(centre, range(0, 20), 1.0), (centre * 0.9, range(20, 30), 0.9)])])
    assert "heatmap cluster" not in set(chance.findings()["kind"])
    # Clustering the class again replaces its clusters rather than adding to them.
    assert len(shortcut.with_heatmap_clusters([clusters([(centre, range(0, 30), 1.0)])]).heatmap_clusters) == 1


def test_diagnosis_needs_labels_and_a_pass_evaluation(planted):
    images, _, _, _, _ = planted
    with pytest.raises(ValueError, match="^labels"):
        Session(cw.demo.digits_model(), images[:20], cache=False).diagnosis()
    by_hand = cw.data.Evaluation(
        np.zeros(3, np.int64), np.zeros(3, np.int64), None, np.zeros((2, 2), np.int64),
        np.zeros((3, 1), np.int32), np.ones((3, 1), np.float32),
    )
    with pytest.raises(ValueError, match="^evaluation"):
        diagnosis_of(by_hand, np.zeros((3, 4), np.float32), ["a", "b"], ["0", "1", "2"])


def test_a_set_of_a_few_images_is_diagnosed_and_a_single_image_refused(planted):
    images, labels, names, _, _ = planted
    model = cw.demo.digits_model()
    few = cw.diagnose(model, images[:3], labels[:3], cache=False, checkpoint=lambda *args: None)
    assert few.count == 3 and set(few.findings()["kind"]) <= set(KINDS)
    with pytest.raises(ValueError, match="^images: .* at least 2, got 1"):
        cw.diagnose(model, images[:1], labels[:1], cache=False, checkpoint=lambda *args: None)
