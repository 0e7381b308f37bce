"""The pass over a test set is kept on disk: a second dashboard reads it back; new weights or pictures do not."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms._presets import ImageClassification

import cnnviz_widgets as cw
from cnnviz_widgets.cache import CACHE_SIZE_VARIABLE, DiskCache, callable_digest, check_cache_size
from cnnviz_widgets.session import dataset_pass
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
    assert evaluation.top_classes.shape == (30, dataset_pass.PASS_TOP_CLASSES)
    np.testing.assert_allclose(evaluation.top_probabilities, values[:, : dataset_pass.PASS_TOP_CLASSES].numpy(), atol=1e-6)
    listed = torch.from_numpy(evaluation.top_classes).long()
    np.testing.assert_allclose(probabilities.gather(1, listed).numpy(), evaluation.top_probabilities, atol=1e-6)
    again = Session(model, folder, class_names=names, cache=tmp_path / "cache").evaluation()
    np.testing.assert_array_equal(again.top_classes, evaluation.top_classes)
    np.testing.assert_array_equal(again.top_probabilities, evaluation.top_probabilities)
    assert again.probabilities is None


IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def imagenet_compose(resize: int = 256) -> T.Compose:
    return T.Compose([T.Resize(resize), T.CenterCrop(224), T.ToTensor(), T.Normalize(**IMAGENET_NORMALIZATION)])


class Brighten:
    """A user's callable preprocessing: its factor lives in its state, not in its code."""

    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, picture):
        return TF.to_tensor(picture).mul(self.factor).unsqueeze(0)


def scaled_by(factor: float):
    return lambda picture: TF.to_tensor(picture).mul(factor).unsqueeze(0)


def with_default(factor: float):
    def preprocess(picture, factor=factor):
        return TF.to_tensor(picture).mul(factor).unsqueeze(0)

    return preprocess


def reading_global(factor: float):
    """The same function, compiled in a namespace where its global FACTOR has another value."""
    namespace = {"__name__": "notebook", "TF": TF, "FACTOR": factor}
    exec("def preprocess(picture):\n    return TF.to_tensor(picture).mul(FACTOR).unsqueeze(0)\n", namespace)
    return namespace["preprocess"]


def to_input(picture, side: int):
    return TF.to_tensor(picture.resize((side, side)))


def test_callable_objects_of_one_class_with_other_settings_get_other_digests():
    assert callable_digest(Brighten(1.0)) != callable_digest(Brighten(2.0))
    assert callable_digest(T.Resize(256)) != callable_digest(T.Resize(232))
    assert callable_digest(T.Normalize(**IMAGENET_NORMALIZATION)) != callable_digest(T.Normalize(mean=[0.5] * 3, std=[0.5] * 3))
    assert callable_digest(ImageClassification(crop_size=224)) != callable_digest(ImageClassification(crop_size=224, resize_size=232))


def test_partials_with_other_arguments_get_other_digests():
    assert callable_digest(functools.partial(to_input, side=16)) != callable_digest(functools.partial(to_input, side=20))
    assert callable_digest(functools.partial(to_input, side=16)) != callable_digest(functools.partial(TF.resize, size=16))
    assert callable_digest(functools.partial(TF.resize, size=[16])) != callable_digest(functools.partial(TF.resize, size=[20]))


def test_a_compose_holding_other_settings_gets_another_digest():
    assert callable_digest(imagenet_compose(256)) != callable_digest(imagenet_compose(232))
    assert callable_digest(T.Compose([Brighten(1.0), T.CenterCrop(8)])) != callable_digest(T.Compose([Brighten(2.0), T.CenterCrop(8)]))


def test_a_function_with_another_closure_default_or_global_gets_another_digest():
    assert callable_digest(scaled_by(1.0)) != callable_digest(scaled_by(2.0))
    assert callable_digest(with_default(1.0)) != callable_digest(with_default(2.0))
    assert callable_digest(reading_global(1.0)) != callable_digest(reading_global(2.0))


def test_the_same_settings_built_twice_get_one_digest():
    """What lets the cache hit in the next kernel: a preprocessing built again from the same settings."""
    assert callable_digest(imagenet_compose()) == callable_digest(imagenet_compose())
    assert callable_digest(ImageClassification(crop_size=224)) == callable_digest(ImageClassification(crop_size=224))
    # ResNet-50's V2 weights resize to 232 before the 224 crop; both objects are built by torchvision.
    resnet50 = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert callable_digest(resnet50.transforms()) == callable_digest(resnet50.transforms())
    assert callable_digest(resnet50.transforms()) == callable_digest(ImageClassification(crop_size=224, resize_size=232))
    assert callable_digest(T.Compose([Brighten(2.0), T.CenterCrop(8)])) == callable_digest(T.Compose([Brighten(2.0), T.CenterCrop(8)]))
    assert callable_digest(functools.partial(to_input, side=16)) == callable_digest(functools.partial(to_input, side=16))
    for make in (scaled_by, with_default, reading_global):
        assert callable_digest(make(2.0)) == callable_digest(make(2.0))
    assert callable_digest(torch.as_tensor) == callable_digest(torch.as_tensor) != callable_digest(torch.from_numpy)


def test_a_preprocessing_that_cannot_be_identified_gets_none(tmp_path):
    assert callable_digest(T.Compose([T.Resize(256), T.RandomResizedCrop(224), T.ToTensor()])) is None
    assert callable_digest(lambda picture: TF.to_tensor(picture) + 0.01 * torch.randn(1)) is None
    with open(tmp_path / "log.txt", "w") as log:
        assert callable_digest(lambda picture: log.write("read") and TF.to_tensor(picture)) is None
    assert callable_digest(functools.partial(to_input, side=torch.Generator())) is None
    assert callable_digest(torch.nn.Sequential(torch.nn.Dropout(0.1))) is None
    assert callable_digest(torch.nn.Sequential(torch.nn.Dropout(0.1)).eval()) is not None


