"""Projections that can be stopped mid-fit and watched as they form: t-SNE and UMAP run in a child process.

A t-SNE or UMAP fit spends its time in compiled code that does not return to Python before it is done, so a
thread running it cannot be interrupted: the user would wait for a fit they no longer want. A child process can
be terminated at once. The child is started with "spawn" because the kernel runs threads, and a forked copy of
a process with threads can deadlock on a lock some other thread held at the fork.

The child outlives one request: starting it imports torch and scikit-learn, and UMAP compiles its numba code on
the first fit of a process. A stop or :meth:`ProjectionProcess.close` ends it; the next request starts a new
one. PCA takes about a second even at 70,000 points, so it runs in the caller's process.

What the child sends back for one request, over its pipe, as tuples:

- ``(FRAME, iteration, points)``: the t-SNE layout after ``iteration`` of its ``TSNE_ITERATIONS``, float32
  ``(N, dims)`` in t-SNE's own units, at most one every ``MIN_FRAME_SECONDS``;
- ``(PROGRESS, fraction)``: the share of UMAP's epochs done;
- then one ``(POINTS, points)``, the result of ``data.project``, or ``(FAILED, error)``, the error it raised.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import threading
import time
import warnings
import weakref
from typing import Callable

import numpy as np

from .data import TSNE_INPUT_DIMS, TSNE_PARALLEL_MIN_POINTS, _embeddings_array, _pca, project

IN_PROCESS_METHODS = ("pca",)
# How often the caller's checkpoint runs while the child fits: the delay between a stop and the kill.
POLL_SECONDS = 0.05
JOIN_SECONDS = 2.0
PROCESS_NAME = "cnnviz-projection"

FRAME, PROGRESS, POINTS, FAILED = "frame", "progress", "points", "failed"
# openTSNE's schedule, which data.project's t-SNE keeps: early exaggeration, then the rest of the iterations.
TSNE_EXAGGERATION_ITERATIONS = 250
TSNE_ITERATIONS = 750
# openTSNE's "auto" gradient switches from Barnes-Hut to FFT interpolation at this many points (2-D only).
TSNE_FFT_MIN_POINTS = 10_000
# Iterations between two frames, by (gradient, dims). openTSNE computes the KL divergence before each
# callback; measured with one thread at 2,000-50,000 points, that costs about one whole iteration with FFT
# gradients, a quarter of one with Barnes-Hut in 2-D and a tenth in 3-D. These intervals keep it near a tenth
# of the fit, with frames as often as that allows: at 50,000 points on two shared cores, an FFT iteration
# took 0.07-0.27 s and a 3-D Barnes-Hut one 3-4 s (bench/bench_projector.py).
FRAME_ITERATIONS = {("fft", 2): 10, ("bh", 2): 3, ("bh", 3): 1}
# Small fits run hundreds of iterations a second: frames beyond ~20 a second would only load the pipe.
MIN_FRAME_SECONDS = 0.05
# UMAP reports its epochs through a tqdm bar, redrawn at most this often.
PROGRESS_SECONDS = 0.1


class _FrameSender:
    """An openTSNE callback that sends the layout to the parent, at most one frame per MIN_FRAME_SECONDS."""

    def __init__(self, send):
        self._send = send
        self._phase_starts = iter((0, TSNE_EXAGGERATION_ITERATIONS))
        self._phase_start = 0
        self._sent_at = -math.inf

    def optimization_about_to_start(self) -> None:
        # openTSNE calls this before each of its two phases, and counts iterations from 1 in each.
        self._phase_start = next(self._phase_starts)

    def __call__(self, iteration: int, error: float, embedding) -> bool:
        now = time.monotonic()
        if now - self._sent_at >= MIN_FRAME_SECONDS:
            self._sent_at = now
            # np.array drops the TSNEEmbedding subclass, which would pickle its affinities along.
            self._send((FRAME, self._phase_start + iteration, np.array(embedding, dtype=np.float32)))
        return False


class _EpochSender:
    """The file UMAP's tqdm bar writes to: each "done total" it writes is sent to the parent as a fraction."""

    BAR_FORMAT = "{n} {total}"

    def __init__(self, send):
        self._send = send

    def write(self, text: str) -> None:
        numbers = text.split()
        if len(numbers) == 2 and numbers[1] != "0":
            self._send((PROGRESS, int(numbers[0]) / int(numbers[1])))

    def flush(self) -> None:
        pass


