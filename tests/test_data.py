"""evaluate / embed / project on the demo digits CNN, checked against scikit-learn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import confusion_matrix
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_info, threadpool_limits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import cnnviz_widgets as cw
from tests.model_state import ModelState
from cnnviz_widgets import data


@pytest.fixture(scope="module", autouse=True)
def one_native_thread():
    """Native thread pools (BLAS, numba, OpenMP) spin while they wait: on a machine whose cores are all busy
    (a shared test runner), two threads run several times slower than one. Results do not depend on it."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits():
    x, y, class_names = cw.demo.digits("test")
    return x, y, class_names


@pytest.fixture(scope="module")
def model():
    return cw.demo.digits_model()


@pytest.fixture(scope="module")
def evaluation(model, digits):
    x, y, _ = digits
    return cw.evaluate(model, x, y, progress=False)


@pytest.fixture(scope="module")
def embeddings(model, digits):
    x, _, _ = digits
    return cw.embed(model, x, progress=False)


class LogitsAsPixels(nn.Module):
    """Returns its input as logits: images (N, 1, 1, K) carry the logits a test wants."""

    def forward(self, x):
        return x.flatten(1)


class WithSpareLayer(nn.Module):
    """Registers a layer its forward never calls."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(1024, 2)
        self.spare = nn.Linear(2, 2)

    def forward(self, x):
        return self.head(x.flatten(1))


def used_model() -> nn.Module:
    """The digits CNN as a user mid-training leaves it: train mode, half its parameters frozen, grads set."""
    model = cw.demo.digits_model().train()
    params = list(model.parameters())
    for p in params[: len(params) // 2]:
        p.requires_grad_(False)
    for p in params[len(params) // 2 :]:
        p.grad = torch.full_like(p, 0.5)
    return model


def five_nn_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 5-nearest-neighbour accuracy: do a point's neighbours share its class?"""
    _, neighbours = NearestNeighbors(n_neighbors=6).fit(points).kneighbors(points)
    votes = labels[neighbours[:, 1:]]
    predicted = np.array([np.bincount(row, minlength=labels.max() + 1).argmax() for row in votes])
    return float((predicted == labels).mean())


# evaluate


def test_confusion_matches_sklearn(evaluation, digits, model):
    x, y, _ = digits
    with torch.no_grad():
        expected_predictions = model.eval()(x).argmax(1).numpy()
    np.testing.assert_array_equal(evaluation.predictions, expected_predictions)
    expected_confusion = confusion_matrix(y.numpy(), expected_predictions, labels=range(10))
    np.testing.assert_array_equal(evaluation.confusion, expected_confusion)
    assert evaluation.accuracy >= 0.97


def test_probabilities_are_softmax_of_logits(evaluation, digits, model):
    x, _, _ = digits
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x), dim=1).numpy()
    assert evaluation.probabilities.dtype == np.float32
    # The pass runs on the fast copy (BatchNorm folded into the convolutions), which rounds differently.
    np.testing.assert_allclose(evaluation.probabilities, expected, atol=1e-5)