DIGEST_OF_A_COMPOSE = """
import functools, sys
import torchvision.transforms as T
from cnnviz_widgets.cache import callable_digest
normalization = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
compose = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(**normalization)])
settings = functools.partial(T.functional.normalize, keep=frozenset({"red", "green", "blue", "alpha"}), **normalization)
print(callable_digest(compose).hex(), callable_digest(settings).hex())
"""


def test_the_digest_is_the_same_in_another_process():
    # Another hash seed: a set's order differs from this process's.
    found = subprocess.run(
        [sys.executable, "-c", DIGEST_OF_A_COMPOSE], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "12345"}
    ).stdout.split()
    settings = functools.partial(TF.normalize, keep=frozenset({"red", "green", "blue", "alpha"}), **IMAGENET_NORMALIZATION)
    assert found == [callable_digest(imagenet_compose()).hex(), callable_digest(settings).hex()]


def test_a_preprocessing_with_other_settings_is_computed_again(folder, tmp_path):
    model = CountingCNN()
    Session(model, folder, preprocess=functools.partial(to_input, side=16), cache=tmp_path / "cache").evaluation()
    before = CountingCNN.images_read
    Session(model, folder, preprocess=functools.partial(to_input, side=20), cache=tmp_path / "cache").evaluation()
    assert CountingCNN.images_read - before >= 30
    before = CountingCNN.images_read
    Session(model, folder, preprocess=functools.partial(to_input, side=16), cache=tmp_path / "cache").evaluation()
    assert CountingCNN.images_read - before <= 2
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_a_random_preprocessing_is_never_kept_on_disk(folder, tmp_path):
    model = CountingCNN()
    random_crops = T.Compose([T.RandomResizedCrop(16), T.ToTensor()])
    Session(model, folder, preprocess=random_crops, cache=tmp_path / "cache").evaluation()
    before = CountingCNN.images_read
    Session(model, folder, preprocess=random_crops, cache=tmp_path / "cache").evaluation()
    assert CountingCNN.images_read - before >= 30
    assert list((tmp_path / "cache").glob("*.npz")) == []


def entries(folder) -> set[str]:
    return {path.name for path in folder.glob("pass-*.npz")}


def test_the_cache_folder_keeps_under_its_size_and_evicts_the_least_recently_used(tmp_path):
    arrays = {"embeddings": np.arange(25_000, dtype=np.float32)}
    probe = DiskCache(tmp_path / "probe")
    probe.save("size", arrays)
    size = probe.path("size").stat().st_size
    cache = DiskCache(tmp_path / "cache", cache_size=int(2.5 * size))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "notes.bin").write_bytes(bytes(10 * size))
    cache.save("a", arrays)
    cache.save("b", arrays)
    np.testing.assert_array_equal(cache.load("a")["embeddings"], arrays["embeddings"])
    cache.save("c", arrays)
    # "b" is the least recently used: "a" was read after it was written.
    assert entries(tmp_path / "cache") == {cache.path("a").name, cache.path("c").name}
    assert cache.load("b") is None
    cache.save("d", arrays)
    assert entries(tmp_path / "cache") == {cache.path("c").name, cache.path("d").name}
    assert (tmp_path / "cache" / "notes.bin").stat().st_size == 10 * size


def test_the_entry_just_written_is_kept_even_alone_above_the_size(tmp_path):
    cache = DiskCache(tmp_path, cache_size=100)
    cache.save("a", {"embeddings": np.zeros(1000, dtype=np.float32)})
    assert entries(tmp_path) == {cache.path("a").name}
    cache.save("b", {"embeddings": np.ones(1000, dtype=np.float32)})
    assert entries(tmp_path) == {cache.path("b").name}
    np.testing.assert_array_equal(cache.load("b")["embeddings"], np.ones(1000, dtype=np.float32))


def test_the_cache_size_comes_from_the_argument_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_SIZE_VARIABLE, raising=False)
    assert check_cache_size() == 2_000_000_000
    assert check_cache_size("500MB") == 500_000_000
    assert check_cache_size("2GB") == 2_000_000_000
    assert check_cache_size("1.5GiB") == 1_610_612_736
    assert check_cache_size(" 64 kb ") == 64_000
    assert check_cache_size(1234) == check_cache_size("1234") == 1234
    monkeypatch.setenv(CACHE_SIZE_VARIABLE, "300MB")
    assert check_cache_size() == 300_000_000
    assert DiskCache(tmp_path).cache_size == 300_000_000
    assert DiskCache(tmp_path, cache_size="1MB").cache_size == 1_000_000
    monkeypatch.setenv(CACHE_SIZE_VARIABLE, "lots")
    with pytest.raises(ValueError, match="CNNVIZ_CACHE_SIZE: expected a size such as '500MB', '2GB' or '1.5GiB', or a number of bytes, got 'lots'"):
        check_cache_size()
    with pytest.raises(ValueError, match="cache_size: expected a size such as '500MB', '2GB' or '1.5GiB', or a number of bytes, got '5 PB'"):
        check_cache_size("5 PB")
    with pytest.raises(ValueError, match="cache_size: expected a positive size, got 0; cache=False keeps no disk cache"):
        check_cache_size(0)
    for wrong in (1.5, True, [1]):
        with pytest.raises(TypeError, match=f"cache_size: expected a number of bytes \\(an int\\) or a size such as '500MB', got {type(wrong).__name__}"):
            DiskCache(tmp_path, cache_size=wrong)
