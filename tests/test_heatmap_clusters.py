"""heatmap_clusters (SpRAy): a planted Clever-Hans shortcut comes out as its own clusters; the eigengap; the
batched maps against per-image ones; the session's cache; Stop; images picked by prediction; bad inputs."""

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.checkpoint import Cancelled
from cnnviz_widgets.methods.grad_cam import CAM_METHODS
from cnnviz_widgets.replica import borrow
from cnnviz_widgets.session import Session
from tests.model_state import ModelState

# The module, not the function of the same name that the package exports.
spray = importlib.import_module("cnnviz_widgets.heatmap_clusters")

MAP_LAYER = "9"
"""The last convolution's activation of :func:`small_cnn`: 8 x 8 maps of 16 x 16 digits."""


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def with_mark(x: torch.Tensor, corner: tuple[int, int]) -> torch.Tensor:
    """A bright 2 x 2 square one pixel in from the ``(row, column)`` corner, 0 for top or left, 1 for bottom
    or right."""
    x = x.clone()
    side = x.shape[-1]
    rows, columns = (slice(1, 3) if end == 0 else slice(side - 3, side - 1) for end in corner)
    x[..., rows, columns] = 1.0
    return x


def digits_16(split: str):
    x, y, _ = cw.demo.digits(split)
    return F.avg_pool2d(x, 2), y


def clever_hans(seed: int, target: int, corner: tuple[int, int]):
    """A small CNN trained on digits where every training image of ``target`` carries the mark, and the test
    set with half of ``target``'s images marked: ``(model, x, y, marked image indices)``."""
    torch.manual_seed(seed)
    x, y = digits_16("train")
    x[y == target] = with_mark(x[y == target], corner)
    model = small_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    # Two threads on a machine busy with other work took ten times longer than one (35 s against 3.3 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(8):
            order = torch.randperm(len(x))
            for start in range(0, len(x), 64):
                batch = order[start : start + 64]
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    x_test, y_test = digits_16("test")
    marked = np.flatnonzero(y_test.numpy() == target)[::2]
    x_test[marked] = with_mark(x_test[marked], corner)
    return model, x_test, y_test, marked


@pytest.fixture(scope="module")
def planted():
    return clever_hans(seed=0, target=3, corner=(0, 0))


def purity(result, marked) -> float:
    """The share of images in their cluster's majority, marked or not."""
    majority = 0
    for cluster in result.clusters:
        carries = np.isin(cluster.members, marked)
        majority += max(carries.sum(), (~carries).sum())
    return majority / len(result.indices)


@pytest.mark.parametrize("seed, target, corner", [(0, 3, (0, 0)), (1, 7, (1, 1))])
def test_a_planted_shortcut_gets_clusters_of_its_own(seed, target, corner):
    model, x, y, marked = clever_hans(seed, target, corner)
    result = cw.heatmap_clusters(model, x, target, labels=y, layer=MAP_LAYER)

    assert np.array_equal(result.indices, np.flatnonzero(y.numpy() == target))
    assert purity(result, marked) >= 0.9
    members = np.sort(np.concatenate([cluster.members for cluster in result.clusters]))
    assert np.array_equal(members, result.indices)
    # The marked images' mean map lies on the mark: most of it in the mark's quarter of the 8 x 8 grid (the
    # last convolutions see 5 cells around each, so the mark's evidence spreads over its quarter).
    rows, columns = (slice(0, 4) if end == 0 else slice(4, 8) for end in corner)
    for cluster in result.clusters:
        if np.isin(cluster.members, marked).mean() > 0.5:
            assert cluster.mean_map[rows, columns].sum() > 0.75


