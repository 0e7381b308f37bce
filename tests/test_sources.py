"""Picture sources: a folder in ImageFolder layout, a list of files, a Dataset of pictures; read lazily."""

from __future__ import annotations

import functools
import operator
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import cnnviz_widgets as cw
from cnnviz_widgets import sources
from cnnviz_widgets.session import Session

PER_CLASS = 6


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """Test digits saved as PNG files, one subfolder per class named after it, as ImageFolder reads them."""
    root = tmp_path_factory.mktemp("digits")
    x, y, names = cw.demo.digits("test")
    pictures = cw.demo.digit_pictures(x)
    chosen = []
    for label, name in enumerate(names):
        (root / name).mkdir()
        for index in np.flatnonzero(y.numpy() == label)[:PER_CLASS]:
            Image.fromarray(pictures[index]).save(root / name / f"{index:04d}.png")
            chosen.append(int(index))
    return root, sorted(chosen, key=lambda index: (int(y[index]), index)), names


def test_a_folder_gives_its_pictures_in_path_order_and_labels_from_subfolders(digit_folder):
    root, chosen, names = digit_folder
    source = sources.picture_source(root)
    x, y, _ = cw.demo.digits("test")
    assert len(source) == len(chosen) == 10 * PER_CLASS
    assert source.class_names == sorted(names)
    assert source.names[0] == f"{names[0]}/{chosen[0]:04d}.png"
    assert [sorted(names)[label] for label in source.labels] == [names[int(y[index])] for index in chosen]
    expected = cw.demo.digit_pictures(x[chosen[7] : chosen[7] + 1])[0]
    assert np.array_equal(np.asarray(source[7].convert("L")), expected)


def test_nothing_is_read_until_a_picture_is_asked_for(digit_folder, monkeypatch):
    root, _, _ = digit_folder
    opened = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(args[0]) or original(*args, **kwargs))
    source = sources.picture_source(root)
    assert opened == []
    source[3]
    source[3]
    assert len(opened) == 1


def test_evaluate_reads_a_folder_and_takes_its_labels(digit_folder):
    root, chosen, names = digit_folder
    model = cw.demo.digits_model()
    x, y, _ = cw.demo.digits("test")
    from_folder = cw.evaluate(model, root, preprocess=cw.demo.digits_preprocess, batch_size=16, progress=False)
    # The folder's classes are the digits' names in sorted order, which is their own order ("0".."9").
    direct = cw.evaluate(model, x[chosen], y[chosen], progress=False)
    np.testing.assert_array_equal(from_folder.labels, direct.labels)
    np.testing.assert_array_equal(from_folder.predictions, direct.predictions)
    np.testing.assert_array_equal(from_folder.confusion, direct.confusion)


def test_a_session_on_a_folder_maps_subfolders_to_the_models_class_names(tmp_path):
    names = ["cat", "dog", "bird"]
    for folder in ("dog", "bird"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (12, 10), (200, 30, 30)).save(tmp_path / folder / "a.jpg")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    session = Session(model, tmp_path, class_names=names)
    # Sorted subfolders are bird, dog: as the model's classes they are 2 and 1.
    assert session.labels.tolist() == [2, 1]
    assert session.names == ["bird/a.jpg", "dog/a.jpg"]
    with pytest.raises(ValueError, match=r"labels: the images come with 2 classes \(bird, dog\), but the model outputs 1; name the subfolders after class_names"):
        Session(torch.nn.Sequential(model, torch.nn.Linear(3, 1)), tmp_path)


