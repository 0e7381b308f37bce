"""What every panel has: a caption, the shared controls, a message area, progress and stop, Save as PNG.

A panel holds traits and wiring; it asks its :class:`~cnnviz_widgets.session.Session` for numbers and
:mod:`cnnviz_widgets.render` for pictures, and does both on its :class:`~.tasks.TaskRunner`'s thread.
"""

from __future__ import annotations

import functools
import re
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import ipywidgets as widgets
import traitlets

from .. import render
from ..session import Session
from . import drawing
from .picture import ClickablePicture
from .presence import Presence
from .tasks import TaskRunner

PICKER_PAGE = 10
PREFETCH_YIELD_S = 0.01
COLORMAPS = ("jet", "viridis", "inferno", "turbo", "magma")


def shows_errors(method):
    """For handlers run on the kernel's main thread: a failure becomes the panel's message, not a traceback."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the panel shows it and stays usable
            self.show_error(error)
            return None

    return guarded


def readable(error: BaseException) -> str:
    """The message a user should read: our ValueErrors/TypeErrors already say what to change."""
    if isinstance(error, (ValueError, TypeError, KeyError)):
        return str(error).strip("'\"")
    return f"{type(error).__name__}: {error}"


class ImagePicker(widgets.VBox):
    """Thumbnails of the images, a page at a time; ``index`` is the image chosen (click a thumbnail)."""

    index = traitlets.Int(0)

    def __init__(self, session: Session, page_size: int = PICKER_PAGE, **kwargs):
        self.session = session
        self.page_size = page_size
        self._slots = [ClickablePicture(width=render.THUMBNAIL_SIDE) for _ in range(min(page_size, session.count))]
        for position, slot in enumerate(self._slots):
            slot.on_point(lambda x, y, kind, position=position: self._choose(position))
        self._page = 0
        self.previous = widgets.Button(icon="chevron-left", tooltip="previous images", layout=widgets.Layout(width="36px"))
        self.next = widgets.Button(icon="chevron-right", tooltip="next images", layout=widgets.Layout(width="36px"))
        self.previous.on_click(lambda _: self._turn(-1))
        self.next.on_click(lambda _: self._turn(1))
        self.label = widgets.HTML()
        paging = [self.previous, self.next] if session.count > page_size else []
        row = widgets.HBox([*paging, *self._slots], layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        super().__init__([row, self.label], **kwargs)
        self.add_class("cnnviz-image-picker")
        self._show_page()

    @property
    def pages(self) -> int:
        return -(-self.session.count // self.page_size)

    def _turn(self, step: int) -> None:
        self._page = (self._page + step) % self.pages
        self._show_page()

    def _choose(self, position: int) -> None:
        index = self._page * self.page_size + position
        if index < self.session.count:
            self.index = index

    def _show_page(self) -> None:
        start = self._page * self.page_size
        for position, slot in enumerate(self._slots):
            index = start + position
            visible = index < self.session.count
            slot.layout.visibility = "visible" if visible else "hidden"
            if visible:
                slot.value = render.thumbnail(self.session.pictures[index])
                slot.hint = self.session.names[index]
                slot.highlighted = index == self.index
        self._label()

    def _label(self) -> None:
        name = self.session.names[self.index]
        self.label.value = f"<span style='font-size:12px'>image <b>{drawing.escape(name)}</b> ({self.index + 1} of {self.session.count})</span>"

    @traitlets.validate("index")
    def _check_index(self, proposal):
        return self.session.check_index(proposal["value"])

    @traitlets.observe("index")
    def _follow(self, change) -> None:
        page = change["new"] // self.page_size
        if page != self._page:
            self._page = page
            self._show_page()
            return
        start = self._page * self.page_size
        for position, slot in enumerate(self._slots):
            slot.highlighted = start + position == change["new"]
        self._label()


class ClassChooser(widgets.Dropdown):
    """Every class, most probable first for the current image, with names and percentages."""

    def __init__(self, session: Session, description: str = "class", **kwargs):
        self.session = session
        kwargs.setdefault("layout", widgets.Layout(width="340px"))
        kwargs.setdefault("style", {"description_width": "initial"})
        super().__init__(description=description, **kwargs)
        self.add_class("cnnviz-class-chooser")

    def rank_for(self, index: int, keep=None, rank: int = 0) -> None:
        """Reorder for image ``index``; keep class ``keep`` selected if given, else take the ``rank``-th most probable."""
        ranked = self.session.ranked_classes(index)
        names = self.session.class_names
        options = [(drawing.probability_label(names[k] if k < len(names) else f"class {k}", p), k) for k, p in ranked]
        value = keep if keep is not None else ranked[min(rank, len(ranked) - 1)][0]
        # New options reset the selection to the first one; the wanted class is set right after.
        self.options = options
        self.value = value


class LayerChooser(widgets.Dropdown):
    """The layers shown as maps (conv layers, a transformer's blocks) in forward order, each with its maps' shape."""

    def __init__(self, session: Session, description: str = "layer", layers=None, **kwargs):
        """layers: ``[(name, (C, h, w))]`` to offer, by default every layer of ``session.conv_layers()``."""
        kwargs.setdefault("layout", widgets.Layout(width="420px"))
        layers = session.conv_layers() if layers is None else layers
        options = [(f"{name}  ({' × '.join(str(size) for size in shape)})", name) for name, shape in layers]
        super().__init__(options=options, description=description, **kwargs)
        self.add_class("cnnviz-layer-chooser")


class TaskBar(widgets.HBox):
    """Progress of the panel's long work, with a Stop button; hidden while nothing long runs."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="240px"))
        self.stop = widgets.Button(description="Stop", icon="stop", button_style="warning", layout=widgets.Layout(width="90px"))
        self.status = widgets.HTML()
        super().__init__([self.progress, self.stop, self.status], layout=widgets.Layout(display="none", align_items="center"))
        self.stop.add_class("cnnviz-stop")
        self.add_class("cnnviz-task-bar")
        self._text, self._count, self._unit, self._started = "", None, "images", clock()

    def running(self, text: str, count: int | None = None, unit: str = "images") -> None:
        """Show ``text``; with ``count``, progress also reads as items done, items per second and time left."""
        self._text, self._count, self._unit = text, count, unit
        self._started = self._clock()
        self.progress.value = 0.0
        self.status.value = f"<span style='font-size:12px'>{drawing.escape(text)}</span>"
        self.layout.display = "flex"

    def advance(self, fraction: float) -> None:
        self.progress.value = fraction
        if not self._count or fraction <= 0:
            return
        elapsed = self._clock() - self._started
        done = round(fraction * self._count)
        left = elapsed * (1 - fraction) / fraction
        self.status.value = (
            f"<span style='font-size:12px'>{drawing.escape(self._text)} {done:,} of {self._count:,} · "
            f"{done / max(elapsed, 1e-6):,.0f} {self._unit}/s · {drawing.duration(left)} left</span>"
        )

    def done(self) -> None:
        self.layout.display = "none"


class Panel(widgets.VBox):
    """Base of every panel: construct with a model and images, or with a shared ``session=``.

    images: pictures (PIL or uint8 arrays; a list or a ``{name: picture}`` dict) or a tensor ``(N, C, H, W)``.
    preprocess: picture -> model input, e.g. ``weights.transforms()``.
    output: a callable from the model's output to its logits, for models that return something else than a
        tensor, a tuple or an object with ``.logits``.
    The panel computes on a private replica of the model, never on the model itself; when the model's
    weights change (the user trains it), the panel says so and recomputes what it shows.
    active: whether the panel is on screen; the dashboard keeps hidden tabs inactive (see :meth:`set_active`).
    Errors show in the panel (``error`` holds the message); ``save(path)`` writes the view as PNG.
    """

    title = "Panel"
    caption = ""
    image = traitlets.Int(0, help="index of the current image")

    def __init__(
        self,
        model=None,
        images=None,
        preprocess=None,
        class_names=None,
        labels=None,
        *,
        output=None,
        cache=None,
        cache_size=None,
        session=None,
        active=True,
    ):
        self._owns_session = session is None
        if session is None:
            if model is None or images is None:
                raise TypeError(f"{type(self).__name__}: give a model and images (or a shared session=)")
            session = Session(
                model, images, preprocess=preprocess, class_names=class_names, labels=labels, output=output, cache=cache,
                cache_size=cache_size,
            )
        self.session = session
        self.message = widgets.HTML(layout=widgets.Layout(display="none"))
        self.note = widgets.HTML(layout=widgets.Layout(display="none"))
        self.task_bar = TaskBar()
        self.save_button = widgets.Button(description="Save PNG", icon="download", tooltip="save the view as a PNG file")
        self.saved = widgets.HTML()
        self.save_button.on_click(lambda _: self._save_clicked())
        self.runner = TaskRunner(on_error=self.show_error)
        self.long_runner = TaskRunner(
            on_progress=self._progress, on_error=self.show_error, on_state=lambda running: None if running else self.task_bar.done()
        )
        self.prefetcher = TaskRunner()
        self.task_bar.stop.on_click(lambda _: self.stop())
        self._apply_lock = threading.Lock()
        self._settling = 0
        self._active = active
        self._deferred_view = None
        self._deferred_long = None
        self._said_not_kept = False
        header = widgets.HTML(
            f"<div style='font-size:14px'><b>{drawing.escape(self.title)}</b> — {drawing.escape(self.caption)}</div>"
        )
        footer = widgets.HBox([self.save_button, self.saved], layout=widgets.Layout(align_items="center"))
        # A panel on its own follows whether anyone sees it; in a dashboard, the dashboard does.
        self.presence = (
            Presence(self.session, self.weights_changed, self.pause, lambda: self.set_active(True)) if self._owns_session else None
        )
        shown_alone = [self.presence] if self.presence is not None else []
        super().__init__([header, *self._build(), self.task_bar, self.note, self.message, footer, *shown_alone])
        self.add_class("cnnviz-panel")
        self.add_class(f"cnnviz-panel-{self.slug}")
        self._start()
        if self._owns_session:
            self.session.watch(self.weights_changed)

    def pause(self) -> None:
        """Stop the panel's work and end its threads; requests made meanwhile wait for :meth:`set_active`."""
        self._active = False
        for runner in (self.prefetcher, self.runner, self.long_runner):
            runner.retire()
        self.task_bar.done()

    def weights_changed(self, generation: int, whose: str = "model") -> None:
        """The user's model (or the ``whose`` it names) has new weights: say so, and recompute what the panel shows."""
        self.note.value = (
            "<div class='cnnviz-note' style='background:#e3f2fd;color:#0d47a1;padding:4px 10px;font-size:12px'>"
            f"the {whose}'s weights changed (update {generation}): the views were recomputed</div>"
        )
        self.note.layout.display = "block"
        self.recompute()

    def _then_say_not_kept(self, apply):
        """``apply``, then, once per panel, why the pass's results are not kept on disk if they are not."""

        def applied(result) -> None:
            apply(result)
            reason = self.session.dataset_pass.not_kept
            if reason is not None and not self._said_not_kept:
                self._said_not_kept = True
                self.note.value = (
                    "<div class='cnnviz-note' style='background:#fff8e1;color:#6d4c00;padding:4px 10px;font-size:12px'>"
                    f"the results of the pass over the images are not kept on disk: {drawing.escape(reason)}</div>"
                )
                self.note.layout.display = "block"

        return applied

    def recompute(self) -> None:
        """Compute again everything shown (after the model changed)."""
        self.refresh()

    def refresh(self) -> None:
        """Compute the panel's view for its current settings."""
        raise NotImplementedError

    def _build(self) -> list[widgets.Widget]:
        """The panel's own controls and views, top to bottom."""
        raise NotImplementedError

    def _start(self) -> None:
        """Link the controls to the panel's traits and show the first view (the widget exists by now)."""
        raise NotImplementedError

    def picture(self) -> bytes:
        """PNG of what the panel shows, for Save as PNG."""
        raise NotImplementedError

    @contextmanager
    def settling(self, then=None):
        """Change several controls at once: each control's observer would ask for a view; inside the block
        those requests are dropped, and one ``then()`` (by default :meth:`refresh`) follows the block."""
        self._settling += 1
        try:
            yield
        finally:
            self._settling -= 1
        if not self._settling:
            (then or self.refresh)()

    def request(self, work, apply) -> None:
        """Compute ``work()`` off the main thread and show it with ``apply(result)``; newer requests win.

        A hidden panel (a dashboard tab not shown) keeps only the newest request and runs it when shown: the
        shared image, class and layer change every tab, and only the one on screen should use the CPU.
        """
        if self._settling:
            return
        if not self._active:
            self._deferred_view = (work, apply)
            return
        self.clear_error()
        self.runner.submit(lambda task: self._under_one_look(work), lambda result: self._apply(apply, result))

    def prefetch(self, computations) -> None:
        """Fill the caches with what the user is likely to ask for next (e.g. the other top classes).

        Runs one computation at a time on its own thread, always after the panel's own requests: a change
        of control waits for at most one prefetched computation. A newer prefetch replaces this one; a
        hidden panel prefetches nothing.
        """
        if not self._active:
            return

        def work(task) -> None:
            for compute in computations:
                while self.runner.busy:
                    task.checkpoint()
                    time.sleep(PREFETCH_YIELD_S)
                task.checkpoint()
                self._under_one_look(compute)

        self.prefetcher.submit(work, lambda result: None)

    def request_long(self, text: str, work, apply, count: int | None = None) -> None:
        """Like :meth:`request` for work that takes seconds: ``work(task)`` reports progress and can be stopped.

        count: how many images the work reads, for a rate and a time left beside the progress bar.
        A hidden panel keeps only the newest such request and runs it when shown, as :meth:`request` does.
        """
        if self._settling:
            return
        if not self._active:
            self._deferred_long = (text, work, apply, count)
            return
        self.clear_error()
        self.task_bar.running(text, count)
        self.long_runner.submit(
            lambda task: self._under_one_look(lambda: work(task)), lambda result: self._apply(self._then_say_not_kept(apply), result)
        )

    def _under_one_look(self, work):
        """``work()`` with one look at the user's weights for everything it asks the session: a repaint that
        draws two Grad-CAMs and the class ranking reads the weights' checksums once, not three times."""
        with self.session.replicas.request():
            return work()

    def set_active(self, active: bool) -> None:
        """Whether the panel is on screen; a panel shown again runs the work it put off."""
        self._active = active
        if active and self._deferred_view is not None:
            deferred, self._deferred_view = self._deferred_view, None
            self.request(*deferred)
        if active and self._deferred_long is not None:
            deferred, self._deferred_long = self._deferred_long, None
            self.request_long(*deferred)

    def _apply(self, apply, result) -> None:
        with self._apply_lock, self.hold_sync():
            apply(result)

    def _progress(self, fraction: float) -> None:
        self.task_bar.advance(fraction)

    def stop(self) -> None:
        """Stop the long work under way; the panel keeps what it showed before."""
        self.long_runner.cancel()
        self.task_bar.done()

    def wait(self, timeout: float = 120.0) -> bool:
        """Block until every requested view is shown (for scripts and tests); False on timeout."""
        return self.runner.wait(timeout) and self.long_runner.wait(timeout) and self.runner.wait(timeout)

    def wait_prefetched(self, timeout: float = 120.0) -> bool:
        """Block until the caches hold what the panel prefetches (tests measuring cached repaints)."""
        return self.wait(timeout) and self.prefetcher.wait(timeout)

    def show_error(self, error: BaseException) -> None:
        """Show ``error`` in the panel: its message, and its traceback folded under it."""
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.message.value = (
            "<div class='cnnviz-error' style='background:#fdecea;color:#b71c1c;border-left:4px solid #b71c1c;padding:6px 10px;font-size:13px'>"
            f"{drawing.escape(readable(error))}"
            "<details style='font-size:11px;color:#555'><summary>details</summary>"
            f"<pre style='white-space:pre-wrap;margin:0'>{drawing.escape(details)}</pre></details></div>"
        )
        self.message.layout.display = "block"

    def clear_error(self) -> None:
        if self.message.layout.display != "none":
            self.message.layout.display = "none"
            self.message.value = ""

    @property
    def error(self) -> str:
        """The message shown in the panel (HTML, traceback included), or '' when all is well."""
        return "" if self.message.layout.display == "none" else self.message.value

    def close(self) -> None:
        """Stop the panel's threads and child processes, free its caches, and close the widget."""
        # A panel whose construction failed (bad input) is closed by the garbage collector: close what exists.
        for name in ("prefetcher", "runner", "long_runner"):
            if hasattr(self, name):
                getattr(self, name).close()
        if getattr(self, "presence", None) is not None:
            self.presence.close()
        if getattr(self, "_owns_session", False) and hasattr(self, "session"):
            self.session.close()
        super().close()

    @property
    def threads_alive(self) -> bool:
        """Whether any of the panel's worker threads still runs."""
        return any(runner.alive for runner in (self.prefetcher, self.runner, self.long_runner))

    def save(self, path=None) -> Path:
        """Write what the panel shows to ``path`` (default: ``<panel>-<image>.png`` here) and return the path."""
        if path is None:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.session.names[self.image])
            path = f"{self.slug}-{name}.png"
        picture = self.picture()
        if not picture:
            raise ValueError(f"{self.title}: nothing is shown yet, so there is nothing to save")
        path = Path(path)
        path.write_bytes(picture)
        return path

    def _save_clicked(self) -> None:
        try:
            path = self.save()
        except Exception as error:  # noqa: BLE001 - a failed save is a message, not a traceback
            self.show_error(error)
            return
        self.saved.value = f"<span style='font-size:12px'>saved to {drawing.escape(path.resolve())}</span>"

    @property
    def slug(self) -> str:
        """The panel's title in lower case with dashes: file names and CSS classes."""
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    @traitlets.validate("image")
    def _check_image(self, proposal):
        return self.session.check_index(proposal["value"])

    def check_target(self, target: int) -> int:
        """A class index of the model; anything else raises a TraitError giving the valid range."""
        if not 0 <= target < self.session.num_classes:
            raise traitlets.TraitError(f"target: class {target} out of range 0..{self.session.num_classes - 1}")
        return target

    def check_layer(self, layer) -> str:
        """The dotted name of a layer shown as maps; anything else raises a TraitError naming the closest layers."""
        try:
            name = self.session.layer_name(layer)
        except (TypeError, ValueError) as error:
            raise traitlets.TraitError(str(error)) from None
        if name not in dict(self.session.conv_layers()):
            raise traitlets.TraitError(
                f"layer: {name!r} is not a layer of the model shown as maps; choose one from the layer list"
            )
        return name
