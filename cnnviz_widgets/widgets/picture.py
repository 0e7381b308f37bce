"""A PNG picture that reports where it is clicked or dragged.

``ipywidgets.Image`` shows a PNG but tells the kernel nothing about the pointer. The feature-map grid (click a
map to enlarge it), the live occluder (drag the patch) and the galleries (click a picture to select it) need
that, and nothing more: this widget is ``ipywidgets.Image`` plus a ``pointer`` trait.
"""

from __future__ import annotations

import anywidget
import traitlets

_ESM = """
function render({ model, el }) {
  const picture = document.createElement("img");
  picture.className = "cnnviz-picture";
  picture.draggable = false;
  el.appendChild(picture);
  let address = null;
  let pressed = false;
  let serial = 0;
  let frame = null;

  function paint() {
    const data = model.get("value");
    const next = URL.createObjectURL(new Blob([data], { type: "image/png" }));
    picture.src = next;
    if (address) URL.revokeObjectURL(address);
    address = next;
  }
  function style() {
    const width = model.get("width");
    picture.style.width = width > 0 ? `${width}px` : "";
    picture.style.imageRendering = model.get("pixelated") ? "pixelated" : "auto";
    picture.style.cursor = model.get("drag") ? "move" : "pointer";
    picture.classList.toggle("cnnviz-picture-highlighted", model.get("highlighted"));
    picture.title = model.get("hint");
  }
  function send(event, kind) {
    const box = picture.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) return;
    const x = Math.min(Math.max((event.clientX - box.left) / box.width, 0), 1);
    const y = Math.min(Math.max((event.clientY - box.top) / box.height, 0), 1);
    serial += 1;
    model.set("pointer", { x, y, kind, serial });
    model.save_changes();
  }
  picture.addEventListener("pointerdown", (event) => {
    pressed = true;
    picture.setPointerCapture(event.pointerId);
    send(event, "press");
  });
  picture.addEventListener("pointermove", (event) => {
    if (!pressed || !model.get("drag") || frame !== null) return;
    // One message per animation frame: a drag must not flood the kernel with positions it cannot keep up with.
    frame = requestAnimationFrame(() => {
      frame = null;
      send(event, "drag");
    });
  });
  const release = () => { pressed = false; };
  picture.addEventListener("pointerup", release);
  picture.addEventListener("pointercancel", release);

  model.on("change:value", paint);
  model.on("change:width change:pixelated change:drag change:highlighted change:hint", style);
  paint();
  style();
  return () => { if (address) URL.revokeObjectURL(address); };
}
export default { render };
"""

_CSS = """
.cnnviz-picture { display: block; max-width: 100%; touch-action: none; user-select: none;
  border: 3px solid transparent; border-radius: 3px; box-sizing: content-box; }
.cnnviz-picture-highlighted { border-color: var(--jp-brand-color1, #1976d2); }
"""


class ClickablePicture(anywidget.AnyWidget):
    """A PNG (``value``, bytes) shown at ``width`` CSS pixels; ``pointer`` holds the last press or drag.

    pointer: ``{"x": 0..1, "y": 0..1, "kind": "press" | "drag", "serial": n}``, fractions of the picture's
        width and height from its top-left corner.
    drag: also report positions while the button is held and the pointer moves.
    hint: the hover text (``tooltip`` would be ipywidgets' own, whose view expects a ``description`` trait).
    """

    _esm = _ESM
    _css = _CSS
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
