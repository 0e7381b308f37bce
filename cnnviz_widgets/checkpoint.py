"""The one stop-and-progress protocol every long computation takes.

A computation that lasts longer than a blink (a method of :mod:`cnnviz_widgets.methods` that runs many
passes, a pass over a data set) takes ``checkpoint=``: a callable it calls as
``checkpoint(fraction_done, partial=None)``

- often: between two batches, so that the work stops within about half a second of a request
  (``STOP_WITHIN_SECONDS``) on the demo model, EfficientNet-Lite0, on two CPU cores;
- with ``fraction_done`` in [0, 1], never going back, for a progress bar;
- with ``partial``, where the work has a result so far worth showing (a coarse occlusion map, patterns
  as they emerge), for the panel that draws it. A caller that does not draw it ignores it.

Whatever the checkpoint raises stops the work and reaches the work's caller; the work leaves the model as
it found it. A panel's task raises :class:`Cancelled` when the user presses Stop or asks for something
newer. ``None`` means nobody is watching: :func:`check` and :func:`scaled` take it as it comes, so a method
never tests for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

Checkpoint = Callable[..., None]
"""``checkpoint(fraction_done, partial=None)``: see the module's docstring."""

STOP_WITHIN_SECONDS = 0.5
"""How long a long computation may run between two checkpoints on EfficientNet-Lite0 (one batch of
Score-CAM's masked pictures, of SmoothGrad's noisy copies, one step of a cascade of cheap maps)."""


class Cancelled(Exception):
    """Raised at a checkpoint of work that was cancelled (Stop) or superseded by a newer request."""


def check(checkpoint: Checkpoint | None, fraction: float, partial=None) -> None:
    """Call ``checkpoint(fraction)`` (with ``partial`` when there is one), or nothing when it is None."""
    if checkpoint is None:
        return
    if partial is None:
        checkpoint(fraction)
    else:
        checkpoint(fraction, partial)


def scaled(checkpoint: Checkpoint | None, start: float, end: float) -> Checkpoint | None:
    """The checkpoint of a sub-step that covers ``[start, end]`` of the whole work: the sub-step's fraction
    ``f`` reaches ``checkpoint`` as ``start + f * (end - start)``. None when ``checkpoint`` is None.

    The sub-step's partial results are not passed on: they are the sub-step's (one map of a cascade), not
    the whole work's, and the caller of the whole work would not know what to do with them.
    """
    if checkpoint is None:
        return None
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"start, end: expected 0 <= start <= end <= 1, got {start!r} and {end!r}")
    span = end - start
    return lambda fraction, partial=None: checkpoint(start + min(max(float(fraction), 0.0), 1.0) * span)


@contextmanager
def progress_bar(total: int, description: str, unit: str = "image", then: Checkpoint | None = None) -> Iterator[Checkpoint]:
    """A checkpoint that draws the work's progress as a tqdm bar of ``total`` ``unit`` (the public functions'
    bar, when they run in a notebook cell), then passes the fraction on to ``then``; the bar goes when the
    block ends."""
    with tqdm(total=total, desc=description, unit=unit, leave=False) as bar:

        def checkpoint(fraction: float, partial=None) -> None:
            bar.update(max(round(fraction * total) - bar.n, 0))
            check(then, fraction)

        yield checkpoint
