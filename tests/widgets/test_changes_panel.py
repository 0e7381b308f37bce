"""ModelDiffPanel (the Changes tab): its numbers against plain forward passes of both models, the flip gallery and
a confusion cell's flips, both models' maps of a clicked flip against Grad-CAM on the models themselves, the CKA
heatmap and a cell's feature maps, a reference whose weights change, errors, and the dashboard's wiring."""

import copy

import numpy as np
import pytest
import torch
import torchvision

import cnnviz_widgets as cw
from cnnviz_widgets import render
from cnnviz_widgets.widgets import changes
from cnnviz_widgets.widgets.changes import ModelDiffPanel
from panel_support import pixels
from tests.model_state import ModelState
from tests.stand_ins import wait_until

IMAGES = 160
LEANING = 3
"""The class the planted reference leans to: its bias is raised, so it calls many images of other classes 3."""


def digits():
    x, y, names = cw.demo.digits("test")
    return cw.demo.digit_pictures(x[:IMAGES]), y[:IMAGES], names


def leaning(model, shift: float = 6.0):
    """A copy of ``model`` that favours class ``LEANING``: the flips between them are known in advance."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.classifier.bias[LEANING] += shift
    return reference


def predictions(model, pictures) -> np.ndarray:
    inputs = torch.cat([cw.demo.digits_preprocess(picture) for picture in pictures])
    with torch.no_grad():
        return model(inputs).argmax(1).numpy()


def confusion(labels, predicted, classes=10) -> np.ndarray:
    return np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def changes_panel(reference=None, **kwargs):
    pictures, labels, names = digits()
    model = cw.demo.digits_model()
    reference = leaning(model) if reference is None else reference
    panel = ModelDiffPanel(model, pictures, cw.demo.digits_preprocess, names, labels, reference=reference, cache=False, **kwargs)
    assert panel.wait(120), "the comparison did not finish in time"
    return panel, model, reference, pictures, labels.numpy()


def all_pages(panel) -> list[int]:
    """Every image the flip gallery lists, page after page, as a user turning the pages sees them."""
    seen = []
    for _ in range(-(-len(panel.shown_flips) // changes.FLIP_PAGE) or 1):
        start = panel._page * changes.FLIP_PAGE
        seen += [int(index) for index in panel.shown_flips[start : start + len(panel.flip_slots)]]
        panel._turn(1)
    return seen


def test_the_numbers_equal_plain_forward_passes_of_both_models():
    panel, model, reference, pictures, labels = changes_panel()
    state, reference_state = ModelState(model), ModelState(reference)
    try:
        before, after = predictions(reference, pictures), predictions(model, pictures)
        newly_right = np.flatnonzero((before != labels) & (after == labels))
        newly_wrong = np.flatnonzero((before == labels) & (after != labels))
        assert len(newly_right) >= 5, "the planted reference should be wrong where the model is right"
        diff = panel.diff
        assert diff.accuracy_a == pytest.approx((before == labels).mean())
        assert diff.accuracy_b == pytest.approx((after == labels).mean())
        assert f"{(before == labels).mean():.1%}" in panel.summary.value
        assert f"{len(newly_wrong) / len(labels):.1%}" in panel.summary.value
        # The gallery opens on the regressions, or on the kind there is when there are none.
        expected_kind = "newly_wrong" if len(newly_wrong) else "newly_right"
        assert panel.kind == expected_kind
        panel.kind = "newly_right"
        assert all_pages(panel) == newly_right.tolist()
        assert panel.kind_buttons.options[1][0] == f"newly right ({len(newly_right)})"
        # The bars: each class's accuracy change, most lost first.
        bars = panel.bars.marks[0]
        for name, delta in zip(bars.x, bars.y):
            k = int(name)
            members = labels == k
            direct = (after[members] == k).mean() - (before[members] == k).mean()
            assert delta == pytest.approx(direct)
        assert list(bars.y) == sorted(bars.y)
        np.testing.assert_array_equal(panel.delta.heatmap.color, confusion(labels, after) - confusion(labels, before))
        state.assert_unchanged()
        reference_state.assert_unchanged()
    finally:
        panel.close()


def test_a_confusion_cell_keeps_its_flips_and_a_click_on_a_flip_shows_both_models_maps():
    panel, model, reference, pictures, labels = changes_panel()
    try:
        before, after = predictions(reference, pictures), predictions(model, pictures)
        # The reference called these images 3: the cell (true, 3) lost images under the model.
        index = int(np.flatnonzero((before == LEANING) & (after == labels))[0])
        true = int(labels[index])
        panel.delta.heatmap._handle_custom_msgs(None, {"event": "element_click", "data": {"rowNum": true, "columnNum": LEANING}})
        assert panel.delta.selection == (true, LEANING)
        # Two different predictions leave at least one of them wrong: each such image is a flip.
        in_cell = np.flatnonzero((labels == true) & (before != after) & ((before == LEANING) | (after == LEANING))).tolist()
        assert all_pages(panel) == in_cell
        assert index in in_cell
        position = panel.shown_flips.tolist().index(index) % changes.FLIP_PAGE
        panel._page = panel.shown_flips.tolist().index(index) // changes.FLIP_PAGE
        panel._show_page()
        panel.flip_slots[position].pointer = {"x": 0.5, "y": 0.5, "kind": "press", "serial": 1}
        assert panel.image == index
        assert panel.wait(60)
        maps = panel._maps
        assert maps.image == index and maps.classes == [true, LEANING]
        assert len(panel.maps_grid.children) == 4
        # The model's row, true class: Grad-CAM computed on the user's model itself, drawn the same way.
        layer = panel.layer
        heat = cw.grad_cam(model, cw.demo.digits_preprocess(pictures[index]), layer, true)
        view = render.enlarged(np.stack([np.asarray(pictures[index])] * 3, axis=-1), changes.MAP_SIDE)
        expected = render.resize(render.overlay(view, heat), changes.MAP_SIDE, changes.MAP_SIDE)
        shown = pixels(maps.pictures[1][0])
        assert np.abs(shown.astype(int) - expected.astype(int)).mean() < 1.0
        # The reference's row explains the same classes with the reference's own maps.
        reference_heat = cw.grad_cam(reference, cw.demo.digits_preprocess(pictures[index]), layer, LEANING)
        reference_expected = render.resize(render.overlay(view, reference_heat), changes.MAP_SIDE, changes.MAP_SIDE)
        assert np.abs(pixels(maps.pictures[0][1]).astype(int) - reference_expected.astype(int)).mean() < 1.0
        assert "reference" in maps.captions[0][1] and "this model" in maps.captions[1][0]
        saved = pixels(panel.picture())
        assert saved.shape[0] > 2 * changes.MAP_SIDE
        panel.show_cell(None)
        assert panel.delta.selection is None and panel.kind in panel.diff.flips["kind"].astype(str).tolist()
    finally:
        panel.close()


def test_the_layers_similarity_is_the_functions_and_a_cell_shows_both_layers_most_active_maps():
    panel, model, reference, pictures, labels = changes_panel()
    try:
        similarity = cw.layer_similarity(reference, model, pictures, preprocess=cw.demo.digits_preprocess, batch_size=64)
        np.testing.assert_allclose(panel.similarity.to_numpy(), similarity.to_numpy(), atol=1e-6)
        assert list(panel.similarity.index) == ["features.conv1", "features.conv2", "features.conv3"]
        # The two models differ by one bias after the last conv layer: their conv layers are the same.
        np.testing.assert_allclose(np.diag(panel.similarity.to_numpy()), 1.0, atol=1e-6)
        # Until a cell is clicked, the last layers of both.
        assert panel._layer_pair.layer_a == "features.conv3" and panel._layer_pair.layer_b == "features.conv3"
        panel.similarity_grid.heatmap._handle_custom_msgs(None, {"event": "element_click", "data": {"rowNum": 0, "columnNum": 1}})
        assert panel.wait(60)
        pair = panel._layer_pair
        assert (pair.layer_a, pair.layer_b) == ("features.conv1", "features.conv2")
        assert pair.cka == pytest.approx(similarity.iat[0, 1], abs=1e-6)
        maps = cw.feature_maps(model, cw.demo.digits_preprocess(pictures[panel.image]), "features.conv2")
        strongest = np.argsort(-maps.mean(dim=(1, 2)).numpy(), kind="stable")[: changes.FEATURE_MAPS_SHOWN]
        expected, _ = render.feature_grid(maps[strongest], "per_map", "viridis", columns=4)
        np.testing.assert_array_equal(pixels(pair.pictures[1]), expected)
        assert f"{similarity.iat[0, 1]:.3f}" in panel.layer_title.value
    finally:
        panel.close()


def test_a_reference_trained_on_is_seen_and_the_comparison_recomputed():
    panel, model, reference, pictures, labels = changes_panel()
    try:
        first = panel.diff
        with torch.no_grad():
            reference.classifier.bias[LEANING] -= 6.0
        wait_until(lambda: panel.diff is not first and "reference model's weights changed" in panel.note.value, timeout=60)
        assert panel.wait(60)
        # The reference now equals the model: nothing flips.
        assert len(panel.diff.flips) == 0 and panel.diff.accuracy_a == panel.diff.accuracy_b
        assert panel.page_label.value.endswith("none</span>")
    finally:
        panel.close()


def test_bad_input_names_the_argument():
    pictures, labels, names = digits()
    model = cw.demo.digits_model()
    with pytest.raises(TypeError, match="^reference: give the model"):
        ModelDiffPanel(model, pictures, cw.demo.digits_preprocess, names, labels, cache=False)
    three = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="^reference: outputs 3 classes, but the model outputs 10"):
        ModelDiffPanel(model, pictures, cw.demo.digits_preprocess, names, labels, reference=three, cache=False)
    with pytest.raises(ValueError, match="^labels: comparing with reference="):
        cw.explore(model, pictures, preprocess=cw.demo.digits_preprocess, reference=model, cache=False)
    panel, *_ = changes_panel()
    try:
        panel.show_cell((0, 12))
        assert "cell: expected (true class, predicted class), each in 0..9" in panel.error
        panel.show_layers(5, 0)
        assert "row, column: the CKA cells lie in rows 0..2" in panel.error
        panel.image = 3
        assert panel.wait(60) and panel._maps.image == 3
    finally:
        panel.close()


def test_the_dashboard_gets_a_changes_tab_linked_to_the_others_and_to_the_projector():
    pictures, labels, names = digits()
    model = cw.demo.digits_model()
    reference = leaning(model)
    dashboard = cw.explore(model, pictures, labels, names, cw.demo.digits_preprocess, reference=reference, cache=False)
    try:
        titles = list(dashboard.panels)
        assert titles.index("Changes") == titles.index("Diagnose") + 1
        changes_tab = dashboard.panels["Changes"]
        dashboard.tabs.selected_index = titles.index("Changes")
        assert changes_tab.wait(120) and changes_tab.diff is not None
        projector = dashboard.panels["Projector"]
        np.testing.assert_allclose(projector._scores, changes_tab.diff.embedding_agreement, atol=1e-6)
        flip = int(changes_tab.shown_flips[0])
        changes_tab.flip_slots[0].pointer = {"x": 0.5, "y": 0.5, "kind": "press", "serial": 1}
        assert dashboard.image == flip and dashboard.panels["Grad-CAM"].image == flip
        dashboard.layer = "features.conv2"
        assert changes_tab.layer == "features.conv2"
        changes_tab.projector_button.click()
        assert dashboard.tabs.selected_index == titles.index("Projector")
        assert projector.wait(120)
        assert projector.scatter.color_by == "score"
        assert changes.AGREEMENT_NAME in projector.scatter.score_name
    finally:
        dashboard.close()


def test_two_checkpoints_of_the_bundled_digits_cnn_the_tab_lists_the_flips_model_diff_finds():
    x, y, names = cw.demo.digits("test")
    pictures = cw.demo.digit_pictures(x)
    early, final = cw.demo.digits_model(epochs=cw.demo.EARLY_DIGITS_EPOCHS), cw.demo.digits_model()
    diff = cw.model_diff(early, final, pictures, y, cw.demo.digits_preprocess, class_names=names, cache=False)
    panel = ModelDiffPanel(final, pictures, cw.demo.digits_preprocess, names, y, reference=early, cache=False)
    try:
        assert panel.wait(120)
        for kind in ("newly_wrong", "newly_right", "changed_wrong"):
            panel.kind = kind
            assert all_pages(panel) == diff.flips.loc[diff.flips["kind"] == kind, "index"].tolist()
        assert len(diff.flips.query("kind == 'newly_right'")) >= 10 and len(diff.flips.query("kind == 'newly_wrong'")) >= 1
        assert f"{diff.negative_flip_rate:.1%}" in panel.summary.value and f"{diff.positive_flip_rate:.1%}" in panel.summary.value
        np.testing.assert_array_equal(panel.diff.confusion_delta, diff.confusion_delta)
        np.testing.assert_allclose(panel.diff.embedding_agreement, diff.embedding_agreement)
    finally:
        panel.close()


def test_a_quantized_reference_shows_its_numbers_and_says_why_it_has_no_grad_cam():
    pictures, labels, names = digits()
    model = cw.demo.digits_model()
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    panel = ModelDiffPanel(model, pictures, cw.demo.digits_preprocess, names, labels, reference=quantized, cache=False)
    try:
        assert panel.wait(120) and panel.error == ""
        before, after = predictions(quantized, pictures), predictions(model, pictures)
        assert panel.diff.accuracy_a == pytest.approx((before == labels.numpy()).mean())
        np.testing.assert_array_equal(panel.diff.predictions_a, before)
        reference_row, model_row = panel._maps.captions
        assert all("no gradient reaches" in caption and "quantized layers" in caption for caption in reference_row)
        assert not any("no gradient" in caption for caption in model_row)
        # The model's own maps are drawn: a Grad-CAM over the digit, not a placeholder.
        assert pixels(panel._maps.pictures[1][0]).std() > 20
        assert panel.similarity.shape == (3, 3)
    finally:
        panel.close()


def test_two_architectures_compare_layer_by_layer_and_each_explains_at_its_own_layer():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    state, reference_state = ModelState(model), ModelState(reference)
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(24)]
    labels = rng.integers(0, 10, 24)
    panel = ModelDiffPanel(model, pictures, None, None, labels, reference=reference, cache=False)
    try:
        assert panel.wait(300) and panel.error == ""
        conv_a = [name for name, _ in panel.reference_session.conv_layers()]
        conv_b = [name for name, _ in panel.session.conv_layers()]
        assert list(panel.similarity.index) == conv_a and list(panel.similarity.columns) == conv_b
        assert panel.similarity.shape == (20, 52)
        assert panel.reference_layer() == "layer4.1.conv2" and panel.layer == panel.session.heatmap_layer()
        assert len(panel._maps.pictures[0]) == len(panel._maps.pictures[1]) == len(panel._maps.classes)
        state.assert_unchanged()
        reference_state.assert_unchanged()
    finally:
        panel.close()
