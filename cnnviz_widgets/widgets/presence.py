"""Whether anyone still sees a dashboard: the views the browser shows of it, counted.

A cell run again replaces its output, but the kernel keeps the old dashboard (ipywidgets holds every widget
until it is closed, and so does the notebook's output history). Left alone, it would keep following the
model and recompute its visible tab after every change of the weights, for nobody. An invisible
:class:`Presence` widget inside each dashboard hears when its views are put on a page and taken off; once
every view has been gone for :data:`GONE_SECONDS`, the dashboard stops its work, and it resumes if it is
shown again (``dashboard`` displayed in a new cell, the notebook reopened).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import anywidget
import traitlets

STATIC = Path(__file__).parent.parent / "static"
GONE_SECONDS = 2.0
"""How long every view must stay gone before the work stops: a notebook that re-renders an output (a
cell moved, a panel re-attached) takes its view off and puts a new one on within a frame."""


class Presence(anywidget.AnyWidget):
    """Counts the views on screen of the widget it sits in. Once they have all been gone for
    :data:`GONE_SECONDS`, it stops ``listener`` hearing of ``session``'s weights and calls ``pause()``; when a
    view comes back, it calls ``resume()``, listens again, and tells ``listener`` if the weights changed
    meanwhile. A widget never shown is not gone: in a script or a test it works as ever.

    views: how many views of the widget the browser shows now (int, 0 before the first is shown).
    """

    _esm = STATIC / "presence.js"
    views = traitlets.Int(0, help="how many views of the dashboard the browser shows now")

    def __init__(
        self, session, listener: Callable[[int], None], pause: Callable[[], None], resume: Callable[[], None], **kwargs
    ):
        super().__init__(**kwargs)
        self._session = session
        self._listener = listener
        self._pause = pause
        self._resume = resume
        self._paused_at = 0
        self._gone = False
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self.on_msg(self._message)

    @property
    def gone(self) -> bool:
        """Whether every view was taken off and the owner's work stopped."""
        return self._gone

    def _message(self, widget, content, buffers) -> None:
        event = content.get("event") if isinstance(content, dict) else None
        if event == "shown":
            self._shown()
        elif event == "removed":
            self._removed()

    def _shown(self) -> None:
        with self._lock:
            self.views += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            back, self._gone = self._gone, False
        if back:
            self._back()

    def _removed(self) -> None:
        with self._lock:
            self.views = max(self.views - 1, 0)
            if self.views or self._gone:
                return
            self._timer = threading.Timer(GONE_SECONDS, self._check_gone)
            self._timer.daemon = True
            self._timer.start()

    def _check_gone(self) -> None:
        with self._lock:
            self._timer = None
            if self.views or self._gone:
                return
            self._gone = True
        self._session.unwatch(self._listener)
        self._paused_at = self._session.generation
        self._pause()

    def _back(self) -> None:
        self._session.watch(self._listener)
        self._resume()
        self._session.sync()
        if self._session.generation != self._paused_at:
            self._listener(self._session.generation)

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        super().close()
