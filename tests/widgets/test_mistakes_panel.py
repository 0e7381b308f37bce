"""MistakesPanel: the gallery holds exactly the evaluation's mistakes; matrix cells and the most-confused pairs
filter it; clicks select; each class's accuracy is listed worst first."""

import re

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

import cnnviz_widgets as cw
from cnnviz_widgets.widgets.base import TaskBar
from tests.model_state import ModelState
from panel_support import digits, pixels, settled  # noqa: F401 - digits is a fixture

IMAGES = 120


def confused_digits():
    """Digits with a few labels changed, so that the matrix has off-diagonal cells to click."""
    x, y, names = cw.demo.digits("test")
    labels = y[:IMAGES].clone()
    labels[[0, 5, 9]] = torch.tensor([7, 7, 2])
    return cw.demo.digits_model(), cw.demo.digit_pictures(x[:IMAGES]), labels, names


def test_gallery_shows_the_mistakes_most_confident_first_and_a_cell_filters_it():
    model, pictures, labels, names = confused_digits()
    state = ModelState(model)
    panel = settled(cw.MistakesPanel(model, pictures, cw.demo.digits_preprocess, names, labels=labels))
    evaluation = cw.evaluate(model, torch.cat([cw.demo.digits_preprocess(p) for p in pictures]), labels, progress=False)
    np.testing.assert_array_equal(panel.evaluation.confusion, evaluation.confusion)
    mistakes = evaluation.mistakes()
    assert len(mistakes) >= 3
    np.testing.assert_array_equal(panel._shown, mistakes)
    shown_cards = [card for card in panel.cards if card.layout.display != "none"]
    assert len(shown_cards) == len(mistakes)
    first = mistakes[0]
    assert f"true <b>{names[labels[first]]}</b>" in panel.captions[0].value
    assert f"{evaluation.confidence[first]:.0%}" in panel.captions[0].value
    assert pixels(panel.slots[0].value).std() > 10

    true, predicted = int(labels[5]), int(evaluation.predictions[5])
    drawn = []
    draw = panel._draw
    panel._draw = lambda: (drawn.append(1), draw())
    panel.matrix.selection = (true, predicted)
    assert len(drawn) == 1, "one click, one redraw of the gallery"
    np.testing.assert_array_equal(panel._shown, evaluation.mistakes(true=true, predicted=predicted))
    assert (panel.true_class.value, panel.predicted_class.value) == (true, predicted)
    assert f"of {len(panel._shown)}" in panel.summary.value

    panel.slots[0].pointer = {"x": 0.5, "y": 0.5, "kind": "press", "serial": 1}
    assert panel.image == int(panel._shown[0])
    assert panel.slots[0].highlighted
    state.assert_unchanged()


def accuracy_rows(panel) -> list[tuple[str, str]]:
    """(class name, what its row says) for each row of the per-class accuracy, top to bottom."""
    return re.findall(r"<span[^>]*>(.*?)</span><span[^>]*>(.*?)</span>", panel.class_accuracy.value)


def expected_accuracy_rows(truth: np.ndarray, predictions: np.ndarray, names) -> list[tuple[str, str]]:
    """By hand: each class's hits over its images, lowest share first, class order among equals."""
    rows = []
    for k in range(len(names)):
        total = int((truth == k).sum())
        hits = int(((truth == k) & (predictions == k)).sum())
        rows.append((hits / total, k, f"{hits / total:.1%} ({hits}/{total})"))
    return [(names[k], text) for _, k, text in sorted(rows)]


def shown_pairs(panel) -> list[str]:
    return [button.description for button in panel.pair_buttons if button.layout.display != "none"]


def expected_pairs(truth: np.ndarray, predictions: np.ndarray, names) -> list[tuple[int, int, int]]:
    """The ten largest off-diagonal cells of scikit-learn's matrix, row-major among equals."""
    confusion = confusion_matrix(truth, predictions, labels=range(len(names)))
    cells = [(-int(confusion[t, p]), t, p) for t in range(len(names)) for p in range(len(names)) if t != p and confusion[t, p]]
    return [(t, p, -negative) for negative, t, p in sorted(cells)[:10]]


