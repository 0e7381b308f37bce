"""A preprocessing is identified exactly, from one process to the next, or not at all: random transforms,
open files and modules that may have changed say "cannot tell", and why."""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2 as v2
from PIL import Image
from torchvision.transforms._presets import ImageClassification

from cnnviz_widgets import identity
from cnnviz_widgets.identity import digest, uncertain_reason

NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

# torchvision's documentation lists these as random transforms: each call draws its own parameters.
RANDOM_TRANSFORMS = [
    T.RandomResizedCrop(8), T.RandomCrop(8), T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.RandomRotation(10),
    T.RandomAffine(10), T.RandomPerspective(), T.RandomGrayscale(), T.RandomErasing(), T.ColorJitter(0.2),
    T.GaussianBlur(3), T.AutoAugment(), T.RandAugment(), T.TrivialAugmentWide(), T.AugMix(), T.ElasticTransform(),
    T.RandomApply([T.Resize(8)]), T.RandomChoice([T.Resize(8), T.Resize(9)]), T.RandomOrder([T.Resize(8)]),
    v2.RandomResizedCrop(8), v2.RandomCrop(8), v2.RandomHorizontalFlip(), v2.ColorJitter(0.2), v2.GaussianBlur(3),
    v2.RandAugment(), v2.RandomErasing(), v2.JPEG((50, 90)), v2.RandomIoUCrop(), v2.ScaleJitter((8, 8)),
]
DETERMINISTIC_TRANSFORMS = [
    T.Resize(8), T.CenterCrop(8), T.ToTensor(), T.PILToTensor(), T.Normalize(**NORMALIZATION), T.Grayscale(), T.Pad(2),
    T.FiveCrop(4), T.ConvertImageDtype(torch.float32), ImageClassification(crop_size=224),
    v2.Resize(8), v2.CenterCrop(8), v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(**NORMALIZATION),
    v2.Grayscale(), v2.Pad(2), v2.ToPureTensor(),
]


@pytest.mark.parametrize("transform", RANDOM_TRANSFORMS, ids=lambda transform: type(transform).__qualname__)
def test_random_transforms_cannot_be_identified(transform):
    assert digest(transform) is None
    assert digest(T.Compose([T.Resize(12), transform])) is None
    assert "draws random numbers on each call" in uncertain_reason(transform)


@pytest.mark.parametrize("transform", DETERMINISTIC_TRANSFORMS, ids=lambda transform: type(transform).__qualname__)
def test_deterministic_transforms_are_identified(transform):
    assert len(digest(transform)) == 32
    assert uncertain_reason(transform) is None