def test_top_k_keeps_each_images_most_probable_classes_only(digits, model):
    x, y, _ = digits
    x, y = x[:100], y[:100]
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x), dim=1)
    top = cw.evaluate(model, x, y, top_k=3, progress=False)
    assert top.probabilities is None
    assert top.top_classes.shape == (100, 3) and top.top_probabilities.dtype == np.float32
    # The pass runs on the fast copy, which rounds differently: classes of nearly equal probability may
    # swap places, so each class listed is checked to carry its own probability, among the three largest.
    values, _ = torch.sort(expected, dim=1, descending=True)
    np.testing.assert_allclose(top.top_probabilities, values[:, :3].numpy(), atol=1e-5)
    listed = torch.from_numpy(top.top_classes).long()
    np.testing.assert_allclose(expected.gather(1, listed).numpy(), top.top_probabilities, atol=1e-5)
    assert len(set(map(tuple, np.sort(top.top_classes, axis=1)))) > 1 and all(len(set(row)) == 3 for row in top.top_classes)
    np.testing.assert_allclose(top.confidence, expected.max(dim=1).values.numpy(), atol=1e-5)
    whole = cw.evaluate(model, x, y, progress=False)
    np.testing.assert_array_equal(top.predictions, whole.predictions)
    np.testing.assert_array_equal(top.confusion, whole.confusion)
    np.testing.assert_array_equal(top.mistakes(), whole.mistakes())
    # The default keeps every probability and lists the 10 most probable (here: every one of 10 classes).
    assert whole.top_classes.shape == (100, 10)
    np.testing.assert_allclose(np.take_along_axis(whole.probabilities, whole.top_classes.astype(np.int64), 1), whole.top_probabilities)
    # No more classes than top_k: nothing is lost, every probability is kept.
    np.testing.assert_allclose(cw.evaluate(model, x, y, top_k=10, progress=False).probabilities, expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("top_k", [0, -2, 2.5, "3"])
def test_top_k_must_be_a_positive_int(digits, model, top_k):
    x, y, _ = digits
    with pytest.raises((ValueError, TypeError), match="top_k"):
        cw.evaluate(model, x[:4], y[:4], top_k=top_k, progress=False)


def test_per_class_accuracy_is_recall(evaluation, digits):
    _, y, _ = digits
    y = y.numpy()
    expected = [(evaluation.predictions[y == k] == k).mean() for k in range(10)]
    np.testing.assert_allclose(evaluation.per_class_accuracy, expected)


def test_mistakes_are_exactly_the_misclassified_images(evaluation, digits):
    _, y, _ = digits
    wrong = set(np.flatnonzero(evaluation.predictions != y.numpy()).tolist())
    assert wrong, "the demo model makes no mistake on the test set: the test would prove nothing"
    mistakes = evaluation.mistakes()
    assert sorted(mistakes.tolist()) == sorted(wrong)
    assert len(mistakes) == len(wrong)


def test_mistakes_most_confident_first_and_filtered():
    logits = torch.tensor(
        [
            [5.0, 0.0, 0.0],  # true 0, predicted 0: right
            [0.0, 3.0, 0.0],  # true 0, predicted 1, confident
            [0.0, 0.5, 0.0],  # true 0, predicted 1, hesitant
            [0.0, 0.0, 9.0],  # true 1, predicted 2, most confident
            [1.0, 0.0, 0.0],  # true 2, predicted 0
        ]
    )
    labels = [0, 0, 0, 1, 2]
    result = cw.evaluate(LogitsAsPixels(), logits[:, None, None, :], labels, progress=False)
    assert result.mistakes().tolist() == [3, 1, 4, 2]
    assert result.mistakes(true=0).tolist() == [1, 2]
    assert result.mistakes(predicted=1).tolist() == [1, 2]
    assert result.mistakes(true=1, predicted=2).tolist() == [3]
    assert result.mistakes(true=2, predicted=1).tolist() == []
    with pytest.raises(ValueError, match="true"):
        result.mistakes(true=3)
    with pytest.raises(TypeError, match="predicted"):
        result.mistakes(predicted="1")


def test_tensor_dataset_and_loader_agree(model, digits, evaluation):
    x, y, _ = digits
    dataset = TensorDataset(x[:100], y[:100])
    from_dataset = cw.evaluate(model, dataset, batch_size=32, progress=False)
    from_loader = cw.evaluate(model, DataLoader(dataset, batch_size=17), progress=False)
    for result in (from_dataset, from_loader):
        np.testing.assert_array_equal(result.predictions, evaluation.predictions[:100])
        np.testing.assert_array_equal(result.labels, y[:100].numpy())
        np.testing.assert_allclose(result.probabilities, evaluation.probabilities[:100], atol=1e-6)


def test_evaluate_and_embed_leave_the_model_as_they_found_it(digits):
    x, y, _ = digits
    model = used_model()
    state = ModelState(model)
    cw.evaluate(model, x[:40], y[:40], batch_size=16, progress=False)
    cw.embed(model, x[:40], batch_size=16, progress=False)
    cw.embed(model, x[:40], layer="features.conv2", progress=False)
    state.assert_unchanged()


def test_model_left_unchanged_after_a_failure(digits):
    x, _, _ = digits
    model = used_model()
    state = ModelState(model)
    # Both fail after the model has run on some images: labels are checked against the logits, and the
    # dataset breaks on its third batch.
    with pytest.raises(ValueError, match="labels"):
        cw.evaluate(model, x[:10], list(range(12, 22)), progress=False)
    with pytest.raises(OSError, match="disk went away"):
        cw.embed(model, BreaksAfter(x[:40], 20), batch_size=8, progress=False)
    state.assert_unchanged()


class BreaksAfter(torch.utils.data.Dataset):
    """A dataset whose reads fail from item ``count`` on, as a file on a network drive can."""

    def __init__(self, images: torch.Tensor, count: int):
        self.images, self.count = images, count

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        if index >= self.count:
            raise OSError("disk went away")
        return self.images[index]


@pytest.mark.parametrize(
    "images, labels, error, argument",
    [
        (42, [0], TypeError, "images"),
        ("no/such/folder", [0], ValueError, "images: 'no/such/folder' is not a folder"),
        (torch.zeros(3, 8, 8), [0, 0, 0], ValueError, "images"),
        (torch.zeros(0, 1, 8, 8), [], ValueError, "images"),
        (torch.zeros(3, 1, 8, 8), [0, 1], ValueError, "labels"),
        (torch.zeros(3, 1, 8, 8), [0.5, 1.0, 2.0], TypeError, "labels"),
        (torch.zeros(3, 1, 8, 8), None, ValueError, "labels"),
    ],
)
def test_evaluate_bad_input_names_the_argument(images, labels, error, argument):
    with pytest.raises(error, match=argument):
        cw.evaluate(LogitsAsPixels(), images, labels, progress=False)


def test_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels.*0\.\.63"):
        cw.evaluate(LogitsAsPixels(), torch.zeros(2, 1, 8, 8), [0, 64], progress=False)


def test_evaluate_rejects_bad_batch_size_and_model(digits):
    x, y, _ = digits
    with pytest.raises(ValueError, match="batch_size"):
        cw.evaluate(LogitsAsPixels(), x, y, batch_size=0)
    with pytest.raises(TypeError, match="model"):
        cw.evaluate(lambda images: images, x, y)


# embed


def test_embed_default_is_the_input_of_the_last_linear(model, digits, embeddings):
    x, _, _ = digits
    with torch.no_grad():
        model.eval()
        expected = model.embedding(model.pool(model.features(x)).flatten(1))
    assert embeddings.shape == (len(x), 64)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=1e-5)