def test_each_class_accuracy_worst_first_and_a_most_confused_pair_filters_the_gallery_as_its_cell():
    model, pictures, labels, names = confused_digits()
    panel = settled(cw.MistakesPanel(model, pictures, cw.demo.digits_preprocess, names, labels=labels))
    inputs = torch.cat([cw.demo.digits_preprocess(p) for p in pictures])
    truth = labels.numpy()
    with torch.no_grad():
        predictions = model.eval()(inputs).argmax(1).numpy()

    rows = expected_accuracy_rows(truth, predictions, names)
    assert accuracy_rows(panel) == rows
    assert rows[0][1] != rows[-1][1], "every class equally right: the order would prove nothing"
    pairs = expected_pairs(truth, predictions, names)
    assert len(pairs) >= 2
    assert shown_pairs(panel) == [
        f"true {names[t]} → predicted {names[p]}: {n} image{'s' if n > 1 else ''}" for t, p, n in pairs
    ]

    draw = panel._draw
    for button, (true, predicted, count) in zip(panel.pair_buttons, pairs):
        drawn = []
        panel._draw = lambda: (drawn.append(1), draw())
        button.click()
        assert len(drawn) == 1, "one click, one redraw of the gallery"
        assert panel.cell == (true, predicted) and panel.matrix.selection == (true, predicted)
        assert (panel.true_class.value, panel.predicted_class.value) == (true, predicted)
        cell = np.flatnonzero((truth == true) & (predictions == predicted))
        assert len(cell) == count
        np.testing.assert_array_equal(np.sort(panel.shown), cell)
        assert sum(card.layout.display != "none" for card in panel.cards) == min(count, len(panel.cards))
        assert f"true <b>{names[true]}</b><br>said <b style='color:#c62828'>{names[predicted]}</b>" in panel.captions[0].value

    # New weights, a new evaluation: both views follow it. A bias this large makes every image a 3.
    with torch.no_grad():
        model.classifier.bias[3] += 1000.0
    settled(panel).refresh()
    settled(panel)
    with torch.no_grad():
        predictions = model(inputs).argmax(1).numpy()
    assert (predictions == 3).all()
    assert accuracy_rows(panel) == expected_accuracy_rows(truth, predictions, names)
    assert accuracy_rows(panel)[-1] == (names[3], f"100.0% ({(truth == 3).sum()}/{(truth == 3).sum()})")
    pairs = expected_pairs(truth, predictions, names)
    assert shown_pairs(panel) == [f"true {names[t]} → predicted {names[p]}: {n} images" for t, p, n in pairs]
    panel.pair_buttons[0].click()
    assert panel.cell == pairs[0][:2]
    np.testing.assert_array_equal(np.sort(panel.shown), np.flatnonzero((truth == pairs[0][0]) & (predictions == 3)))


def test_class_names_are_escaped_and_a_class_without_images_comes_last(digits):
    model, pictures, labels, _ = digits
    keep = np.flatnonzero(labels.numpy() != 9)
    labels = labels[keep].clone()
    labels[0] = (labels[0] + 1) % 9  # a mistake, for a pair to list
    names = [f"<i>{k}</i> & co" for k in range(10)]
    panel = settled(cw.MistakesPanel(model, [pictures[i] for i in keep], cw.demo.digits_preprocess, names, labels=labels))
    assert "<i>" not in panel.class_accuracy.value
    rows = accuracy_rows(panel)
    assert len(rows) == 10
    assert rows[-1] == ("&lt;i&gt;9&lt;/i&gt; &amp; co", "no images")
    # A button shows its text as text: the name as it is, no entities.
    assert shown_pairs(panel)[0].startswith(f"true <i>{int(labels[0])}</i> & co → predicted <i>")


def test_without_labels_the_panel_says_what_it_needs():
    model, pictures, labels, names = confused_digits()
    panel = cw.MistakesPanel(model, pictures, cw.demo.digits_preprocess, names)
    assert "labels" in panel.error and "pass labels=" in panel.error
    panel.save_button.click()
    assert "nothing is shown yet, so there is nothing to save" in panel.error


def test_the_progress_reads_as_images_per_second_and_time_left():
    clock = iter([100.0, 100.0, 102.0])
    bar = TaskBar(clock=lambda: next(clock))
    bar.running("classifying", count=120)
    bar.advance(0.25)
    # 30 images in 2 s: 15 images/s, and the 90 left take 6 s.
    assert "classifying 30 of 120 · 15 images/s · 6 s left" in bar.status.value


def test_the_matrix_and_the_gallery_fill_in_while_the_pass_reads_the_images(digits, monkeypatch):
    from cnnviz_widgets.widgets import mistakes

    monkeypatch.setattr(mistakes, "PARTIAL_SECONDS", 0.0)
    model = digits[0]
    x, labels, names = cw.demo.digits("test")
    x, labels = x[:450], labels[:450].numpy()
    panel = cw.MistakesPanel(model, cw.demo.digit_pictures(x), cw.demo.digits_preprocess, names, labels=labels, cache=False)
    summaries, matrices, confusions = [], [], []

    def seen(change):
        summaries.append(change["new"])
        matrices.append(panel.matrix)
        confusions.append(panel.matrix.confusion.copy())

    panel.summary.observe(seen, "value")
    settled(panel)
    read = [int(re.search(r"so far: ([\d,]+) of 450", text).group(1).replace(",", "")) for text in summaries if "so far" in text]
    assert read == sorted(read) and len(set(read)) >= 3 and read[-1] < 450, read
    assert "so far" not in summaries[-1]
    assert all(matrix is matrices[0] for matrix in matrices), "the matrix is updated in place"
    with torch.no_grad():
        predictions = model(x).argmax(dim=1).numpy()
    for count, confusion in zip(read, [c for text, c in zip(summaries, confusions) if "so far" in text]):
        np.testing.assert_array_equal(confusion, confusion_matrix(labels[:count], predictions[:count], labels=range(10)))
    np.testing.assert_array_equal(panel.matrix.confusion, confusion_matrix(labels, predictions, labels=range(10)))


