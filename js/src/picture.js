// ClickablePicture: an <img> showing PNG bytes that reports where it is pressed or dragged, as fractions of
// its width and height, so the kernel can map a click to a feature map, a patch position or a gallery item.
import "./picture.css";
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