def test_embed_conv_layer_pooled_or_flattened(model, digits):
    x, _, _ = digits
    with torch.no_grad():
        model.eval()
        maps = model.features[:4](x[:20])  # conv1, bn1, relu1, pool1 -> (20, 16, 16, 16)
    averaged = cw.embed(model, x[:20], layer="features.pool1", batch_size=6, progress=False)
    flattened = cw.embed(model, x[:20], layer=model.features.pool1, pool="flatten", progress=False)
    np.testing.assert_allclose(averaged, maps.mean(dim=(2, 3)).numpy(), atol=1e-5)
    np.testing.assert_allclose(flattened, maps.flatten(1).numpy(), atol=1e-5)


def test_embed_stops_after_the_layer():
    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("embed ran the layers after the one it needed")

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), Exploding())
    features = cw.embed(model, torch.ones(5, 1, 2, 2), layer="1", progress=False)
    assert features.shape == (5, 3)


def test_embed_batches_agree(model, digits, embeddings):
    x, _, _ = digits
    np.testing.assert_allclose(cw.embed(model, x, batch_size=7, progress=False), embeddings, atol=1e-5)


def test_embed_bad_input(model, digits):
    x, _, _ = digits
    with pytest.raises(ValueError, match="pool"):
        cw.embed(model, x, pool="max")
    with pytest.raises(TypeError, match="pass output="):
        cw.embed(nn.Sequential(nn.Conv2d(1, 2, 3)), x)
    with pytest.raises(ValueError, match="calls no convolution with spatial maps"):
        cw.embed(nn.Sequential(nn.Flatten(), nn.Identity()), x[:2], progress=False)
    with pytest.raises(ValueError, match="was not called"):
        cw.embed(WithSpareLayer(), x[:2], layer="spare", progress=False)


