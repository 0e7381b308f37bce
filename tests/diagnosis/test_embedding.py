"""Findings in embedding space: the neighbour graph against a brute-force search, and planted duplicates, outliers
and a weak slice, each made here on real images and found by the functions."""

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz_widgets as cw
from cnnviz_widgets.diagnosis.embedding import (
    EXACT_LIMIT,
    NeighbourGraph,
    near_duplicates,
    neighbour_graph,
    outliers,
    weak_slices,
    wilson_interval,
)


def brute_force(points, k):
    """Each row's k most similar other rows by cosine similarity, by numpy over every pair."""
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    similarities = unit @ unit.T
    np.fill_diagonal(similarities, -np.inf)
    order = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarities, order, axis=1)


def clustered(count, dimensions, seed):
    """Points around 20 centres, spread along a shared 24-dimensional subspace, as pooled CNN features are."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(20, dimensions))
    basis = rng.normal(size=(24, dimensions)) / np.sqrt(np.arange(1, 25))[:, None]
    points = centres[rng.integers(20, size=count)] + rng.normal(size=(count, 24)) @ basis
    points += rng.normal(scale=0.3, size=points.shape)
    return np.maximum(points, 0).astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    x, y, _ = cw.demo.digits("test")
    return x, y.numpy(), cw.demo.digits_model()


def test_the_exact_graph_is_the_brute_force_search():
    points = np.random.default_rng(0).normal(size=(300, 40)).astype(np.float32)
    graph = neighbour_graph(points, k=7)
    expected_indices, expected_similarities = brute_force(points.astype(np.float64), 7)
    assert graph.method == "exact"
    assert graph.indices.dtype == np.int64 and graph.indices.shape == (300, 7)
    assert graph.similarities.dtype == np.float32
    np.testing.assert_array_equal(graph.indices, expected_indices)
    np.testing.assert_allclose(graph.similarities, expected_similarities, atol=1e-5)


def test_an_exact_copy_is_a_neighbour_with_similarity_one_and_an_image_never_its_own():
    points = np.random.default_rng(1).normal(size=(50, 8))
    points[30] = 2 * points[4]
    graph = neighbour_graph(points, k=3)
    assert graph.indices[4, 0] == 30 and graph.indices[30, 0] == 4
    np.testing.assert_allclose(graph.similarities[[4, 30], 0], 1.0, atol=1e-6)
    assert not (graph.indices == np.arange(50)[:, None]).any()


def test_above_the_exact_limit_the_pca_search_keeps_the_true_neighbours_with_exact_similarities():
    points = clustered(EXACT_LIMIT + 904, 512, seed=2)
    graph = neighbour_graph(points, k=10)
    assert graph.method == "pca"
    queries = np.random.default_rng(3).choice(len(points), size=500, replace=False)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    similarities = unit[queries] @ unit.T
    similarities[np.arange(len(queries)), queries] = -np.inf
    expected_indices = np.argsort(-similarities, axis=1)[:, :10]
    recall = np.mean([np.isin(expected, graph.indices[q]).mean() for q, expected in zip(queries, expected_indices)])
    assert recall >= 0.95
    exact = np.einsum("qd,qkd->qk", unit[queries], unit[graph.indices[queries]])
    np.testing.assert_allclose(graph.similarities[queries], exact, atol=1e-5)
    assert (np.diff(graph.similarities, axis=1) <= 0).all(), "nearest first"


def resized_and_reencoded(picture, scale=0.75, quality=75):
    small = picture.resize((int(picture.width * scale), int(picture.height * scale)), Image.BILINEAR)
    stream = io.BytesIO()
    small.save(stream, "JPEG", quality=quality)
    return Image.open(io.BytesIO(stream.getvalue())).convert("RGB")


def digest(x):
    return int.from_bytes(hashlib.blake2b(x.numpy().tobytes(), digest_size=8).digest(), "little")


@pytest.mark.slow
def test_planted_duplicates_of_photos_are_found_and_conflicting_labels_rank_first():
    model, preprocess, _ = cw.demo.imagenet_model()
    pictures = list(cw.demo.photos().values())
    # Images 0..5: the photos, labelled 0..5. Then: photo 0 resized and re-encoded under another label (a
    # conflict), photo 2 the same under its own label, and photo 4 copied exactly under another label.
    copies = [(0, 9), (2, 2), (4, 7)]
    pictures += [resized_and_reencoded(pictures[0]), resized_and_reencoded(pictures[2]), pictures[4]]
    labels = np.array(list(range(6)) + [label for _, label in copies])
    x = torch.cat([preprocess(picture) for picture in pictures])
    embeddings = cw.embed(model, x, progress=False)
    digests = np.array([digest(row) for row in x], dtype=np.uint64)
    graph = neighbour_graph(embeddings, k=3)

    found = near_duplicates(graph, labels, digests)

    pairs = list(zip(found.index_a, found.index_b))
    assert sorted(pairs) == [(0, 6), (2, 7), (4, 8)]
    assert found.conflict.tolist() == [True, True, False]
    assert pairs[-1] == (2, 7)
    exact = found.set_index(["index_a", "index_b"]).loc[(4, 8)]
    assert exact.similarity == 1.0 and exact.conflict
    assert found.similarity.iloc[0] >= found.similarity.iloc[1], "conflicts by similarity"
    assert near_duplicates(graph).conflict.sum() == 0


def test_exact_duplicates_are_paired_by_digest_even_when_not_neighbours_and_each_pair_comes_once():
    graph = NeighbourGraph(
        indices=np.array([[1], [0], [1], [2]]),
        similarities=np.array([[0.95], [0.95], [0.5], [0.5]], dtype=np.float32),
        method="exact",
    )
    digests = np.array([10, 11, 12, 10], dtype=np.uint64)
    # relative=1: every pair above the threshold, however far the graph's other neighbours lie.
    found = near_duplicates(graph, labels=[0, 0, 1, 1], input_digests=digests, relative=1.0)
    assert found.to_dict("list") == {
        "index_a": [0, 0],
        "index_b": [3, 1],
        "similarity": [1.0, pytest.approx(0.95)],
        "conflict": [True, False],
    }


def test_a_near_duplicate_is_much_closer_than_the_sets_images_usually_are():
    # Every image's farthest neighbour lies at distance 0.02 (similarity 0.98). The pair (0, 1) at distance
    # 0.001 is 0.05 of that, the pair (2, 3) at 0.005 is 0.25 of it: above the default 0.15.
    graph = NeighbourGraph(
        indices=np.array([[1, 2], [0, 3], [3, 0], [2, 1]]),
        similarities=np.array([[0.999, 0.98], [0.999, 0.98], [0.995, 0.98], [0.995, 0.98]], dtype=np.float32),
        method="exact",
    )
    assert list(zip(*near_duplicates(graph)[["index_a", "index_b"]].to_numpy().T)) == [(0, 1)]
    assert sorted(zip(*near_duplicates(graph, relative=0.3)[["index_a", "index_b"]].to_numpy().T)) == [(0, 1), (2, 3)]


def noise_pictures(height, width):
    """Four kinds of noise, unlike each other and unlike any digit."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.arange(height)[:, None].expand(height, width)
    columns = torch.arange(width)[None, :].expand(height, width)
    uniform = torch.rand((height, width), generator=generator)
    gradient = rows.float() / (height - 1)
    stripes = (columns // 3 % 2).float()
    dots = (torch.rand((height, width), generator=generator) > 0.9).float()
    return torch.stack([uniform, gradient, stripes, dots])[:, None]


def test_planted_noise_images_among_digits_are_the_top_outliers(digits):
    x, _, model = digits
    images = torch.cat([x, noise_pictures(*x.shape[2:])])
    planted = set(range(len(x), len(images)))
    graph = neighbour_graph(cw.embed(model, images, progress=False), k=10)

    found = outliers(graph, quantile=0.98)

    assert set(found["index"][:4]) == planted
    assert (np.diff(found.score) <= 0).all()
    expected = 1 - graph.similarities[found["index"]].astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(found.score, expected, rtol=1e-12)
    # 454 scores: the 98th percentile lies at rank 0.98 x 453 = 443.94 (from 0), so ranks 444..453 are above it.
    assert len(images) == 454 and len(found) == 10
    fewer = outliers(graph, k=3, quantile=0.5)
    np.testing.assert_allclose(fewer.score, 1 - graph.similarities[fewer["index"], :3].astype(np.float64).mean(axis=1))


@pytest.mark.parametrize(("seed", "classes"), [(0, (3, 8)), (2, (0, 6))])
def test_a_planted_subpopulation_of_inverted_digits_is_reported_as_a_weak_slice(digits, seed, classes):
    x, labels, model = digits
    rng = np.random.default_rng(seed)
    of_classes = np.flatnonzero(np.isin(labels, classes))
    planted = rng.choice(of_classes, size=2 * len(of_classes) // 3, replace=False)
    x = x.clone()
    x[planted] = 1 - x[planted]
    evaluation = cw.evaluate(model, x, labels, progress=False)
    assert evaluation.correct[planted].mean() < 0.5 < evaluation.accuracy

    slices = weak_slices(cw.embed(model, x, progress=False), labels, evaluation.predictions)

    coverage = [np.isin(planted, members).mean() for members in slices.members]
    assert max(coverage) >= 0.8
    assert (slices.high < evaluation.accuracy).all()
    assert slices.attrs["overall"] == pytest.approx(evaluation.accuracy)
    explained = slices["size"] * (evaluation.accuracy - slices.accuracy)
    assert (np.diff(explained) <= 1e-9).all(), "ranked by the errors they explain"
    for row in slices.itertuples():
        assert row.members.dtype == np.int64 and len(row.members) == row.size
        assert row.accuracy == pytest.approx(evaluation.correct[row.members].mean())
        assert row.true_class == np.bincount(labels[row.members]).argmax()
    for first in range(len(slices)):
        for second in range(first):
            shared = np.intersect1d(slices.members[first], slices.members[second]).size
            assert shared < 0.5 * min(slices["size"][first], slices["size"][second]), "overlapping slices merged"


def test_a_set_too_small_to_split_has_no_weak_slice():
    slices = weak_slices(np.eye(6), [0, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 1])
    assert slices.empty and list(slices.columns) == [
        "size", "accuracy", "low", "high", "true_class", "predicted_class", "members"
    ]


def test_the_wilson_interval_is_the_hand_computed_one():
    # 8 of 10 with z = 1.96: centre (0.8 + 1.96^2 / 20) / (1 + 1.96^2 / 10) = 0.71676, half-width
    # 1.96 / 1.38416 * sqrt(0.8 * 0.2 / 10 + 1.96^2 / 400) = 0.22658.
    low, high = wilson_interval(8, 10, z=1.96)
    assert low == pytest.approx(0.71676 - 0.22658, abs=1e-4) and high == pytest.approx(0.71676 + 0.22658, abs=1e-4)
    # None of 20: the interval starts at 0 and ends at z^2 / (n + z^2).
    low, high = wilson_interval(0, 20, z=1.96)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(1.96**2 / (20 + 1.96**2))


@pytest.mark.parametrize(
    ("call", "error", "start"),
    [
        (lambda: neighbour_graph(np.zeros(5)), ValueError, "embeddings:"),
        (lambda: neighbour_graph(np.ones((5, 3)), k=5), ValueError, "k:"),
        (lambda: neighbour_graph(np.ones((5, 3)), k=2.0), TypeError, "k:"),
        (lambda: neighbour_graph(np.ones((5, 3)), k=2, method="annoy"), ValueError, "method:"),
        (lambda: neighbour_graph(np.array([[1.0, np.nan], [1.0, 2.0]]), k=1), ValueError, "embeddings:"),
        (lambda: near_duplicates("graph"), TypeError, "graph:"),
        (lambda: near_duplicates(neighbour_graph(np.eye(4), 2), labels=[0, 1]), ValueError, "labels:"),
        (lambda: near_duplicates(neighbour_graph(np.eye(4), 2), labels=[0.5] * 4), TypeError, "labels:"),
        (lambda: near_duplicates(neighbour_graph(np.eye(4), 2), threshold=1.5), ValueError, "threshold:"),
        (lambda: near_duplicates(neighbour_graph(np.eye(4), 2), relative=0), ValueError, "relative:"),
        (lambda: near_duplicates(neighbour_graph(np.eye(4), 2), input_digests=[1, 2]), ValueError, "input_digests:"),
        (lambda: outliers(neighbour_graph(np.eye(4), 2), k=3), ValueError, "k:"),
        (lambda: outliers(neighbour_graph(np.eye(4), 2), quantile=1.0), ValueError, "quantile:"),
        (lambda: weak_slices(np.eye(4), [0, 1, 0, 1], [0, 1, 0]), ValueError, "predictions:"),
        (lambda: weak_slices(np.eye(4), [0, 1, 0, 1], [0, 1, 0, 1], granularities=[1], min_size=1), ValueError, "granularities:"),
        (lambda: weak_slices(np.eye(4), [0, 1, 0, 1], [0, 1, 0, 1], granularities=4, min_size=1), TypeError, "granularities:"),
        (lambda: weak_slices(np.eye(4), [0, 1, 0, 1], [0, 1, 0, 1], min_size=0), ValueError, "min_size:"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(call, error, start):
    with pytest.raises(error) as raised:
        call()
    assert str(raised.value).startswith(start)


def test_the_principal_axes_of_fewer_rows_than_dimensions_span_the_covariances_leading_ones():
    """Few images of a wide embedding: the axes from the rows themselves span what the (D, D) covariance's
    leading eigenvectors span."""
    from cnnviz_widgets.diagnosis.embedding import _principal_axes

    rows = np.random.default_rng(1).normal(size=(12, 600))
    inverse_norms = 1 / np.linalg.norm(rows, axis=1)
    mean, axes = _principal_axes(rows, inverse_norms, 5)
    unit = rows * inverse_norms[:, None]
    centred = unit - unit.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    leading = vectors[:, ::-1][:, :5]
    np.testing.assert_allclose(mean, unit.mean(axis=0), atol=1e-6)
    # The same subspace: the projection of one basis on the other keeps every length.
    np.testing.assert_allclose(np.linalg.svd(leading.T @ axes, compute_uv=False), 1.0, atol=1e-4)
