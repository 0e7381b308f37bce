"""ProjectionProcess: data.project in a child process, with the same points and errors, the frames of a t-SNE and
the epochs of a UMAP on the way, ended by a checkpoint, a frame handler or close().

A stop must not wait for the fit. To prove it without a clock, the tests freeze the fitting child (SIGSTOP) as
soon as the caller's checkpoint runs, i.e. while its reply is still pending: a frozen child can never reply, so a
call that returns at all has ended it. Thread joins carry a timeout only to turn a hang into a failure.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import numpy as np
import pytest

import cnnviz_widgets as cw
from cnnviz_widgets.projection_process import (
    PROCESS_NAME,
    TSNE_EXAGGERATION_ITERATIONS,
    TSNE_ITERATIONS,
    ProjectionClosed,
    ProjectionProcess,
)

# A t-SNE fit of this many points lasts seconds, far longer than the first checkpoint's wait (POLL_SECONDS).
FIT_POINTS = 3000
# A t-SNE of this many points runs its 750 iterations in seconds: dozens of frames, and a full fit to compare.
FRAMES_POINTS = 2000
HANG_GUARD_SECONDS = 120
ENDED_BY_SIGNAL = (-signal.SIGTERM, -signal.SIGKILL)


class Stop(Exception):
    pass


class Background:
    """``call()`` in a thread; :meth:`outcome` is its return value or the exception it raised."""

    def __init__(self, call):
        self._outcome = []
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call):
        try:
            self._outcome.append(call())
        except BaseException as error:  # noqa: BLE001 - handed to the test, which asserts on it
            self._outcome.append(error)

    def outcome(self):
        self._thread.join(HANG_GUARD_SECONDS)
        assert not self._thread.is_alive(), "the call hangs"
        return self._outcome[0]


def projection_children() -> set:
    return {child for child in multiprocessing.active_children() if child.name == PROCESS_NAME}


@pytest.fixture(scope="module")
def embeddings():
    x, _, _ = cw.demo.digits("test")
    return cw.embed(cw.demo.digits_model(), x, progress=False)


@pytest.fixture(scope="module")
def fit_embeddings(embeddings):
    generator = np.random.default_rng(0)
    many = embeddings[generator.integers(len(embeddings), size=FIT_POINTS)]
    return many + generator.normal(scale=0.05 * embeddings.std(), size=many.shape).astype(np.float32)


@pytest.fixture
def projector():
    process = ProjectionProcess()
    yield process
    process.close()


def started_child(projector, embeddings):
    """Serve a first small request, so that the child has done its imports, and return that child."""
    before = projection_children()
    projector.project(embeddings[:20], "tsne", dims=2)
    (child,) = projection_children() - before
    return child


def freeze_once(child, frozen: threading.Event) -> None:
    """Freeze ``child`` on the first call only: by a later one it may be gone and its pid another process's."""
    if not frozen.is_set():
        os.kill(child.pid, signal.SIGSTOP)
        frozen.set()


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_checkpoint_that_raises_ends_the_fit_and_the_next_request_gets_a_new_child(
    embeddings, fit_embeddings, projector
):
    child = started_child(projector, embeddings)

    def checkpoint(fraction):
        os.kill(child.pid, signal.SIGSTOP)
        raise Stop

    call = Background(lambda: projector.project(fit_embeddings, "tsne", dims=3, checkpoint=checkpoint))
    assert isinstance(call.outcome(), Stop)
    assert not child.is_alive() and child.exitcode in ENDED_BY_SIGNAL
    assert not projector.running
    before = projection_children()
    few = embeddings[:20]
    np.testing.assert_array_equal(projector.project(few, "tsne", dims=2), cw.project(few, "tsne", dims=2))
    assert len(projection_children() - before) == 1, "the next request starts a new child"


@pytest.mark.slow
def test_close_during_a_fit_ends_the_child_and_the_pending_call_raises_projection_closed(
    embeddings, fit_embeddings, projector
):
    child = started_child(projector, embeddings)
    frozen = threading.Event()
    pending = Background(
        lambda: projector.project(fit_embeddings, "tsne", dims=2, checkpoint=lambda fraction: freeze_once(child, frozen))
    )
    assert frozen.wait(HANG_GUARD_SECONDS), "the checkpoint never ran"

    assert Background(projector.close).outcome() is None
    assert not child.is_alive() and child.exitcode in ENDED_BY_SIGNAL, "close() returned before the child was gone"
    assert isinstance(pending.outcome(), ProjectionClosed)
    assert not projector.running

    few = embeddings[:20]
    expected = cw.project(few, "tsne", dims=2)
    fresh = ProjectionProcess()
    try:
        np.testing.assert_array_equal(fresh.project(few, "tsne", dims=2), expected)
    finally:
        fresh.close()
    np.testing.assert_array_equal(projector.project(few, "tsne", dims=2), expected)


def test_close_when_idle_ends_the_child(embeddings, projector):
    child = started_child(projector, embeddings)
    projector.close()
    assert not child.is_alive() and not projector.running


@pytest.mark.slow
def test_a_tsne_sends_frames_that_move_then_the_points_of_data_project(fit_embeddings, projector):
    some = fit_embeddings[:FRAMES_POINTS]
    frames, fractions = [], []
    points = projector.project(
        some, "tsne", dims=2, seed=3, checkpoint=fractions.append,
        on_frame=lambda layout, iteration: frames.append((iteration, layout)),
    )
    assert len(frames) >= 5, "several frames came before the points"
    iterations = [iteration for iteration, _ in frames]
    assert iterations == sorted(set(iterations)) and 0 < iterations[0] and iterations[-1] <= TSNE_ITERATIONS
    assert iterations[-1] > TSNE_EXAGGERATION_ITERATIONS, "both phases of the fit count as one run of iterations"
    for (_, before), (_, after) in zip(frames, frames[1:]):
        assert before.dtype == np.float32 and before.shape == (FRAMES_POINTS, 2)
        assert not np.array_equal(before, after), "each frame shows the layout moved on"
    assert fractions == sorted(fractions), "the progress never goes back"
    assert fractions[-1] == pytest.approx(iterations[-1] / TSNE_ITERATIONS)
    np.testing.assert_array_equal(points, cw.project(some, "tsne", dims=2, seed=3))


def test_a_frame_handler_that_raises_ends_the_fit(embeddings, fit_embeddings, projector):
    child = started_child(projector, embeddings)

    def on_frame(points, iteration):
        os.kill(child.pid, signal.SIGSTOP)
        raise Stop

    call = Background(lambda: projector.project(fit_embeddings, "tsne", dims=2, on_frame=on_frame))
    assert isinstance(call.outcome(), Stop)
    assert not child.is_alive() and child.exitcode in ENDED_BY_SIGNAL
    assert not projector.running


@pytest.mark.slow
def test_a_umap_reports_the_share_of_its_epochs_done(embeddings, projector):
    frames, fractions = [], []
    points = projector.project(
        embeddings, "umap", dims=2, checkpoint=fractions.append, on_frame=lambda *frame: frames.append(frame)
    )
    assert fractions == sorted(fractions) and 0 < fractions[-1] <= 1, "the epochs done, as they go"
    assert frames == [], "UMAP has no layout to show before its last epoch"
    np.testing.assert_array_equal(points, cw.project(embeddings, "umap", dims=2))
