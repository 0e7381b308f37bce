"""ProjectionProcess: data.project in a child process, with the same points and errors, ended by a checkpoint."""

from __future__ import annotations

import time

import numpy as np
import pytest

import cnnviz_widgets as cw
from cnnviz_widgets.projection_process import ProjectionProcess

# Enough points that a t-SNE fit lasts several times the stop budget.
STOPPABLE_POINTS = 3000
FIT_RUNS_SECONDS = 3.0
STOP_BUDGET_SECONDS = 2.0


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def embeddings():
    x, _, _ = cw.demo.digits("test")
    return cw.embed(cw.demo.digits_model(), x, progress=False)


@pytest.fixture
def projector():
    process = ProjectionProcess()
    yield process
    process.close()


def test_points_are_those_of_data_project(embeddings, projector):
    some = embeddings[:60]
    np.testing.assert_array_equal(projector.project(some, "tsne", dims=2, seed=3), cw.project(some, "tsne", dims=2, seed=3))
    assert projector.running, "the process stays for the next request"
    np.testing.assert_array_equal(projector.project(some, "pca", dims=3), cw.project(some, "pca", dims=3))


def test_errors_are_raised_as_data_project_raises_them(projector):
    with pytest.raises(ValueError, match="dims"):
        projector.project(np.zeros((10, 4)), "tsne", dims=4)
    with pytest.raises(ValueError, match="embeddings"):
        projector.project(np.full((5, 4), np.nan), "umap", dims=2)
    assert projector.running, "a refused request leaves the process serving"


def test_a_checkpoint_that_raises_ends_the_fit_at_once_and_the_next_request_is_served(embeddings, projector):
    generator = np.random.default_rng(0)
    many = embeddings[generator.integers(len(embeddings), size=STOPPABLE_POINTS)]
    many = many + generator.normal(scale=0.05 * embeddings.std(), size=many.shape).astype(np.float32)
    started = time.perf_counter()
    stop_requested = []

    def checkpoint():
        if time.perf_counter() - started > FIT_RUNS_SECONDS:
            stop_requested.append(time.perf_counter())
            raise Stop

    with pytest.raises(Stop):
        projector.project(many, "tsne", dims=3, checkpoint=checkpoint)
    assert time.perf_counter() - stop_requested[0] < STOP_BUDGET_SECONDS
    assert not projector.running, "the fitting process is still alive"
    few = embeddings[:20]
    np.testing.assert_array_equal(projector.project(few, "tsne", dims=2), cw.project(few, "tsne", dims=2))