# project


def test_pca_equals_sklearn_up_to_sign(embeddings):
    ours = cw.project(embeddings, "pca", dims=3)
    reference = PCA(n_components=3).fit_transform(embeddings)
    assert ours.dtype == np.float32 and ours.shape == (len(embeddings), 3)
    signs = np.sign((ours * reference).sum(axis=0))
    np.testing.assert_allclose(ours, reference * signs, atol=1e-3 * np.abs(reference).max())


def test_pca_of_fewer_points_than_dimensions_equals_sklearn_up_to_sign():
    """Six images of a model whose classifier reads 8,960 values: the axes from the points themselves."""
    points = np.random.default_rng(0).normal(size=(6, 8960)).astype(np.float32)
    ours = cw.project(points, "pca", dims=3)
    reference = PCA(n_components=3).fit_transform(points.astype(np.float64))
    signs = np.sign((ours * reference).sum(axis=0))
    np.testing.assert_allclose(ours, reference * signs, atol=1e-3 * np.abs(reference).max())
    # Three points spread along two axes: the third is zero, as they do not spread along it.
    three = cw.project(points[:3], "pca", dims=3)
    np.testing.assert_allclose(three[:, 2], 0, atol=1e-6 * np.abs(three).max())
    np.testing.assert_allclose(np.linalg.norm(three[:, :2], axis=1), np.linalg.norm(points[:3] - points[:3].mean(axis=0), axis=1), rtol=1e-4)


def test_pca_of_large_inputs_in_float32_equals_sklearn_up_to_sign(embeddings, monkeypatch):
    monkeypatch.setattr(data, "PCA_FLOAT64_MAX_VALUES", 100)
    wide = np.concatenate([embeddings, embeddings[:, ::-1] * 0.5], axis=1)
    ours = cw.project(wide, "pca", dims=3)
    reference = PCA(n_components=3).fit_transform(wide.astype(np.float64))
    signs = np.sign((ours * reference).sum(axis=0))
    np.testing.assert_allclose(ours, reference * signs, atol=1e-3 * np.abs(reference).max())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_projection_keeps_classes_apart_and_is_reproducible(method, embeddings, digits):
    _, y, _ = digits
    points = cw.project(embeddings, method, dims=3, seed=0)
    assert points.dtype == np.float32 and points.shape == (len(embeddings), 3)
    assert five_nn_accuracy(points, y.numpy()) >= 0.9
    np.testing.assert_array_equal(cw.project(embeddings, method, dims=3, seed=0), points)


@pytest.mark.slow
def test_two_dimensional_projection(embeddings):
    points = cw.project(embeddings[:150], "umap", dims=2, seed=1)
    assert points.shape == (150, 2) and points.dtype == np.float32


def test_project_accepts_tensors_and_tiny_inputs():
    points = cw.project(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), "tsne", dims=2)
    assert points.shape == (5, 2) and np.isfinite(points).all()


