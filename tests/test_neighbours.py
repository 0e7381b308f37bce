"""nearest: the rows most similar to one row by cosine similarity, as scikit-learn's brute-force search finds them."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

import cnnviz_widgets as cw
from cnnviz_widgets.neighbours import NEIGHBOURS, nearest


@pytest.fixture(scope="module")
def embeddings():
    x, _, _ = cw.demo.digits("test")
    return cw.embed(cw.demo.digits_model(), x, progress=False)


def sklearn_nearest(embeddings, index, k):
    """scikit-learn's k nearest rows by cosine distance, without the row itself, as (indices, similarities)."""
    search = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(embeddings)
    distances, indices = search.kneighbors(embeddings[index : index + 1])
    keep = indices[0] != index
    return indices[0][keep][:k], 1 - distances[0][keep][:k]


@pytest.mark.parametrize("index", [0, 17, 449])
def test_the_neighbours_of_real_embeddings_are_those_scikit_learn_finds(embeddings, index):
    indices, similarities = nearest(embeddings, index)
    expected_indices, expected_similarities = sklearn_nearest(embeddings, index, NEIGHBOURS)
    assert indices.dtype == np.int64 and indices.shape == (NEIGHBOURS,)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)
    assert np.all(np.diff(similarities) <= 0), "most similar first"


def test_float64_embeddings_with_negative_values_and_a_tensor_give_the_same_answer():
    rows = np.random.default_rng(0).normal(size=(300, 40))
    indices, similarities = nearest(rows, 5, k=30)
    expected_indices, expected_similarities = sklearn_nearest(rows, 5, 30)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-12)
    tensor_indices, _ = nearest(torch.from_numpy(rows), 5, k=30)
    np.testing.assert_array_equal(tensor_indices, indices)


def test_equally_similar_rows_come_in_index_order_and_the_row_itself_is_left_out():
    a, b, c = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]
    rows = np.array([b, a, c, a, [2.0, 0.0, 0.0], b, a], dtype=np.float32)
    indices, similarities = nearest(rows, 3, k=5)
    assert indices.tolist() == [1, 4, 6, 2, 0]
    np.testing.assert_allclose(similarities, [1, 1, 1, np.sqrt(0.5), 0], atol=1e-6)


def test_a_row_of_zeros_is_as_far_from_every_row_as_in_scikit_learn():
    rows = np.array([[1.0, 2.0], [0.0, 0.0], [2.0, 1.0], [-1.0, 0.5]])
    indices, similarities = nearest(rows, 1, k=3)
    assert indices.tolist() == [0, 2, 3] and similarities.tolist() == [0.0, 0.0, 0.0]
    _, expected = sklearn_nearest(rows, 0, 3)
    np.testing.assert_allclose(nearest(rows, 0, k=3)[1], expected, atol=1e-12)


@pytest.mark.parametrize(
    "arguments, error, argument",
    [
        ((np.ones((5, 3)), 5), ValueError, "index"),
        ((np.ones((5, 3)), -1), ValueError, "index"),
        ((np.ones((5, 3)), True), TypeError, "index"),
        ((np.ones((5, 3)), 1.0), TypeError, "index"),
        ((np.ones((5, 3)), 0, 5), ValueError, "k"),
        ((np.ones((5, 3)), 0, 0), ValueError, "k"),
        ((np.ones((5, 3)), 0, "3"), TypeError, "k"),
        ((np.ones(5), 0), ValueError, "embeddings"),
        ((np.array([[1.0, np.nan], [1.0, 2.0], [0.0, 1.0]]), 0, 1), ValueError, "embeddings"),
        ((np.array([["a", "b"], ["c", "d"]]), 0, 1), TypeError, "embeddings"),
    ],
)
def test_bad_arguments_are_refused_with_the_argument_named(arguments, error, argument):
    with pytest.raises(error, match=f"^{argument}:"):
        nearest(*arguments)