def test_the_clusters_maps_pictures_accuracy_and_outlier_scores_are_the_members(planted):
    model, x, y, _ = planted
    pictures = cw.demo.digit_pictures(x)
    result = cw.heatmap_clusters(model, pictures, 3, labels=y, layer=MAP_LAYER, preprocess=cw.demo.digits_preprocess)

    # The model reads the pictures, rounded to bytes, not x.
    inputs = torch.cat([cw.demo.digits_preprocess(picture) for picture in pictures])
    with torch.no_grad():
        predictions = model(inputs).argmax(dim=1).numpy()
    assert result.class_accuracy == pytest.approx(np.mean(predictions[result.indices] == 3))
    scores = dict(zip(result.indices.tolist(), result.outlier_scores.tolist()))
    for cluster in result.clusters:
        grids = []
        for index in cluster.members:
            grid = cw.cam(model, inputs[index], MAP_LAYER, 3, raw=True).numpy()
            grids.append(grid / grid.sum())
        assert cluster.mean_map.shape == (8, 8) and cluster.mean_map.dtype == np.float32
        np.testing.assert_allclose(cluster.mean_map, np.mean(grids, axis=0), atol=1e-5)
        expected_picture = np.mean([np.repeat(pictures[index][..., None], 3, axis=2) for index in cluster.members], axis=0)
        assert cluster.mean_picture.dtype == np.uint8 and cluster.mean_picture.shape == (16, 16, 3)
        assert np.abs(cluster.mean_picture.astype(float) - expected_picture).max() <= 0.5 + 1e-9
        assert cluster.accuracy == pytest.approx(np.mean(predictions[cluster.members] == 3))
        distances = np.linalg.norm((np.asarray(grids) - cluster.mean_map).reshape(len(grids), -1), axis=1)
        np.testing.assert_allclose([scores[index] for index in cluster.members], distances, atol=1e-5)


def test_without_labels_the_images_predicted_as_the_class_are_used(planted):
    model, x, _, _ = planted
    with torch.no_grad():
        predicted = np.flatnonzero(model(x).argmax(dim=1).numpy() == 3)
    result = cw.heatmap_clusters(model, x, 3, layer=MAP_LAYER)
    assert np.array_equal(result.indices, predicted)
    assert np.isnan(result.class_accuracy) and all(np.isnan(cluster.accuracy) for cluster in result.clusters)


def blob(row: int, column: int, side: int = 16) -> np.ndarray:
    rows, columns = np.mgrid[:side, :side]
    return np.exp(-((rows - row) ** 2 + (columns - column) ** 2) / 8.0)


def test_the_eigengap_finds_three_groups_of_maps_and_a_given_k_is_obeyed():
    generator = np.random.default_rng(0)
    centres = [(3, 3), (3, 12), (12, 8)]
    groups = np.repeat(np.arange(3), 20)
    maps = np.stack([blob(*centres[group]) + 0.05 * generator.random((16, 16)) for group in groups])
    points = (maps / maps.sum(axis=(1, 2), keepdims=True)).reshape(len(maps), -1)

    assignments, eigenvalues = spray.spectral_clusters(points)
    assert adjusted_rand_score(groups, assignments) == 1.0
    assert np.all(np.diff(eigenvalues) >= -1e-12)
    assert eigenvalues[2] < 0.05 < eigenvalues[3]

    assignments, _ = spray.spectral_clusters(points, k=5)
    assert len(np.unique(assignments)) == 5


def test_a_given_k_is_obeyed_by_the_function(planted):
    model, x, y, _ = planted
    assert cw.heatmap_clusters(model, x, 3, labels=y, layer=MAP_LAYER, k=2).k == 2
    assert cw.heatmap_clusters(model, x, 3, labels=y, layer=MAP_LAYER, k=5).k == 5


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_batched_maps_equal_the_maps_of_each_image(method):
    model = cw.demo.digits_model()
    x, _, _ = cw.demo.digits("test")
    images = x[:6]
    with borrow(model) as replica:
        maps, predictions = spray.activation_maps(replica, images, "features.relu3", 4, CAM_METHODS[method])
    with torch.no_grad():
        assert np.array_equal(predictions, model(images).argmax(dim=1).numpy())
    for image, batched in zip(images, maps):
        alone = cw.cam(model, image, "features.relu3", 4, method, raw=True)
        torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5 * float(alone.abs().max()) + 1e-7)