def test_a_random_preprocessing_keeps_nothing_on_disk_and_the_panel_says_why(tmp_path):
    import torchvision.transforms as T

    model, pictures, labels, names = confused_digits()
    random_crop = T.Compose([T.Grayscale(), T.RandomResizedCrop(32, scale=(0.9, 1.0)), T.ToTensor()])
    panel = settled(cw.MistakesPanel(model, pictures, random_crop, names, labels=labels, cache=tmp_path, cache_size="1MB"))
    assert panel.evaluation is not None
    assert list(tmp_path.glob("pass-*")) == []
    assert "not kept on disk" in panel.note.value and "RandomResizedCrop" in panel.note.value
    panel.close()

    kept = settled(cw.MistakesPanel(model, pictures, cw.demo.digits_preprocess, names, labels=labels, cache=tmp_path))
    assert len(list(tmp_path.glob("pass-*.npz"))) == 1 and "not kept" not in kept.note.value
    kept.close()


def test_the_gallery_shows_the_images_it_is_handed_right_or_wrong_until_the_user_goes_back():
    model, pictures, labels, names = confused_digits()
    panel = settled(cw.MistakesPanel(model, pictures, cw.demo.digits_preprocess, names, labels=labels))
    inputs = torch.cat([cw.demo.digits_preprocess(p) for p in pictures])
    with torch.no_grad():
        predictions = model.eval()(inputs).argmax(1).numpy()
    right = np.flatnonzero(predictions == labels.numpy())
    wrong = np.flatnonzero(predictions != labels.numpy())
    handed = np.array([right[3], wrong[0], right[0], right[7]])
    mistakes = panel.shown

    panel.show_images(handed, "a finding <of> four")
    np.testing.assert_array_equal(panel.shown, handed)
    assert "showing: <b>a finding &lt;of&gt; four</b> · 4 images" in panel.showing.value
    assert panel.showing_bar.layout.display == "flex" and panel.filters.layout.display == "none"
    assert sum(card.layout.display != "none" for card in panel.cards) == 4
    said = f"said <b style='color:#2e7d32'>{names[predictions[right[3]]]}</b>"
    assert said in panel.captions[0].value, "a right answer is not shown as a mistake"
    assert f"said <b style='color:#c62828'>{names[predictions[wrong[0]]]}</b>" in panel.captions[1].value
    assert "images shown: 1–4 of 4" in panel.summary.value
    panel.slots[2].pointer = {"x": 0.5, "y": 0.5, "kind": "press", "serial": 1}
    assert panel.image == right[0]

    panel.back.click()
    np.testing.assert_array_equal(panel.shown, mistakes)
    assert panel.showing_bar.layout.display == "none" and panel.filters.layout.display == "flex"

    # A matrix cell also leaves the handed images for that cell's mistakes.
    panel.show_images(handed[:2], "two")
    true, predicted = int(labels[wrong[0]]), int(predictions[wrong[0]])
    panel.matrix.selection = (true, predicted)
    np.testing.assert_array_equal(np.sort(panel.shown), np.flatnonzero((labels.numpy() == true) & (predictions == predicted)))
    assert panel.showing_bar.layout.display == "none"
    with pytest.raises(ValueError, match=f"indices: image {len(pictures)} out of range 0..{len(pictures) - 1}"):
        panel.show_images([3, len(pictures)], "out of range")


def test_the_gallery_sorts_its_mistakes_by_hardness_and_mistakenness_without_blocking():
    model, pictures, labels, names = confused_digits()
    panel = settled(cw.MistakesPanel(model, pictures, cw.demo.digits_preprocess, names, labels=labels, cache=False))
    inputs = torch.cat([cw.demo.digits_preprocess(p) for p in pictures])
    with torch.no_grad():
        probabilities = torch.softmax(model.eval()(inputs).double(), dim=1).numpy()
    mistakes = panel.shown
    # FiftyOne's hardness is the entropy of the softmax: by hand, hardest first.
    entropy = -(probabilities * np.log(np.clip(probabilities, 1e-300, None))).sum(axis=1)
    asked = []
    diagnosis = panel.session.diagnosis
    panel.session.diagnosis = lambda checkpoint=None: (asked.append(1), diagnosis(checkpoint))[1]

    panel.order.value = "hardness"
    # The diagnosis runs on the panel's long runner: the change of order returns at once.
    settled(panel)
    order = np.argsort(-entropy[mistakes], kind="stable")
    np.testing.assert_array_equal(panel.shown, mistakes[order])
    assert not np.array_equal(mistakes[order], mistakes), "the two orders agree: the test would prove nothing"

    panel.order.value = "mistakenness"
    settled(panel)
    mistakenness = diagnosis().mistakenness
    assert list(mistakenness[panel.shown]) == sorted(mistakenness[mistakes], reverse=True)
    assert asked == [1], "one diagnosis serves both orders"
    panel.order.value = "confident"
    np.testing.assert_array_equal(panel.shown, mistakes)
