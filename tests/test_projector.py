"""export_projector writes files that load back as TensorBoard's Embedding Projector reads them."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz_widgets as cw


@pytest.fixture(scope="module")
def digits():
    x, y, class_names = cw.demo.digits("test")
    return x[:50], y[:50], class_names


@pytest.fixture
def embeddings():
    return np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)


def config_fields(folder) -> dict[str, list[str]]:
    text = (folder / "projector_config.pbtxt").read_text()
    assert text.count("{") == text.count("}")
    fields: dict[str, list[str]] = {}
    for key, value in re.findall(r"^\s*(\w+):\s*(.+?)\s*$", text, flags=re.M):
        fields.setdefault(key, []).append(value.strip('"'))
    return fields


def test_all_files_load_back(tmp_path, embeddings, digits):
    x, y, class_names = digits
    folder = cw.export_projector(tmp_path / "projector", embeddings, labels=y, images=x, class_names=class_names)

    tensors = np.loadtxt(folder / "tensors.tsv", delimiter="\t", dtype=np.float32)
    assert tensors.shape == embeddings.shape
    np.testing.assert_allclose(tensors, embeddings, rtol=1e-6)

    rows = (folder / "metadata.tsv").read_text().splitlines()
    assert rows[0] == "label\tclass"
    assert len(rows) == len(embeddings) + 1
    assert [row.split("\t") for row in rows[1:4]] == [[str(int(v)), class_names[int(v)]] for v in y[:3]]

    fields = config_fields(folder)
    assert fields["tensor_path"] == ["tensors.tsv"]
    assert fields["tensor_shape"] == ["50", "16"]
    assert fields["metadata_path"] == ["metadata.tsv"]
    assert fields["image_path"] == ["sprite.png"]
    size = int(fields["single_image_dim"][0])
    assert fields["single_image_dim"] == [str(size)] * 2

    sprite = Image.open(folder / "sprite.png")
    assert sprite.size == (8 * size, 7 * size)  # ceil(sqrt(50)) = 8 columns, ceil(50 / 8) = 7 rows
    # Thumbnail 3 (row 0, column 3) is image 3: white ink on black, as the tensor holds it.
    tile = np.asarray(sprite.convert("L").crop((3 * size, 0, 4 * size, size)).resize((32, 32)), dtype=np.float32)
    expected = x[3, 0].numpy() * 255
    assert np.corrcoef(tile.ravel(), expected.ravel())[0, 1] > 0.95


def test_single_column_metadata_has_no_header(tmp_path, embeddings, digits):
    _, y, _ = digits
    folder = cw.export_projector(tmp_path, torch.from_numpy(embeddings), labels=y.tolist())
    rows = (folder / "metadata.tsv").read_text().splitlines()
    assert rows == [str(int(v)) for v in y]
    assert not (folder / "sprite.png").exists()
    assert "sprite" not in (folder / "projector_config.pbtxt").read_text()


def test_embeddings_only(tmp_path, embeddings):
    folder = cw.export_projector(tmp_path, embeddings)
    assert sorted(path.name for path in folder.iterdir()) == ["projector_config.pbtxt", "tensors.tsv"]
    assert "metadata_path" not in config_fields(folder)


def test_string_labels_are_kept_on_one_line(tmp_path):
    folder = cw.export_projector(tmp_path, np.eye(3), labels=["a cat", "tab\there", "new\nline"])
    assert (folder / "metadata.tsv").read_text().splitlines() == ["a cat", "tab here", "new line"]


def test_large_sprites_stay_within_the_projector_limit(tmp_path):
    images = np.zeros((20_000, 8, 8), dtype=np.uint8)
    folder = cw.export_projector(tmp_path, np.zeros((20_000, 2)), images=images)
    width, height = Image.open(folder / "sprite.png").size
    assert max(width, height) <= 8192
    assert int(config_fields(folder)["single_image_dim"][0]) == 8192 // 142  # ceil(sqrt(20000)) = 142


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"labels": [0, 1]}, "labels"),
        ({"images": np.zeros((4, 8, 8), dtype=np.uint8)}, "images"),
        ({"labels": [0, 1, 2, 7, 1], "class_names": ["a", "b", "c"]}, "class_names"),
        ({"class_names": ["a"]}, "class_names"),
    ],
)
def test_bad_input_writes_nothing(tmp_path, kwargs, argument):
    folder = tmp_path / "out"
    with pytest.raises(ValueError, match=argument):
        cw.export_projector(folder, np.zeros((5, 3)), **kwargs)
    assert not folder.exists()


def test_embeddings_must_be_two_dimensional(tmp_path):
    with pytest.raises(ValueError, match="embeddings"):
        cw.export_projector(tmp_path, np.zeros(5))