def test_file_lists_and_datasets_of_pictures(digit_folder):
    root, chosen, _ = digit_folder
    paths = sorted(root.rglob("*.png"))[:5]
    source = sources.picture_source([str(path) for path in paths])
    assert len(source) == 5 and source.labels is None and source.names[0] == paths[0].name
    folder = torchvision.datasets.ImageFolder(root)
    from_dataset = sources.picture_source(folder)
    assert from_dataset.labels.tolist() == sources.picture_source(root).labels.tolist()
    assert np.array_equal(np.asarray(from_dataset[4]), np.asarray(sources.picture_source(root)[4]))
    with pytest.raises(ValueError, match="images: 1 of the files given do not exist"):
        sources.picture_source([str(paths[0]), str(root / "missing.png")])
    empty = root.parent / "no-pictures-here"
    empty.mkdir(exist_ok=True)
    with pytest.raises(ValueError, match="no pictures .* found under"):
        sources.picture_source(empty)
    with pytest.raises(ValueError, match="is not a folder"):
        sources.picture_source(empty / "missing")


def test_a_datasets_transforms_are_part_of_its_identity(digit_folder):
    root, _, _ = digit_folder
    ImageFolder, T = torchvision.datasets.ImageFolder, torchvision.transforms

    def identity(**made_with) -> bytes | None:
        return sources.picture_source(ImageFolder(root, **made_with)).identity()

    assert identity(transform=T.Resize(8)) != identity(transform=T.Resize(12))
    assert identity(transform=T.Resize(8)) == identity(transform=T.Resize(8)) != identity()
    shifted = {"transform": T.Resize(8), "target_transform": functools.partial(operator.add, 1)}
    assert identity(**shifted) != identity(transform=T.Resize(8), target_transform=functools.partial(operator.add, 2))
    # The transform is read when the identity is asked for: the user may have set another one meanwhile.
    dataset = ImageFolder(root, transform=T.Resize(8))
    source = sources.picture_source(dataset)
    before = source.identity()
    dataset.transform = T.Resize(12)
    assert source.identity() not in (before, None)
    assert source.uncertain_reason() is None


def test_a_dataset_with_a_random_transform_has_no_identity(digit_folder):
    root, _, _ = digit_folder
    T = torchvision.transforms
    source = sources.picture_source(torchvision.datasets.ImageFolder(root, transform=T.Compose([T.Resize(12), T.RandomCrop(8)])))
    assert source.identity() is None
    assert source.uncertain_reason().startswith(
        "images.transform.transforms[1]: a torchvision.transforms.transforms.RandomCrop draws random numbers on each call"
    )


def test_a_dashboard_on_a_folder_agrees_with_evaluate(digit_folder):
    root, chosen, names = digit_folder
    model = cw.demo.digits_model()
    x, y, _ = cw.demo.digits("test")
    dashboard = cw.explore(model, root, class_names=names, preprocess=cw.demo.digits_preprocess)
    try:
        assert "Mistakes" in dashboard.panels
        assert dashboard.wait(120)
        mistakes = dashboard.panels["Mistakes"]
        direct = cw.evaluate(model, x[chosen], y[chosen], progress=False)
        np.testing.assert_array_equal(mistakes.evaluation.confusion, direct.confusion)
        np.testing.assert_array_equal(mistakes.evaluation.predictions, direct.predictions)
    finally:
        dashboard.close()


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_a_pass_over_more_pictures_than_the_cache_holds_keeps_memory_flat():
    side, count = 256, sources.DECODED_PICTURES * 12
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))

    def load(index: int) -> Image.Image:
        return Image.fromarray(np.random.default_rng(index).integers(0, 256, (side, side, 3), dtype=np.uint8))

    source = sources.PictureSource([str(i) for i in range(count)], load)
    preprocess = lambda picture: torchvision.transforms.functional.to_tensor(picture.resize((32, 32)))  # noqa: E731
    session = Session(model, source, preprocess=preprocess, labels=np.zeros(count, dtype=np.int64), cache=False)
    resident = []
    assert len(session.evaluation(lambda fraction: resident.append((fraction, resident_bytes()))).predictions) == count
    # By a quarter of the pass the decoded-picture cache is full (256 of 3,072 pictures); from there on
    # memory stays flat, where keeping the pictures decoded would add 450 MB.
    settled = next(size for fraction, size in resident if fraction >= 0.25)
    grown = max(size for _, size in resident) - settled
    assert grown < 20 * 2**20, f"grew by {grown / 2**20:.0f} MiB over the last three quarters of the pass"