def test_the_reason_names_the_part_that_cannot_be_identified(tmp_path, monkeypatch):
    assert uncertain_reason(T.Compose([T.Resize(12), T.RandomResizedCrop(8)])).startswith(
        "preprocess.transforms[1]: a torchvision.transforms.transforms.RandomResizedCrop draws random numbers on each call"
    )
    with open(tmp_path / "log.txt", "w") as log:
        assert uncertain_reason(lambda picture: log.write("read") and picture) == (
            "preprocess → its closure's log: a _io.TextIOWrapper is an open file or stream, read from where it stands"
        )
    (tmp_path / "helpers.py").write_text("def prepare(picture):\n    return picture\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace = {"__name__": "notebook", "helpers": __import__("helpers")}
    exec("def preprocess(picture):\n    return helpers.prepare(picture)\n", namespace)
    assert uncertain_reason(namespace["preprocess"]) == (
        "preprocess → the global helpers: the module helpers is not an installed library: its code may have changed since it was imported"
    )
    assert uncertain_reason(torch.nn.Sequential(torch.nn.Dropout()), "output") == (
        "output._modules['0']: a torch.nn.modules.dropout.Dropout in training mode gives another result on each call; call .eval() on it"
    )
    assert uncertain_reason(T.Compose([T.Resize(12), T.CenterCrop(8)])) is None


def test_calling_a_transform_leaves_its_digest_as_it_was():
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    for transform in (
        T.Compose([T.Resize(16), T.CenterCrop(12), T.ToTensor(), T.Normalize(**NORMALIZATION)]),
        v2.Compose([v2.Resize(16), v2.CenterCrop(12), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]),
        ImageClassification(crop_size=12, resize_size=16),
    ):
        before = digest(transform)
        transform(picture)
        assert digest(transform) == before


def class_from(source: str):
    """A class compiled from ``source`` as a notebook cell would be, named ``Preprocess`` in ``notebook``."""
    namespace = {"__name__": "notebook"}
    exec(source, namespace)
    return namespace["Preprocess"]


def test_a_class_whose_code_changed_gets_another_digest():
    doubling = "class Preprocess:\n    scale = 2\n    def __call__(self, x):\n        return x * self.scale\n"
    halving = "class Preprocess:\n    scale = 2\n    def __call__(self, x):\n        return x / self.scale\n"
    assert digest(class_from(doubling)()) == digest(class_from(doubling)())
    assert digest(class_from(doubling)()) != digest(class_from(halving)())
    assert digest(class_from(doubling)()) != digest(class_from(doubling.replace("scale = 2", "scale = 3"))())


def test_cycles_are_identified_exactly():
    with_super = "class Preprocess(list):\n    def __init__(self, step):\n        super().__init__([step])\n        self.me = self\n"
    made = class_from(with_super)
    assert digest(made(1)) == digest(made(1)) != digest(made(2))
    namespace = {"__name__": "notebook"}
    exec("def halve(x, times):\n    return x if times == 0 else halve(x / 2, times - 1)\n", namespace)
    assert len(digest(namespace["halve"])) == 32


class Shift:
    def __init__(self, offset):
        self.offset = offset

    def __call__(self, x):
        return x + self.offset


def test_tensors_and_arrays_count_by_dtype_shape_and_values():
    assert digest(Shift(torch.tensor([0.5, 0.5]))) == digest(Shift(torch.tensor([0.5, 0.5])))
    assert digest(Shift(torch.tensor([0.5, 0.5]))) != digest(Shift(torch.tensor([0.5, 0.6])))
    assert digest(Shift(torch.tensor([0.5, 0.5]))) != digest(Shift(torch.tensor([0.5, 0.5], dtype=torch.float64)))
    assert digest(Shift(torch.tensor([0.5, 0.5]))) != digest(Shift(torch.tensor([[0.5, 0.5]])))
    assert digest(Shift(np.array([1, 2]))) == digest(Shift(np.array([1, 2])))
    assert digest(Shift(np.array([1, 2]))) != digest(Shift(np.array([1, 3])))
    assert digest(Shift(np.array([1, 2], dtype=np.int32))) != digest(Shift(np.array([1, 2], dtype=np.int64)))


def test_a_preprocessing_made_of_too_many_parts_cannot_be_identified():
    namespace = {"__name__": "notebook", "TABLE": [[index] for index in range(identity.MAX_PARTS + 1)]}
    exec("def preprocess(x):\n    return TABLE[x]\n", namespace)
    assert digest(namespace["preprocess"]) is None
    assert uncertain_reason(namespace["preprocess"]) == (
        "preprocess: it is made of more than 100,000 parts (a dataset or a model?): too many to read before each pass"
    )


def test_a_compose_of_five_transforms_takes_well_under_a_millisecond():
    compose = T.Compose([T.Resize(256), T.CenterCrop(224), T.Grayscale(3), T.ToTensor(), T.Normalize(**NORMALIZATION)])
    digest(compose)
    durations = []
    for _ in range(101):
        start = time.perf_counter()
        digest(compose)
        durations.append(time.perf_counter() - start)
    assert statistics.median(durations) < 1e-3, f"median {statistics.median(durations) * 1e3:.2f} ms"


def test_a_module_of_an_installed_library_is_identified_by_name_and_version():
    namespace = {"__name__": "notebook", "np": np}
    exec("def preprocess(x):\n    return np.asarray(x)\n", namespace)
    assert len(digest(namespace["preprocess"])) == 32
    assert digest(sys.modules["torchvision"]) != digest(sys.modules["torch"])
