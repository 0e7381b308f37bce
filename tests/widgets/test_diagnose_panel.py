"""DiagnosePanel: the findings as ranked cards, a card's click opening its images in the Mistakes gallery and the
Projector, the heatmap clusters of a class, the export of the suspects, Stop and errors."""

import threading

import numpy as np
import pandas as pd
import pytest
import torch

import cnnviz_widgets as cw
from cnnviz_widgets.checkpoint import Cancelled
from cnnviz_widgets.widgets import diagnose
from cnnviz_widgets.widgets.diagnose import DiagnosePanel
from panel_support import pixels, settled
from tests.model_state import ModelState

IMAGES = 200
FLIPPED = 10


def flipped_digits():
    """The first test digits with ``FLIPPED`` labels changed at random (seeded): the planted label errors."""
    x, y, names = cw.demo.digits("test")
    labels = y[:IMAGES].clone()
    rng = np.random.default_rng(0)
    flipped = np.sort(rng.choice(IMAGES, FLIPPED, replace=False))
    labels[flipped] = (labels[flipped] + torch.from_numpy(rng.integers(1, 10, FLIPPED))) % 10
    return cw.demo.digits_model(), cw.demo.digit_pictures(x[:IMAGES]), labels, names, flipped


def diagnose_panel(**kwargs):
    model, pictures, labels, names, flipped = flipped_digits()
    panel = DiagnosePanel(model, pictures, cw.demo.digits_preprocess, names, labels=labels, cache=False, **kwargs)
    return panel, model, pictures, labels, flipped


def test_cards_are_ranked_and_a_click_opens_the_images_in_the_gallery_and_the_projector():
    model, pictures, labels, names, flipped = flipped_digits()
    state = ModelState(model)
    dashboard = cw.explore(model, pictures, labels=labels, class_names=names, preprocess=cw.demo.digits_preprocess, cache=False)
    assert list(dashboard.panels)[:3] == ["Mistakes", "Diagnose", "Projector"]
    panel, mistakes, projector = (dashboard.panels[title] for title in ("Diagnose", "Mistakes", "Projector"))
    dashboard.tabs.selected_index = 1
    settled(dashboard)
    assert panel.error == ""

    findings = panel.diagnosis.findings()
    assert list(findings["weight"]) == sorted(findings["weight"], reverse=True)
    shown = min(len(findings), diagnose.CARD_PAGE)
    assert len(panel.cards) == shown
    assert [card.title for card in panel._cards] == list(findings["title"][:shown])
    # Every class with enough images was clustered in the background, after the cheaper findings.
    assert sorted(panel._swept) == list(range(10))
    label_cards = [card for card in panel._cards if card.kind == "label issues"]
    assert label_cards, "the flipped labels make a finding"
    found = np.concatenate([card.members for card in label_cards])
    assert len(np.intersect1d(found, flipped)) >= FLIPPED - 2

    # A label issue's thumbnails carry the Grad-CAM of the class the model suggests, computed in the background.
    card = label_cards[0]
    position = panel._cards.index(card)
    index = int(card.shown[0])
    suggested = diagnose.of_member(card.evidence["suggested"], 0)
    x = cw.demo.digits_preprocess(pictures[index])
    # The digit's 32 x 32 pixels are blown up twice, with hard edges, before the map goes over them.
    view = panel.session.view(index).repeat(2, axis=0).repeat(2, axis=1)
    expected = cw.render.overlay(view, cw.grad_cam(model, x, "features.conv3", suggested))
    np.testing.assert_array_equal(pixels(panel._thumbnail_slots[position][0].value), cw.render.resize(expected, 64, 64))

    # The card's button: its images in the gallery, selected in the projector (made later), the first current.
    open_button = panel.cards[position].children[-1]
    open_button.click()
    settled(dashboard)
    members = [int(index) for index in card.members]
    assert dashboard.tabs.selected_index == 0
    np.testing.assert_array_equal(mistakes.shown, members)
    assert f"showing: <b>label issues: {card.title}</b> · {len(members)} images" in mistakes.showing.value
    assert dashboard.image == members[0] == mistakes.image == panel.image
    assert projector.scatter is None
    dashboard.tabs.selected_index = list(dashboard.panels).index("Projector")
    settled(dashboard)
    assert projector.scatter.selected == sorted(members)
    assert dashboard.image == members[0], "selecting the finding's points does not change the current image"

    # A thumbnail opens the same finding with its own image current.
    dashboard.tabs.selected_index = 1
    panel._thumbnail_slots[position][1].pointer = {"x": 0.5, "y": 0.5, "kind": "press", "serial": 1}
    settled(dashboard)
    assert dashboard.image == int(card.shown[1]) and dashboard.tabs.selected_index == 0
    np.testing.assert_array_equal(mistakes.shown, members)
    state.assert_unchanged()
    dashboard.close()