@pytest.mark.parametrize(
    "kwargs, error, argument",
    [
        ({"method": "lle"}, ValueError, "method"),
        ({"dims": 4}, ValueError, "dims"),
        ({"dims": True}, ValueError, "dims"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_project_bad_arguments(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        cw.project(np.zeros((10, 4)), **kwargs)


@pytest.mark.parametrize(
    "embeddings, argument",
    [(np.zeros(10), "embeddings"), (np.zeros((2, 4)), "embeddings"), (np.full((5, 4), np.nan), "embeddings"),
     (np.zeros((10, 2)), "dims")],
)
def test_project_bad_embeddings(embeddings, argument):
    with pytest.raises(ValueError, match=argument):
        cw.project(embeddings, "pca", dims=3)


def test_one_pass_gives_the_evaluation_and_the_embeddings_of_two(digits):
    x, y, _ = digits
    model = cw.demo.digits_model()
    evaluation, embeddings = data.evaluate_and_embed(model, x[:70], y[:70], batch_size=32, progress=False)
    alone = cw.evaluate(model, x[:70], y[:70], progress=False)
    np.testing.assert_array_equal(evaluation.confusion, alone.confusion)
    np.testing.assert_allclose(evaluation.probabilities, alone.probabilities, atol=1e-6)
    np.testing.assert_allclose(embeddings, cw.embed(model, x[:70], progress=False), atol=1e-5)


def test_the_most_confused_pairs_are_the_largest_off_diagonal_cells():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predictions = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1])
    confusion = confusion_matrix(labels, predictions, labels=range(3))
    probabilities = np.eye(3, dtype=np.float32)[predictions]
    top_classes = predictions[:, None].astype(np.int32)
    evaluation = data.Evaluation(labels, predictions, probabilities, confusion, top_classes, np.ones((9, 1), np.float32))
    # By hand: 2 -> 0 three times, 0 -> 1 twice, then 1 -> 0 and 2 -> 1 once each (row-major order for ties).
    assert evaluation.most_confused(3) == [(2, 0, 3), (0, 1, 2), (1, 0, 1)]
    assert evaluation.most_confused(10) == [(2, 0, 3), (0, 1, 2), (1, 0, 1), (2, 1, 1)]


def test_a_pass_hands_out_the_evaluation_of_the_images_read_so_far(model, digits):
    x, y, _ = digits
    x, y = x[:100], y[:100]
    fractions, partials = [], []

    def checkpoint(fraction, so_far=None):
        fractions.append(fraction)
        if so_far is not None:
            partials.append(so_far)

    evaluation, _ = data.evaluate_and_embed(model, x, y, batch_size=32, progress=False, checkpoint=checkpoint, partial_every=0)
    # After each batch: 32, 64, 96 and the last 4 images.
    assert [len(so_far.labels) for so_far in partials] == [32, 64, 96, 100]
    with torch.no_grad():
        predictions = model(x).argmax(dim=1).numpy()
    for so_far in partials:
        read = len(so_far.labels)
        np.testing.assert_array_equal(so_far.labels, y[:read].numpy())
        np.testing.assert_array_equal(so_far.predictions, predictions[:read])
        np.testing.assert_array_equal(so_far.confusion, confusion_matrix(y[:read], predictions[:read], labels=range(10)))
    np.testing.assert_array_equal(partials[-1].confusion, evaluation.confusion)
    assert fractions == [0.0, 0.32, 0.32, 0.64, 0.64, 0.96, 0.96, 1.0]
    # The first batch is handed out at once, so that a view shows something; then every partial_every seconds.
    partials.clear()
    data.evaluate_and_embed(model, x, y, batch_size=32, progress=False, checkpoint=checkpoint, partial_every=3600)
    assert [len(so_far.labels) for so_far in partials] == [32]
    with pytest.raises(ValueError, match="partial_every: the evaluations so far go to checkpoint="):
        data.evaluate_and_embed(model, x, y, progress=False, partial_every=1.0)


def test_a_pass_over_pictures_hands_out_each_batch_of_decoded_pictures_once_in_order(model, digits):
    x, y, _ = digits
    pictures = cw.demo.digit_pictures(x[:70])
    handed = []
    evaluation, _ = data.evaluate_and_embed(
        model, pictures, y[:70], batch_size=32, preprocess=cw.demo.digits_preprocess, progress=False,
        on_pictures=lambda start, batch: handed.append((start, batch)),
    )
    assert [(start, len(batch)) for start, batch in handed] == [(0, 32), (32, 32), (64, 6)]
    for start, batch in handed:
        for index, picture in enumerate(batch, start):
            grey = pictures[index]
            assert picture.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(picture), np.repeat(grey[:, :, None], 3, axis=2))
    with torch.no_grad():
        np.testing.assert_array_equal(evaluation.predictions, model(x[:70]).argmax(dim=1).numpy())
    handed.clear()
    data.evaluate_and_embed(model, x[:70], y[:70], progress=False, on_pictures=lambda *batch: handed.append(batch))
    assert handed == [], "tensors are no pictures"


def test_pca_searches_its_axes_on_one_blas_thread(embeddings, monkeypatch):
    # The search meets its threads at each column of the covariance: on a busy 2-core machine, two threads
    # took 1 to 8 s for 1,280 dimensions, one thread 0.13 to 0.19 s.
    from scipy import linalg

    threads, eigh = [], linalg.eigh

    def watched(*args, **kwargs):
        threads.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        return eigh(*args, **kwargs)

    monkeypatch.setattr(linalg, "eigh", watched)
    with threadpool_limits(2, user_api="blas"):
        points = data._pca(embeddings, 3, 0)
        assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {2}
    assert threads and set(threads) == {1}
    reference = PCA(n_components=3).fit_transform(embeddings.astype(np.float64))
    np.testing.assert_allclose(np.abs(points), np.abs(reference), atol=1e-3 * np.abs(reference).max())


def test_the_pass_keeps_what_diagnosis_needs_of_each_softmax_with_only_the_top_classes():
    # Logits chosen by hand (the model returns its input): the given label is the most probable class for
    # image 0, the third for image 1, and a probability that rounds to 0 for image 2.
    logits = torch.tensor([[4.0, 1.0, 0.0, -1.0], [3.0, 2.0, 1.0, 0.0], [200.0, 0.0, 0.0, -200.0]])
    labels = np.array([0, 2, 3])
    # A linear layer that passes its input through: the pass embeds at the input of the last nn.Linear.
    identity = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    with torch.no_grad():
        identity[1].weight.copy_(torch.eye(4))
        identity[1].bias.zero_()
    evaluation, _ = data.evaluate_and_embed(identity, logits[:, None, None, :], labels, progress=False, top_k=2)
    assert evaluation.probabilities is None
    from scipy.special import softmax
    from scipy.stats import entropy

    probabilities = softmax(logits.double().numpy(), axis=1)
    given = probabilities[np.arange(3), labels]
    np.testing.assert_allclose(evaluation.given_probabilities, given, rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(evaluation.entropy, entropy(probabilities, axis=1), rtol=1e-5, atol=1e-7)
    # Image 0: p(0) - p(1); image 1: p(2) - p(0); image 2: 0 - p(0) = -1.
    np.testing.assert_allclose(
        evaluation.margin, [probabilities[0, 0] - probabilities[0, 1], probabilities[1, 2] - probabilities[1, 0], -1.0], rtol=1e-5
    )
    assert evaluation.given_probabilities.dtype == evaluation.entropy.dtype == evaluation.margin.dtype == np.float32


def test_the_pass_digests_each_input_equal_inputs_alike(digits, model):
    x, y, _ = digits
    # Images 5 and 40 are copies of image 0; image 7 differs from image 0 by one pixel.
    images = x[:50].clone()
    images[5] = images[40] = images[0]
    images[7] = images[0]
    images[7, 0, 3, 3] += 1e-3
    evaluation, _ = data.evaluate_and_embed(model, images, y[:50], batch_size=16, progress=False)
    digests = evaluation.input_digests
    assert digests.dtype == np.uint64 and digests.shape == (50,)
    assert digests[0] == digests[5] == digests[40]
    equal_pairs = {(a, b) for a in range(50) for b in range(a + 1, 50) if digests[a] == digests[b]}
    expected = {(a, b) for a in range(50) for b in range(a + 1, 50) if torch.equal(images[a], images[b])}
    assert equal_pairs == expected == {(0, 5), (0, 40), (5, 40)}
    # A plain evaluation keeps no digest: only the pass over a test set looks for duplicates.
    assert cw.evaluate(model, images, y[:50], progress=False).input_digests is None