def _tsne(points: np.ndarray, dims: int, seed: int, send) -> np.ndarray:
    """``data._tsne``'s fit, giving the same points (the tests compare them), with its layout sent as it goes."""
    from openTSNE import TSNE

    if points.shape[1] > TSNE_INPUT_DIMS and len(points) > TSNE_INPUT_DIMS:
        points = _pca(points, TSNE_INPUT_DIMS, seed)
    gradient = "fft" if dims == 2 and len(points) >= TSNE_FFT_MIN_POINTS else "bh"
    tsne = TSNE(
        n_components=dims, perplexity=min(30.0, (len(points) - 1) / 3), initialization="pca",
        negative_gradient_method=gradient, random_state=seed,
        n_jobs=-1 if len(points) >= TSNE_PARALLEL_MIN_POINTS else 1,
        early_exaggeration_iter=TSNE_EXAGGERATION_ITERATIONS, n_iter=TSNE_ITERATIONS - TSNE_EXAGGERATION_ITERATIONS,
        callbacks=_FrameSender(send), callbacks_every_iters=FRAME_ITERATIONS[gradient, dims],
    )
    return np.asarray(tsne.fit(points))


def _umap(points: np.ndarray, dims: int, seed: int, send) -> np.ndarray:
    """``data._umap``'s fit, giving the same points, with the share of its epochs done sent as it goes."""
    import umap

    progress = {
        "disable": False, "file": _EpochSender(send), "bar_format": _EpochSender.BAR_FORMAT, "leave": False,
        "mininterval": PROGRESS_SECONDS,
    }
    with warnings.catch_warnings():
        # A fixed random_state makes UMAP single-threaded; it says so on every call, and that is the trade.
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        reducer = umap.UMAP(
            n_components=dims, n_neighbors=min(15, len(points) - 1), random_state=seed, tqdm_kwds=progress
        )
        return reducer.fit_transform(points)


_REPORTING_FITS = {"tsne": _tsne, "umap": _umap}


