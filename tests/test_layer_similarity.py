"""layer_similarity against CKA computed directly in the test: Song et al.'s unbiased HSIC (by its closed
formula and by brute force over every 4-tuple of images), the classic biased formula, and planted layers
that are rotations and rescalings of one another."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits
from torch import nn

import cnnviz_widgets as cw
from tests.model_state import ModelState, used_model


@pytest.fixture(scope="module", autouse=True)
def one_native_thread():
    with threadpool_limits(1):
        yield


class Features(nn.Module):
    """A model whose one conv layer ``features`` outputs ``transform`` of its input images, unchanged (an
    identity 1x1 convolution): the test knows the layer's activations exactly."""

    def __init__(self, channels: int, transform=None):
        super().__init__()
        self.transform = transform or (lambda x: x)
        self.features = nn.Conv2d(channels, channels, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))

    def forward(self, x):
        return self.features(self.transform(x)).flatten(1)


def unbiased_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al. 2012, eq. 5, on linear kernels of the rows, written out in float64."""
    n = len(x)
    k, l = x @ x.T, y @ y.T
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    ones = np.ones(n)
    # tr(KL) and 1'KL1 of symmetric K, L, without an n x n x n product.
    trace, row_products = np.sum(k * l), (k @ ones) @ (l @ ones)
    value = trace + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2)) - 2 / (n - 2) * row_products
    return value / (n * (n - 3))


def brute_force_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """The U-statistic of HSIC = E[k_ij l_ij] + E[k_ij] E[l_qr] - 2 E[k_ij l_iq], over every 4-tuple of distinct images."""
    k, l = x @ x.T, y @ y.T
    terms = [
        k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        for i, j, q, r in itertools.permutations(range(len(x)), 4)
    ]
    return float(np.mean(terms))


def cka(hsic, x, y) -> float:
    return hsic(x, y) / np.sqrt(hsic(x, x) * hsic(y, y))


def biased_cka(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def warp(x: torch.Tensor) -> torch.Tensor:
    """A nonlinear function of the images, related to them but far from a rotation of them."""
    return torch.tanh(2 * x + x.roll(1, dims=-3) ** 2)


def random_images(count: int, seed: int = 0, shape=(3, 4, 4)) -> torch.Tensor:
    return torch.randn(count, *shape, generator=torch.Generator().manual_seed(seed))


def flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(len(x), -1).double().numpy()


def single_value(table) -> float:
    assert table.shape == (1, 1)
    return float(table.iloc[0, 0])


def test_one_batch_is_the_full_batch_unbiased_cka():
    images = random_images(300)
    table = cw.layer_similarity(Features(3), Features(3, warp), images, batch_size=300)
    expected = cka(unbiased_hsic, flat(images), flat(warp(images)))
    assert 0.2 < expected < 0.9
    assert single_value(table) == pytest.approx(expected, abs=1e-4)
    assert list(table.index) == ["features"] and list(table.columns) == ["features"]


def test_hsic_is_the_u_statistic_over_every_4_tuple():
    images = random_images(7, seed=1, shape=(2, 2, 2)) + 3  # far from centred: the shift must not matter
    table = cw.layer_similarity(Features(2), Features(2, lambda x: warp(x - 3)), images, batch_size=7)
    expected = cka(brute_force_hsic, flat(images), flat(warp(images - 3)))
    assert 0.1 < expected < 0.9
    assert single_value(table) == pytest.approx(expected, abs=1e-6)


def test_minibatch_estimate_converges_to_the_full_batch_one():
    images = random_images(2048, seed=2)
    x, y = flat(images), flat(warp(images))
    full = cka(unbiased_hsic, x, y)
    errors = {
        size: abs(single_value(cw.layer_similarity(Features(3), Features(3, warp), images, batch_size=size)) - full)
        for size in (8, 64, 1024)
    }
    assert errors[1024] < errors[64] < errors[8]
    assert errors[1024] < 0.01
    # The classic biased formula has a bias shrinking with the number of images: near the same value here.
    assert biased_cka(x, y) == pytest.approx(full, abs=0.02)


def test_more_batches_of_one_size_converge_too():
    images = random_images(4096, seed=3)
    full = cka(unbiased_hsic, flat(images), flat(warp(images)))
    few = abs(single_value(cw.layer_similarity(Features(3), Features(3, warp), images[:64], batch_size=16)) - full)
    many = abs(single_value(cw.layer_similarity(Features(3), Features(3, warp), images, batch_size=16)) - full)
    assert many < few and many < 0.01


def test_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    images = random_images(256, seed=4)
    width = 3 * 4 * 4
    rotation = torch.linalg.qr(torch.randn(width, width, generator=torch.Generator().manual_seed(5)))[0]

    def rotated(x):
        return (warp(x).flatten(1) @ rotation * 7.5).view_as(x)

    plain = single_value(cw.layer_similarity(Features(3), Features(3, warp), images))
    moved = single_value(cw.layer_similarity(Features(3), Features(3, rotated), images))
    assert moved == pytest.approx(plain, abs=1e-6)
    scaled_a = single_value(cw.layer_similarity(Features(3, lambda x: 0.01 * x), Features(3, warp), images))
    assert scaled_a == pytest.approx(plain, abs=1e-6)
    itself = single_value(cw.layer_similarity(Features(3, warp), Features(3, rotated), images))
    assert itself == pytest.approx(1.0, abs=1e-6)


class RotatedLayer(nn.Module):
    """Its layer ``b`` is ``a``'s output turned by an orthogonal 1x1 convolution and scaled by 3."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(6)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1, bias=False)
        self.c = nn.Conv2d(8, 4, 3)
        with torch.no_grad():
            for parameter in (self.a.weight, self.a.bias, self.c.weight, self.c.bias):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
            rotation = torch.linalg.qr(torch.randn(8, 8, generator=generator))[0]
            self.b.weight.copy_(3 * rotation.view(8, 8, 1, 1))

    def forward(self, x):
        return self.c(torch.relu(self.b(self.a(x)))).mean((2, 3))


