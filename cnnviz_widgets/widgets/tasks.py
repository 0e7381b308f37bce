"""Run a panel's work off the kernel's main thread, latest request first.

The kernel handles widget messages on its main thread; a Grad-CAM or an occlusion map computed there would
freeze every slider until it is done. Each panel owns one :class:`TaskRunner`: a single worker thread that
always takes the newest request. A request that arrives while an older one runs marks the older one
superseded; the older one stops at its next checkpoint and its result is never shown. A task's
:meth:`Task.checkpoint` is the protocol of :mod:`cnnviz_widgets.checkpoint`: hand it to any long method.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from ..checkpoint import Cancelled

__all__ = ["Cancelled", "Task", "TaskRunner"]

JOIN_SECONDS = 5.0


class Task:
    """One request: ``work(task)`` runs on the worker; it reports progress and lets itself be stopped."""

    def __init__(self, work: Callable[["Task"], Any], apply: Callable[[Any], None], on_progress):
        self.work = work
        self.apply = apply
        self._on_progress = on_progress
        self._stop = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def cancel(self) -> None:
        self._stop.set()

    def checkpoint(self, fraction: float | None = None, partial=None) -> None:
        """Stop here if cancelled; otherwise report ``fraction`` (0..1) of the work done, when given.
        ``partial`` (the methods' result so far) is for the panel that shows it: it wraps this checkpoint."""
        if self._stop.is_set():
            raise Cancelled
        if fraction is not None and self._on_progress is not None:
            self._on_progress(min(max(float(fraction), 0.0), 1.0))


class TaskRunner:
    """A worker thread that runs the newest submitted task and applies its result if nothing newer came.

    on_progress(fraction): called from the worker as a long task advances.
    on_error(exception): called when a task fails; the runner keeps serving later requests.
    on_state(running): called with True when a task starts and False when the runner falls idle.
    """

    def __init__(self, on_progress=None, on_error=None, on_state=None):
        self._on_progress = on_progress
        self._on_error = on_error
        self._on_state = on_state
        self._condition = threading.Condition()
        self._pending: Task | None = None
        self._current: Task | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._retiring = False
        self.finished = 0

    def submit(self, work: Callable[[Task], Any], apply: Callable[[Any], None]) -> Task:
        """Queue ``work``; ``apply(result)`` runs on the worker once it is done, unless superseded."""
        task = Task(work, apply, self._on_progress)
        with self._condition:
            if self._closed:
                raise RuntimeError("this panel is closed; make a new one")
            if self._pending is not None:
                self._pending.cancel()
            if self._current is not None:
                self._current.cancel()
            self._pending = task
            self._retiring = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="cnnviz-panel-task", daemon=True)
                self._thread.start()
            self._condition.notify_all()
        return task

    def cancel(self) -> None:
        """Stop the running task and drop the queued one."""
        with self._condition:
            for task in (self._pending, self._current):
                if task is not None:
                    task.cancel()
            self._pending = None

    def retire(self) -> None:
        """Stop the running task, drop the queued one and end the worker thread now, without waiting for it
        to idle out; a later :meth:`submit` starts a new one (a dashboard nobody sees any more)."""
        with self._condition:
            for task in (self._pending, self._current):
                if task is not None:
                    task.cancel()
            self._pending = None
            self._retiring = True
            self._condition.notify_all()

    def close(self) -> None:
        """Stop the running task, drop the queued one and end the worker thread (waits for it to go)."""
        with self._condition:
            self._closed = True
            for task in (self._pending, self._current):
                if task is not None:
                    task.cancel()
            self._pending = None
            thread = self._thread
            self._condition.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_SECONDS)

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def busy(self) -> bool:
        with self._condition:
            return self._pending is not None or self._current is not None

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until no task is queued or running; False if ``timeout`` seconds pass first."""
        with self._condition:
            return self._condition.wait_for(lambda: self._pending is None and self._current is None, timeout)

    def _serve(self) -> None:
        while True:
            with self._condition:
                # Idle workers exit; the next submit starts a fresh one, so panels that are closed cost nothing.
                if not self._condition.wait_for(
                    lambda: self._pending is not None or self._closed or self._retiring, timeout=30.0
                ) or ((self._closed or self._retiring) and self._pending is None):
                    self._thread = None
                    self._condition.notify_all()
                    return
                task, self._pending, self._current = self._pending, None, self._pending
            self._notify_state(True)
            try:
                result = task.work(task)
                with self._condition:
                    superseded = task.cancelled
                if not superseded:
                    task.apply(result)
            except Cancelled:
                pass
            except Exception as error:  # noqa: BLE001 - any failure is shown in the panel, which keeps working
                if self._on_error is not None and not task.cancelled:
                    self._on_error(error)
            finally:
                with self._condition:
                    self._current = None
                    self.finished += 1
                    idle = self._pending is None
                    self._condition.notify_all()
                if idle:
                    self._notify_state(False)

    def _notify_state(self, running: bool) -> None:
        if self._on_state is not None:
            self._on_state(running)