def _fit(embeddings, method: str, dims: int, seed: int, send) -> np.ndarray:
    """``data.project(embeddings, method, dims, seed)``, its points and its errors, telling ``send`` how it goes."""
    fit = _REPORTING_FITS.get(method)
    if fit is None:
        return project(embeddings, method=method, dims=dims, seed=seed)
    # data.project's checks, with its messages.
    if isinstance(dims, bool) or dims not in (2, 3):
        raise ValueError(f"dims: expected 2 or 3, got {dims!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    return np.ascontiguousarray(fit(_embeddings_array(embeddings), dims, int(seed), send), dtype=np.float32)


def _serve(connection) -> None:
    """The child's loop: fit each request, sending frames or progress on the way, then the points or the error."""
    while True:
        try:
            embeddings, method, dims, seed = connection.recv()
        except EOFError:
            return
        try:
            reply = (POINTS, _fit(embeddings, method, dims, seed, connection.send))
        except Exception as error:  # noqa: BLE001 - the caller raises it as if the fit had run in its process
            reply = (FAILED, error)
        try:
            connection.send(reply)
        except Exception:  # noqa: BLE001 - an error that does not pickle still reaches the caller
            connection.send((FAILED, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))


def _sent(connection) -> list[tuple]:
    """Every message waiting on ``connection`` (at least one: it is ready); EOFError when the child is gone."""
    messages = [connection.recv()]
    while connection.poll():
        messages.append(connection.recv())
    return messages


def _terminate(process) -> None:
    if process.is_alive():
        process.terminate()
        process.join(JOIN_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()


def _end(process, connection) -> None:
    connection.close()
    _terminate(process)


class ProjectionClosed(RuntimeError):
    """What a :meth:`ProjectionProcess.project` call under way raises when :meth:`ProjectionProcess.close`
    ends its process."""


class ProjectionProcess:
    """Runs :func:`cnnviz_widgets.data.project` in a child process that a stop terminates.

    One request at a time (calls from several threads take turns). The child ends with this object, at exit,
    when a checkpoint stops a fit, or on :meth:`close`.
    """

    def __init__(self):
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._process = None
        self._connection = None
        self._finalizer = None
        # Bumped by close(): a request compares it with the value it started with, so a close() that lands
        # anywhere in the request, even before its child exists, ends it.
        self._closes = 0

    def project(
        self,
        embeddings,
        method: str = "pca",
        dims: int = 3,
        seed: int = 0,
        checkpoint: Callable[[float], None] | None = None,
        on_frame: Callable[[np.ndarray, int], None] | None = None,
    ) -> np.ndarray:
        """``data.project(embeddings, method, dims, seed)``, the same points and the same errors.

        checkpoint: called as ``checkpoint(fraction_done)`` every few hundredths of a second while the child
            fits (t-SNE: its iterations, UMAP: its epochs; 0 until the fit reports any); whatever it raises
            terminates the child and propagates (e.g. a task's ``Cancelled``).
        on_frame: for t-SNE, called as ``on_frame(points, iteration)`` with the layout after ``iteration`` of
            ``TSNE_ITERATIONS``: float32 ``(N, dims)`` in t-SNE's own units, which grow as the fit goes. It
            runs in the caller's thread, between checkpoints, and should be quick: the child waits for each
            large frame to be read. Of the frames that came while it ran, only the newest is passed on.
        Raises :class:`ProjectionClosed` when :meth:`close` is called before the child replies.
        """
        if method in IN_PROCESS_METHODS:
            return project(embeddings, method=method, dims=dims, seed=seed)
        if hasattr(embeddings, "detach"):
            # A pickled tensor would travel through shared memory set up by torch; an array is plain bytes.
            embeddings = embeddings.detach().cpu().numpy()
        with self._lock:
            closes = self._closes
            try:
                kind, value = self._request((embeddings, method, dims, seed), method, checkpoint, on_frame, closes)
            except BaseException:
                self._stop()
                raise
        if kind == FAILED:
            raise value
        return value

    @property
    def running(self) -> bool:
        """Whether a child process is alive (idle or fitting)."""
        return self._process is not None and self._process.is_alive()

    def close(self) -> None:
        """End the child process now, without waiting for a fit under way (its :meth:`project` call raises
        :class:`ProjectionClosed`); when this returns, the child is gone. A later request starts a new process.
        Not to be called from a checkpoint: it waits for the request under way to give up."""
        self._closes += 1
        process = self._process
        if process is not None:
            _terminate(process)
        with self._lock:
            self._stop()

    def _request(self, request, method: str, checkpoint, on_frame, closes: int):
        """Send ``request`` to the child, pass on its frames and progress, and return its ``(kind, value)`` reply."""
        process, connection = self._started()
        try:
            connection.send(request)
        except OSError as error:
            if self._closes != closes:
                raise ProjectionClosed(f"project: close() ended the {method} process") from error
            raise
        done = 0.0
        while True:
            if self._closes != closes:
                raise ProjectionClosed(f"project: close() ended the {method} fit under way")
            ready = multiprocessing.connection.wait([connection, process.sentinel], POLL_SECONDS)
            ended = process.sentinel in ready
            if connection in ready:
                try:
                    messages = _sent(connection)
                except EOFError:
                    messages, ended = [], True  # the child ended without replying: its exit is reported below
                frame = None
                for kind, *payload in messages:
                    if kind in (POINTS, FAILED):
                        return kind, payload[0]
                    if kind == FRAME:
                        frame = payload
                        done = payload[0] / TSNE_ITERATIONS
                    else:
                        done = payload[0]
                if frame is not None and on_frame is not None:
                    iteration, points = frame
                    on_frame(points, iteration)
            if ended:
                process.join(JOIN_SECONDS)
                if self._closes != closes:
                    raise ProjectionClosed(f"project: close() ended the {method} fit under way")
                raise RuntimeError(f"project: the {method} process ended with exit code {process.exitcode}")
            if checkpoint is not None:
                checkpoint(done)

    def _started(self):
        if self._process is None or not self._process.is_alive():
            self._stop()
            ours, theirs = self._context.Pipe()
            process = self._context.Process(target=_serve, args=(theirs,), name=PROCESS_NAME, daemon=True)
            process.start()
            theirs.close()
            self._process, self._connection = process, ours
            self._finalizer = weakref.finalize(self, _end, process, ours)
        return self._process, self._connection

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._process = self._connection = self._finalizer = None