def test_a_layer_and_its_rotation_have_cka_one():
    model = RotatedLayer()
    table = cw.layer_similarity(model, model, random_images(128, seed=7, shape=(3, 6, 6)), batch_size=32)
    assert list(table.index) == ["a", "b", "c"] == list(table.columns)
    assert table.loc["a", "b"] == pytest.approx(1.0, abs=1e-6)
    assert table.loc["b", "a"] == pytest.approx(1.0, abs=1e-6)
    assert table.loc["a", "c"] < 0.99


@pytest.fixture(scope="module")
def digits():
    return cw.demo.digits("test")[0]


def test_digits_model_against_itself_and_a_copy(digits):
    model = used_model(cw.demo.digits_model())
    twin = copy.deepcopy(model)
    states = ModelState(model), ModelState(twin)
    itself = cw.layer_similarity(model, model, digits, batch_size=64)
    against_copy = cw.layer_similarity(model, twin, digits, batch_size=64)
    names = [name for name, _ in cw.conv_layers(model, digits[0])]
    assert list(itself.index) == names == list(itself.columns) and len(names) >= 3
    np.testing.assert_allclose(np.diag(itself.to_numpy()), 1.0, atol=1e-6)
    np.testing.assert_allclose(itself.to_numpy(), itself.to_numpy().T, atol=1e-9)
    np.testing.assert_allclose(against_copy.to_numpy(), itself.to_numpy(), atol=1e-6)
    assert ((itself.to_numpy() > 0) & (itself.to_numpy() <= 1 + 1e-9)).all()
    for state in states:
        state.assert_unchanged()


def test_chosen_layers_and_checkpoint(digits):
    model = cw.demo.digits_model()
    names = [name for name, _ in cw.conv_layers(model, digits[0])]
    fractions = []
    table = cw.layer_similarity(
        model, model, digits[:100], [names[-1]], model.get_submodule(names[0]), batch_size=40, checkpoint=fractions.append
    )
    assert list(table.index) == [names[-1]] and list(table.columns) == [names[0]]
    assert fractions == [0.0, 0.4, 0.8]