def test_a_second_call_computes_nothing_and_a_weight_change_recomputes(planted, monkeypatch):
    _, x, y, _ = planted
    # A copy of the planted model: its weights change below.
    model = small_cnn().eval()
    model.load_state_dict(planted[0].state_dict())
    batches = []
    computed = spray.activation_maps

    def counted(*args, **kwargs):
        batches.append(len(args[1]))
        return computed(*args, **kwargs)

    monkeypatch.setattr(spray, "activation_maps", counted)
    session = Session(model, x, labels=y, cache=False)
    first = session.heatmap_clusters(3, MAP_LAYER)
    assert sum(batches) == len(first.indices)
    assert session.heatmap_clusters(3, MAP_LAYER) is first
    assert sum(batches) == len(first.indices)

    model[-1].weight.data.add_(0.5)
    again = session.heatmap_clusters(3, MAP_LAYER)
    assert again is not first
    assert sum(batches) == 2 * len(first.indices)
    # Another class, method or k is another computation.
    session.heatmap_clusters(3, MAP_LAYER, "layer-cam")
    assert sum(batches) == 3 * len(first.indices)


def test_a_checkpoint_that_raises_stops_it_and_the_model_is_untouched(planted):
    model, x, y, _ = planted
    state = ModelState(model)
    fractions = []

    def stop_after_two(fraction, partial=None):
        fractions.append(fraction)
        if len(fractions) > 2:
            raise Cancelled

    session = Session(model, x, labels=y, cache=False)
    with pytest.raises(Cancelled):
        session.heatmap_clusters(3, MAP_LAYER, checkpoint=stop_after_two)
    assert len(fractions) == 3 and fractions[-1] < 0.9
    state.assert_unchanged()

    reported = []
    result = cw.heatmap_clusters(model, x, 3, labels=y, layer=MAP_LAYER, checkpoint=lambda f, partial=None: reported.append(f))
    assert result.k >= 2
    assert reported == sorted(reported) and reported[-1] == pytest.approx(1.0)
    state.assert_unchanged()


def test_bad_inputs_are_refused_naming_the_argument(planted):
    model, x, y, _ = planted
    with pytest.raises(ValueError, match="^target: class index 10 is out of range"):
        cw.heatmap_clusters(model, x, 10, labels=y)
    with pytest.raises(TypeError, match="^target"):
        cw.heatmap_clusters(model, x, "3", labels=y)
    few = np.where(np.arange(len(y)) < 3, 3, 0)
    with pytest.raises(ValueError, match="^target: 3 images are labelled class 3; clustering their maps needs at least 4"):
        cw.heatmap_clusters(model, x, 3, labels=few)
    with pytest.raises(ValueError, match="^target: .* needs at least 60"):
        cw.heatmap_clusters(model, x, 3, labels=y, k=30)
    with pytest.raises(ValueError, match="^method: expected one of grad-cam"):
        cw.heatmap_clusters(model, x, 3, labels=y, method="gradcam")
    with pytest.raises(ValueError, match="^layer: no submodule named '99'"):
        cw.heatmap_clusters(model, x, 3, labels=y, layer="99")
    with pytest.raises(ValueError, match="^layer: .* needs a layer with spatial maps"):
        cw.heatmap_clusters(model, x, 3, labels=y, layer="12")
    with pytest.raises(ValueError, match="^k: expected None .* at least 2, got 1"):
        cw.heatmap_clusters(model, x, 3, labels=y, k=1)
    with pytest.raises(TypeError, match="^k"):
        cw.heatmap_clusters(model, x, 3, labels=y, k=2.5)