def test_export_writes_the_planted_suspects_as_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    panel, model, pictures, labels, flipped = diagnose_panel()
    settled(panel)
    panel.export_button.click()
    written = tmp_path / diagnose.EXPORT_NAME
    assert f"saved to {written}" in panel.exported.value
    table = pd.read_csv(written, dtype={"given": str, "suggested": str})
    assert list(table.columns) == ["index", "source", "given", "suggested", "kind", "score"]
    suspects = set(table.loc[table["kind"] == "label issue", "index"])
    assert len(suspects & set(flipped.tolist())) >= FLIPPED - 2, (sorted(suspects), flipped)
    row = table[(table["kind"] == "label issue") & table["index"].isin(flipped)].iloc[0]
    assert row["given"] == panel.session.class_names[int(labels[row["index"]])]
    panel.close()


def test_a_class_heatmap_clusters_show_the_eigengap_and_open_like_a_card():
    panel, model, pictures, labels, flipped = diagnose_panel()
    settled(panel)
    target = 4
    panel.cluster_class.value = target
    panel.cluster_method.value = "grad-cam++"
    panel.cluster_run.click()
    settled(panel)
    assert panel.error == ""
    result = panel._clusters.result
    assert (result.target, result.method, result.layer) == (target, "grad-cam++", "features.conv3")
    np.testing.assert_allclose(panel.eigengap.marks[0].y, result.eigenvalues[: diagnose.EIGENVALUES_SHOWN])
    assert [axis.label for axis in panel.eigengap.axes] == ["rank of the eigenvalue", "eigenvalue"]
    assert len(panel.cluster_cards.children) == len(result.clusters) >= 2
    # The clusters split exactly the images labelled with the class.
    members = np.sort(np.concatenate([cluster.members for cluster in result.clusters]))
    np.testing.assert_array_equal(members, np.flatnonzero(labels.numpy() == target))
    assert pixels(panel._cluster_slots[0].value).std() > 10
    assert "ms a map" in panel.cluster_estimate.value and f"{(labels == target).sum()} images" in panel.cluster_estimate.value

    panel._cluster_slots[1].pointer = {"x": 0.5, "y": 0.5, "kind": "press", "serial": 1}
    chosen = panel.chosen
    assert chosen["indices"] == [int(index) for index in result.clusters[1].members]
    assert chosen["title"].startswith(f"heatmap cluster 2 of {panel.session.class_names[target]}")
    assert panel.image == chosen["indices"][0]
    panel.close()


def test_stop_keeps_the_classes_clustered_so_far_and_the_panel_keeps_working():
    panel, model, pictures, labels, flipped = diagnose_panel(active=False)
    cluster = panel.session.heatmap_clusters
    reached = threading.Event()

    def held_at_class_3(target, layer=None, method="grad-cam", k=None, checkpoint=None):
        if target == 3:
            reached.set()
            while True:
                checkpoint(0.5)
                threading.Event().wait(0.01)
        return cluster(target, layer, method, k, checkpoint)

    panel.session.heatmap_clusters = held_at_class_3
    panel.set_active(True)
    assert reached.wait(60), "the sweep did not reach class 3"
    assert panel.task_bar.layout.display == "flex"
    panel.task_bar.stop.click()
    assert panel.wait(10)
    assert sorted(panel._swept) == [0, 1, 2]
    assert "heatmaps clustered for 3 of 10 classes (stopped)" in panel.summary.value
    assert {evidence["target"] for evidence in panel.diagnosis.findings()["evidence"] if "target" in evidence} <= {0, 1, 2}

    # Still usable: a class clustered on demand, and the sweep stays stopped.
    panel.session.heatmap_clusters = cluster
    panel.cluster_class.value = 5
    panel.cluster()
    settled(panel)
    assert panel.error == "" and panel._clusters.result.target == 5
    assert sorted(panel._swept) == [0, 1, 2]
    panel.close()


