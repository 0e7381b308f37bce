"""The pass over a test set is kept on disk: a second dashboard reads it back; new weights or pictures do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz_widgets as cw
from cnnviz_widgets import session
from cnnviz_widgets.session import Session


class CountingCNN(torch.nn.Module):
    """Counts the images its forward reads, across every copy of it (the count lives on the class)."""

    images_read = 0

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        type(self).images_read += len(x)
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("ant", "bee", "cat"):
        (tmp_path / "pictures" / name).mkdir(parents=True)
        for index in range(10):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "pictures" / name / f"{index}.png")
    return tmp_path / "pictures"


def test_a_second_session_reads_the_pass_from_disk_without_running_the_model(folder, tmp_path):
    model = CountingCNN()
    first = Session(model, folder, cache=tmp_path / "cache")
    evaluation = first.evaluation()
    embeddings = first.embeddings(None)
    read_by_first = CountingCNN.images_read
    assert read_by_first >= 30
    second = Session(model, folder, cache=tmp_path / "cache")
    again = second.evaluation()
    np.testing.assert_array_equal(again.confusion, evaluation.confusion)
    np.testing.assert_array_equal(second.embeddings(None), embeddings)
    # Building the second session reads one picture (its classes); the pass itself is read from disk.
    assert CountingCNN.images_read - read_by_first <= 2
    direct = cw.evaluate(model, folder, progress=False)
    np.testing.assert_array_equal(evaluation.predictions, direct.predictions)
    np.testing.assert_array_equal(evaluation.labels, direct.labels)


def test_changed_weights_or_pictures_are_computed_again(folder, tmp_path):
    model = CountingCNN()
    Session(model, folder, cache=tmp_path / "cache").evaluation()
    with torch.no_grad():
        model.fc.bias[0] += 3.0
    before = CountingCNN.images_read
    changed = Session(model, folder, cache=tmp_path / "cache").evaluation()
    assert CountingCNN.images_read - before >= 30
    assert (changed.predictions == 0).mean() > 0.9
    Image.new("RGB", (24, 20), (255, 0, 0)).save(folder / "ant" / "0.png")
    before = CountingCNN.images_read
    Session(model, folder, cache=tmp_path / "cache").evaluation()
    assert CountingCNN.images_read - before >= 30
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3


def test_no_cache_writes_nothing(folder, tmp_path, monkeypatch):
    monkeypatch.setattr("cnnviz_widgets.cache.default_folder", lambda: tmp_path / "default")
    Session(CountingCNN(), folder, cache=False).evaluation()
    assert not (tmp_path / "default").exists()
    Session(CountingCNN(), folder).evaluation()
    assert len(list((tmp_path / "default").glob("*.npz"))) == 1
    with pytest.raises(TypeError, match="cache: expected None .*, False .* or a folder path, got int"):
        Session(CountingCNN(), folder, cache=3)


def test_a_pass_over_many_classes_keeps_and_stores_the_most_probable_only(folder, tmp_path):
    torch.manual_seed(0)
    classes = 50
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, classes)
    )
    names = ["ant", "bee", "cat", *(f"class {k}" for k in range(3, classes))]
    evaluation = Session(model, folder, class_names=names, cache=tmp_path / "cache").evaluation()
    assert evaluation.probabilities is None
    direct = cw.evaluate(model, folder, progress=False)
    # Each listed class carries its own probability, and they are the largest (classes of nearly equal
    # probability may swap places between two passes, which round differently).
    probabilities = torch.from_numpy(direct.probabilities)
    values, _ = torch.sort(probabilities, dim=1, descending=True)
    assert evaluation.top_classes.shape == (30, session.PASS_TOP_CLASSES)
    np.testing.assert_allclose(evaluation.top_probabilities, values[:, : session.PASS_TOP_CLASSES].numpy(), atol=1e-6)
    listed = torch.from_numpy(evaluation.top_classes).long()
    np.testing.assert_allclose(probabilities.gather(1, listed).numpy(), evaluation.top_probabilities, atol=1e-6)
    again = Session(model, folder, class_names=names, cache=tmp_path / "cache").evaluation()
    np.testing.assert_array_equal(again.top_classes, evaluation.top_classes)
    np.testing.assert_array_equal(again.top_probabilities, evaluation.top_probabilities)
    assert again.probabilities is None
