"""Projections that can be stopped mid-fit: t-SNE and UMAP run in a child process, killed on request.

A t-SNE or UMAP fit spends its time in compiled code that does not return to Python before it is done, so a
thread running it cannot be interrupted: the user would wait for a fit they no longer want. A child process can
be terminated at once. The child is started with "spawn" because the kernel runs threads, and a forked copy of
a process with threads can deadlock on a lock some other thread held at the fork.

The child outlives one request: starting it imports torch and scikit-learn, and UMAP compiles its numba code on
the first fit of a process. A stop or :meth:`ProjectionProcess.close` ends it; the next request starts a new
one. PCA takes about a second even at 70,000 points, so it runs in the caller's process.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import threading
import weakref
from typing import Callable

import numpy as np

from .data import project

IN_PROCESS_METHODS = ("pca",)
# How often the caller's checkpoint runs while the child fits: the delay between a stop and the kill.
POLL_SECONDS = 0.05
JOIN_SECONDS = 2.0
PROCESS_NAME = "cnnviz-projection"


def _serve(connection) -> None:
    """The child's loop: project each request and send back the points, or the error it raised."""
    while True:
        try:
            embeddings, method, dims, seed = connection.recv()
        except EOFError:
            return
        try:
            reply = (True, project(embeddings, method=method, dims=dims, seed=seed))
        except Exception as error:  # noqa: BLE001 - the caller raises it as if the fit had run in its process
            reply = (False, error)
        try:
            connection.send(reply)
        except Exception:  # noqa: BLE001 - an error that does not pickle still reaches the caller
            connection.send((False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))


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
        self, embeddings, method: str = "pca", dims: int = 3, seed: int = 0, checkpoint: Callable[[], None] | None = None
    ) -> np.ndarray:
        """``data.project(embeddings, method, dims, seed)``, the same points and the same errors.

        checkpoint: called every few hundredths of a second while the child fits; whatever it raises
            terminates the child and propagates (e.g. a task's ``Cancelled``).
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
                succeeded, value = self._request((embeddings, method, dims, seed), method, checkpoint, closes)
            except BaseException:
                self._stop()
                raise
        if not succeeded:
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

    def _request(self, request, method: str, checkpoint, closes: int):
        """Send ``request`` to the child and wait for its ``(succeeded, value)`` reply."""
        process, connection = self._started()
        try:
            connection.send(request)
        except OSError as error:
            if self._closes != closes:
                raise ProjectionClosed(f"project: close() ended the {method} process") from error
            raise
        while True:
            if self._closes != closes:
                raise ProjectionClosed(f"project: close() ended the {method} fit under way")
            ready = multiprocessing.connection.wait([connection, process.sentinel], POLL_SECONDS)
            if connection in ready:
                try:
                    return connection.recv()
                except EOFError:
                    pass  # the child ended without replying: its exit is reported below
            if ready:
                process.join(JOIN_SECONDS)
                if self._closes != closes:
                    raise ProjectionClosed(f"project: close() ended the {method} fit under way")
                raise RuntimeError(f"project: the {method} process ended with exit code {process.exitcode}")
            if checkpoint is not None:
                checkpoint()

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