def test_an_error_shows_in_the_panel_which_then_works():
    panel, model, pictures, labels, flipped = diagnose_panel(active=False)
    diagnosis = panel.session.diagnosis
    calls = []

    def failing_once(checkpoint=None):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("images: this diagnosis fails once")
        return diagnosis(checkpoint)

    panel.session.diagnosis = failing_once
    panel.set_active(True)
    settled(panel)
    assert "images: this diagnosis fails once" in panel.error
    assert panel.cards == []
    with pytest.raises(ValueError, match="the diagnosis is not done yet"):
        panel.export()
    panel.refresh()
    settled(panel)
    assert panel.error == "" and len(panel.cards) > 0
    assert len(calls) == 2
    panel.close()


def test_a_large_set_clusters_one_class_on_demand_after_an_estimate(monkeypatch):
    monkeypatch.setattr(diagnose, "SWEEP_LIMIT", IMAGES - 1)
    panel, model, pictures, labels, flipped = diagnose_panel(active=False)
    asked = []
    cluster = panel.session.heatmap_clusters
    panel.session.heatmap_clusters = lambda *args, **kwargs: (asked.append(args), cluster(*args, **kwargs))[1]
    panel.set_active(True)
    settled(panel)
    assert asked == [], "no class is clustered unasked"
    assert "cluster one class's heatmaps at a time" in panel.summary.value
    first = panel.cluster_class.value
    assert f"{int((labels.numpy() == first).sum())} images of <b>{panel.session.class_names[first]}</b>" in panel.cluster_estimate.value
    panel.cluster()
    settled(panel)
    assert [args[0] for args in asked] == [first]
    panel.close()


def test_without_labels_the_panel_says_what_it_needs():
    model, pictures, labels, names, flipped = flipped_digits()
    panel = DiagnosePanel(model, pictures[:20], cw.demo.digits_preprocess, names)
    assert "labels" in panel.error and "pass labels=" in panel.error
    panel.close()


@pytest.mark.parametrize("seed, target, corner", [(0, 3, (0, 0)), (1, 7, (1, 1))])
def test_the_tab_lists_the_cluster_of_a_planted_shortcut(seed, target, corner):
    from tests.test_heatmap_clusters import clever_hans

    model, x, y, marked = clever_hans(seed, target, corner)
    panel = DiagnosePanel(model, x, labels=y, cache=False)
    settled(panel)
    assert panel.error == ""
    findings = panel.diagnosis.findings()
    clusters = findings[findings["kind"] == "heatmap cluster"]
    of_target = [row for row in clusters.itertuples() if row.evidence["target"] == target]
    # A listed cluster of the class is marked images (at least 90% of it), and every listed one is pure.
    shares = [np.isin(row.members, marked).mean() for row in of_target]
    assert max(shares) >= 0.9
    assert all(share >= 0.9 or share <= 0.1 for share in shares)
    panel.close()


def test_new_weights_give_a_new_diagnosis_and_a_new_sweep():
    from tests.stand_ins import wait_until

    panel, model, pictures, labels, flipped = diagnose_panel()
    settled(panel)
    first = panel.diagnosis
    assert first.accuracy > 0.8
    # The user breaks the classifier through .data, as a training loop may: the watcher sees it.
    with torch.no_grad():
        model.classifier.weight.data.mul_(-1)
    assert wait_until(lambda: panel.diagnosis is not first and panel.diagnosis is not None, timeout=60)
    settled(panel)
    x = torch.cat([cw.demo.digits_preprocess(picture) for picture in pictures])
    expected = cw.evaluate(model, x, labels, progress=False)
    assert panel.diagnosis.accuracy == pytest.approx(expected.accuracy) and panel.diagnosis.accuracy < 0.5
    np.testing.assert_array_equal(panel.diagnosis.predictions, expected.predictions)
    # The classes' heatmaps were clustered again, under the new weights.
    assert sorted(panel._swept) == list(range(10))
    for target, result in panel._swept.items():
        assert result.class_accuracy == pytest.approx(expected.per_class_accuracy[target])
    panel.close()
