// Presence: an invisible view that tells the kernel when it is put on a page and when it is taken off. A
// dashboard whose every view was taken off (its cell run again, its output cleared) stops working for nobody.
function render({ model, el }) {
  el.style.display = "none";
  model.send({ event: "shown" });
  return () => model.send({ event: "removed" });
}

export default { render };
