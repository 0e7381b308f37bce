"""A PNG picture that reports where it is clicked or dragged.

``ipywidgets.Image`` shows a PNG but tells the kernel nothing about the pointer. The feature-map grid (click a
map to enlarge it), the live occluder (drag the patch) and the galleries (click a picture to select it) need
that, and nothing more: this widget is ``ipywidgets.Image`` plus a ``pointer`` trait.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import traitlets

STATIC = Path(__file__).parent.parent / "static"


class ClickablePicture(anywidget.AnyWidget):
    """A PNG (``value``, bytes) shown at ``width`` CSS pixels; ``pointer`` holds the last press or drag.

    pointer: ``{"x": 0..1, "y": 0..1, "kind": "press" | "drag", "serial": n}``, fractions of the picture's
        width and height from its top-left corner.
    drag: also report positions while the button is held and the pointer moves.
    hint: the hover text (``tooltip`` would be ipywidgets' own, whose view expects a ``description`` trait).
    """

    _esm = STATIC / "picture.js"
    _css = STATIC / "picture.css"
    value = traitlets.Bytes(b"").tag(sync=True)
    width = traitlets.Int(0).tag(sync=True)
    pixelated = traitlets.Bool(False).tag(sync=True)
    drag = traitlets.Bool(False).tag(sync=True)
    highlighted = traitlets.Bool(False).tag(sync=True)
    hint = traitlets.Unicode("", help="text shown when the pointer rests on the picture").tag(sync=True)
    pointer = traitlets.Dict().tag(sync=True)

    def on_point(self, callback) -> None:
        """Call ``callback(x, y, kind)`` on each press (and drag, if enabled)."""

        def forward(change) -> None:
            point = change["new"]
            if point:
                callback(float(point["x"]), float(point["y"]), point.get("kind", "press"))

        self.observe(forward, "pointer")