def test_a_last_batch_under_4_images_is_left_out():
    images = random_images(10, seed=9)
    pair = Features(3), Features(3, warp)
    with_remainder = single_value(cw.layer_similarity(*pair, images, batch_size=8))
    assert with_remainder == pytest.approx(single_value(cw.layer_similarity(*pair, images[:8], batch_size=8)), abs=1e-12)
    expected = cka(unbiased_hsic, flat(images[:8]), flat(warp(images[:8])))
    assert with_remainder == pytest.approx(expected, abs=1e-6)


class DictOutput(nn.Module):
    """A model whose output is a dict, as detection and multi-head models give."""

    def __init__(self):
        super().__init__()
        self.inner = RotatedLayer()

    def forward(self, x):
        return {"logits": self.inner(x)}


def test_a_model_whose_output_needs_a_logits_callable():
    images = random_images(32, seed=10, shape=(3, 6, 6))
    plain, wrapped = RotatedLayer(), DictOutput()
    table = cw.layer_similarity(plain, wrapped, images, output=(None, lambda result: result["logits"]))
    assert list(table.columns) == ["inner.a", "inner.b", "inner.c"]
    expected = cw.layer_similarity(plain, RotatedLayer(), images)
    np.testing.assert_allclose(table.to_numpy(), expected.to_numpy(), atol=1e-9)


def test_pictures_with_a_preprocess_for_each_model():
    generator = np.random.default_rng(8)
    pictures = [Image.fromarray(generator.integers(0, 256, (6, 6, 3), dtype=np.uint8)) for _ in range(40)]

    def to_input(picture):
        return torch.from_numpy(np.asarray(picture, dtype=np.float32)).permute(2, 0, 1) / 255

    def negated(picture):
        return -5 * to_input(picture)

    def warped(picture):
        return warp(to_input(picture))

    both = cw.layer_similarity(Features(3), Features(3), pictures, preprocess=(to_input, negated), batch_size=16)
    assert single_value(both) == pytest.approx(1.0, abs=1e-6)
    tensors = torch.stack([to_input(picture) for picture in pictures])
    expected = single_value(cw.layer_similarity(Features(3), Features(3, warp), tensors, batch_size=16))
    paired = cw.layer_similarity(Features(3), Features(3), pictures, preprocess=[to_input, warped], batch_size=16)
    assert single_value(paired) == pytest.approx(expected, abs=1e-9)


class Split(nn.Module):
    def forward(self, x):
        return x, -x


class Halves(nn.Module):
    """Its layer ``halves`` outputs a pair of tensors."""

    def __init__(self):
        super().__init__()
        self.halves = Split()
        self.features = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.features(self.halves(x)[0]).flatten(1)


def test_bad_input_names_the_argument(digits):
    model = cw.demo.digits_model()
    images = digits[:16]
    with pytest.raises(ValueError, match=r"^layers_a: .*closest names: features\.conv1"):
        cw.layer_similarity(model, model, images, ["features.cnv1"])
    with pytest.raises(ValueError, match=r"^layers_b: expected at least one layer"):
        cw.layer_similarity(model, model, images, None, [])
    with pytest.raises(ValueError, match=r"^batch_size: expected at least 4 .* got 3"):
        cw.layer_similarity(model, model, images, batch_size=3)
    with pytest.raises(TypeError, match=r"^model_b: expected a torch.nn.Module"):
        cw.layer_similarity(model, "resnet", images)
    with pytest.raises(TypeError, match=r"^preprocess: expected a callable"):
        cw.layer_similarity(model, model, images, preprocess="imagenet")
    with pytest.raises(ValueError, match=r"^images: need a batch of at least 4 images .* got 3"):
        cw.layer_similarity(model, model, images[:3])
    spared = Features(1)
    spared.spare = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match=r"^layers_b: 'spare' was not called"):
        cw.layer_similarity(model, spared, images, None, ["features", "spare"])
    with pytest.raises(ValueError, match=r"^layers_b: 'spare' was not called"):
        cw.layer_similarity(spared, spared, images, ["features"], ["spare"])
    with pytest.raises(TypeError, match=r"^layers_a: 'halves' outputs a tuple, not a tensor"):
        cw.layer_similarity(Halves(), model, images, ["halves"])
