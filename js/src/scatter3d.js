// Scatter3D: a three.js point cloud for anywidget.
//
// Positions arrive as one float32 buffer (x, y, z per point), colours as one uint8 palette index per point,
// labels and predictions as uint16 class indices, scores as float32, thumbnails as one PNG atlas: a million points cross the
// wire as bytes and live on the GPU as three attributes. Drawing happens only when something changed.
// Hover, click and lasso work in screen space: the points are projected once per camera move into a grid
// of buckets, so each query touches only the points near the pointer.
// Level of detail: while the view turns (drag, wheel, pan), a fixed random subset of `lod_points` points is
// drawn (plus the selected ones), larger; once the view has rested, every point is.
import * as THREE from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
import { STYLE } from "./style.js";
import { ScreenIndex } from "./screen_index.js";
import { colourChoices, scoreLine } from "./colour_choices.js";
import { randomSubset, withAlwaysDrawn } from "./level_of_detail.js";

const NO_CLASS = 65535;
const CAMERA_DISTANCE = 3.2;
const ORTHO_HALF_HEIGHT = 1.15;
const CLICK_TOLERANCE = 5; // pixels the pointer may travel and still count as a click
const HOVER_MIN_RADIUS = 5; // pixels: small points stay easy to hover
const TOOLTIP_THUMBNAIL = 72;
const LASSO_MIN_STEP = 3; // pixels between recorded lasso vertices
// The view rests, and every point is drawn again, once the camera has not moved for this long and for this many
// animation frames: a drag moves the camera once a frame, and on a slow machine one frame may take longer than
// the delay, which must not pass for a rest.
const REST_DELAY = 150; // ms
const REST_FRAMES = 4;
// The sample's points are drawn larger, so that a cluster thinned out to a few percent of its points still
// reads as a blob: up to this factor, and by no more than the square root of the thinning.
const SAMPLE_SIZE_GAIN = 2;

const VERTEX_SHADER = /* glsl */ `
uniform float pointSize;
uniform float pixelRatio;
uniform float flatten;
uniform float attenuate;
uniform float referenceDistance;
uniform float hasSelection;
attribute vec3 pointColour;
attribute float selectedFlag;
varying vec3 vColor;
varying float vSelected;
void main() {
  vec3 p = vec3(position.xy, position.z * (1.0 - flatten));
  vec4 viewPosition = modelViewMatrix * vec4(p, 1.0);
  gl_Position = projectionMatrix * viewPosition;
  float size = pointSize * (selectedFlag > 0.5 ? 1.6 : 1.0);
  // Perspective: nearer points look bigger, which is most of the depth cue a point cloud has.
  if (attenuate > 0.5) size *= referenceDistance / max(-viewPosition.z, 0.05);
  gl_PointSize = clamp(size * pixelRatio, 1.0, 96.0 * pixelRatio);
  vec3 colour = pointColour;
  // While something is selected the rest fades towards the background, so the selection stands out.
  vColor = (hasSelection > 0.5 && selectedFlag < 0.5) ? mix(colour, vec3(1.0), 0.72) : colour;
  vSelected = selectedFlag;
}`;

const FRAGMENT_SHADER = /* glsl */ `
varying vec3 vColor;
varying float vSelected;
void main() {
  vec2 offset = gl_PointCoord * 2.0 - 1.0;
  float radius2 = dot(offset, offset);
  if (radius2 > 1.0) discard;
  vec3 colour = mix(vColor, vColor * 0.72, smoothstep(0.55, 1.0, radius2));
  if (vSelected > 0.5 && radius2 > 0.5) colour = vec3(0.08);
  gl_FragColor = vec4(colour, 1.0);
}`;

function bytesOf(value) {
  if (!value) return new Uint8Array(0);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  return new Uint8Array(0);
}

// Typed views need aligned offsets; a buffer that arrives unaligned is copied once.
function typedView(value, Type) {
  const bytes = bytesOf(value);
  const length = Math.floor(bytes.byteLength / Type.BYTES_PER_ELEMENT);
  if (bytes.byteOffset % Type.BYTES_PER_ELEMENT === 0) return new Type(bytes.buffer, bytes.byteOffset, length);
  return new Type(bytes.slice(0, length * Type.BYTES_PER_ELEMENT).buffer);
}

function element(tag, className, parent, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

// Palette indices -> one RGB triple per point (normalised uint8). Looking colours up here, once per
// recolouring, keeps a texture fetch per point per frame out of the vertex shader.
function pointColours(indices, hexes, count) {
  const table = (hexes.length ? hexes : ["#1f77b4"]).map((hex) => new THREE.Color().setStyle(hex, THREE.NoColorSpace));
  const bytes = table.map((colour) => [colour.r, colour.g, colour.b].map((value) => Math.round(value * 255)));
  const rgb = new Uint8Array(count * 3);
  for (let i = 0; i < count; i++) {
    const [red, green, blue] = bytes[(i < indices.length ? indices[i] : 0) % bytes.length];
    rgb[3 * i] = red;
    rgb[3 * i + 1] = green;
    rgb[3 * i + 2] = blue;
  }
  return rgb;
}

function render({ model, el }) {
  const root = element("div", "cnnviz-scatter3d", el);
  element("style", null, root, STYLE);
  const toolbar = element("div", "cnnviz-scatter3d-toolbar", root);
  const stage = element("div", "cnnviz-scatter3d-stage", root);

  let renderer;
  try {
    // No MSAA: it cannot smooth the discarded edges of round points and triples the cost on software GL.
    // The drawing buffer is kept so that the picture can be read back (saved, copied, tested).
    renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
  } catch (error) {
    element("div", "cnnviz-scatter3d-error", stage, `Scatter3D needs WebGL, which this browser refused: ${error}`);
    return () => root.remove();
  }
  renderer.setPixelRatio(window.devicePixelRatio || 1);
  renderer.setClearColor(0xffffff);
  stage.appendChild(renderer.domElement);

  const legend = element("div", "cnnviz-scatter3d-legend", stage);
  const tooltip = element("div", "cnnviz-scatter3d-tooltip", stage);
  const tooltipCanvas = element("canvas", null, tooltip);
  tooltipCanvas.width = tooltipCanvas.height = TOOLTIP_THUMBNAIL;
  const tooltipText = element("div", "cnnviz-scatter3d-tooltip-text", tooltip);
  const ring = element("div", "cnnviz-scatter3d-ring", stage);
  const lassoSvg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  lassoSvg.setAttribute("class", "cnnviz-scatter3d-lasso");
  const lassoPath = document.createElementNS("http://www.w3.org/2000/svg", "polygon");
  lassoSvg.appendChild(lassoPath);
  stage.appendChild(lassoSvg);

  const scene = new THREE.Scene();
  const perspective = new THREE.PerspectiveCamera(45, 1, 0.01, 100);
  perspective.position.set(CAMERA_DISTANCE * 0.62, CAMERA_DISTANCE * 0.45, CAMERA_DISTANCE * 0.64);
  const orthographic = new THREE.OrthographicCamera(-1, 1, 1, -1, -10, 10);
  orthographic.position.set(0, 0, 5);
  const orbit = new OrbitControls(perspective, renderer.domElement);
  orbit.saveState();
  const pan = new OrbitControls(orthographic, renderer.domElement);
  pan.enableRotate = false;
  pan.screenSpacePanning = true;
  pan.mouseButtons = { LEFT: THREE.MOUSE.PAN, MIDDLE: THREE.MOUSE.DOLLY, RIGHT: THREE.MOUSE.PAN };
  pan.touches = { ONE: THREE.TOUCH.PAN, TWO: THREE.TOUCH.DOLLY_PAN };
  pan.saveState();

  const box = new THREE.LineSegments(
    new THREE.EdgesGeometry(new THREE.BoxGeometry(2, 2, 2)),
    new THREE.LineBasicMaterial({ color: 0xe2e2e2 }),
  );
  scene.add(box);

  const geometry = new THREE.BufferGeometry();
  const material = new THREE.ShaderMaterial({
    vertexShader: VERTEX_SHADER,
    fragmentShader: FRAGMENT_SHADER,
    uniforms: {
      pointSize: { value: 4 },
      pixelRatio: { value: renderer.getPixelRatio() },
      flatten: { value: 0 },
      attenuate: { value: 1 },
      referenceDistance: { value: CAMERA_DISTANCE },
      hasSelection: { value: 0 },
    },
  });
  const cloud = new THREE.Points(geometry, material);
  // Culling needs a bounding sphere, one more pass over every point, and the cloud (centred in the unit
  // cube by the Python side) is in view whenever anything is.
  cloud.frustumCulled = false;
  scene.add(cloud);
  // The subset drawn while turning: the same attribute buffers (uploaded once, shared on the GPU), drawn
  // through an index buffer built once per point set and selection.
  const sampleGeometry = new THREE.BufferGeometry();
  const sampleCloud = new THREE.Points(sampleGeometry, material);
  sampleCloud.frustumCulled = false;
  sampleCloud.visible = false;
  scene.add(sampleCloud);

  const index = new ScreenIndex();
  let positions = new Float32Array(0);
  let count = 0;
  let selectedFlags = new Uint8Array(0);
  let atlas = null;
  let lassoMode = false;
  let lasso = null;
  let press = null;
  let frame = 0;
  let subset = null; // null: every point is drawn, turning or not
  let lastTurn = -Infinity;
  let stillFrames = 0;
  let turnedSinceDraw = false;
  let restFrame = 0; // 0: at rest

  const is2d = () => model.get("view") === "2d";
  const camera = () => (is2d() ? orthographic : perspective);
  const controls = () => (is2d() ? pan : orbit);
  const size = () => ({ width: stage.clientWidth || model.get("width") || 600, height: model.get("height") });

  const turning = () => restFrame !== 0;
  const waitForRest = () => {
    stillFrames++;
    if (stillFrames < REST_FRAMES || performance.now() - lastTurn < REST_DELAY) {
      restFrame = requestAnimationFrame(waitForRest);
      return;
    }
    restFrame = 0;
    if (subset !== null) requestDraw();
  };
  // A frame that follows a camera move always draws the sample, however long the previous frame took: only
  // waitForRest, having seen the view still, brings every point back.
  const draw = () => {
    frame = 0;
    const sampled = subset !== null && (turnedSinceDraw || turning());
    turnedSinceDraw = false;
    cloud.visible = !sampled;
    sampleCloud.visible = sampled;
    const gain = sampled ? Math.min(SAMPLE_SIZE_GAIN, Math.sqrt(count / subset.indices.length)) : 1;
    material.uniforms.pointSize.value = model.get("point_size") * gain;
    renderer.render(scene, camera());
  };
  const requestDraw = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };
  const cameraMoved = () => {
    index.invalidate();
    hideHover();
    requestDraw();
  };
  const cameraTurned = () => {
    lastTurn = performance.now();
    turnedSinceDraw = true;
    stillFrames = 0;
    if (!restFrame) restFrame = requestAnimationFrame(waitForRest);
    cameraMoved();
  };
  orbit.addEventListener("change", cameraTurned);
  pan.addEventListener("change", cameraTurned);

  function setAttribute(name, attribute) {
    geometry.setAttribute(name, attribute);
    sampleGeometry.setAttribute(name, attribute);
  }

  function resize() {
    const { width, height } = size();
    root.style.width = model.get("width") ? `${model.get("width")}px` : "100%";
    stage.style.height = `${height}px`;
    renderer.setSize(width, height);
    perspective.aspect = width / height;
    perspective.updateProjectionMatrix();
    orthographic.left = -ORTHO_HALF_HEIGHT * (width / height);
    orthographic.right = ORTHO_HALF_HEIGHT * (width / height);
    orthographic.top = ORTHO_HALF_HEIGHT;
    orthographic.bottom = -ORTHO_HALF_HEIGHT;
    orthographic.updateProjectionMatrix();
    cameraMoved();
    draw();
  }

  function applyView() {
    const flat = is2d();
    orbit.enabled = !flat && !lassoMode;
    pan.enabled = flat && !lassoMode;
    material.uniforms.flatten.value = flat ? 1 : 0;
    material.uniforms.attenuate.value = flat ? 0 : 1;
    box.visible = !flat;
    for (const button of viewButtons) button.classList.toggle("active", button.dataset.view === model.get("view"));
    cameraMoved();
  }

  function setPoints() {
    positions = typedView(model.get("points"), Float32Array);
    count = Math.floor(positions.length / 3);
    setAttribute("position", new THREE.BufferAttribute(positions, 3));
    geometry.setDrawRange(0, count);
    selectedFlags = new Uint8Array(count);
    setAttribute("selectedFlag", new THREE.BufferAttribute(selectedFlags, 1));
    setSubset();
    setColors();
    setSelection();
    cameraMoved();
  }

  function setColors() {
    const rgb = pointColours(bytesOf(model.get("colors")), model.get("palette"), count);
    setAttribute("pointColour", new THREE.BufferAttribute(rgb, 3, true));
    drawLegend();
    requestDraw();
  }

  function setSubset() {
    const size = model.get("lod_points");
    subset = size > 0 && size < count ? randomSubset(count, size) : null;
    setSampleIndex();
  }

  function setSampleIndex() {
    if (subset === null) {
      sampleGeometry.setIndex(null);
      return;
    }
    sampleGeometry.setIndex(new THREE.BufferAttribute(withAlwaysDrawn(subset, model.get("selected")), 1));
  }

  function setSelection() {
    selectedFlags.fill(0);
    let selectedCount = 0;
    for (const i of model.get("selected")) {
      if (i >= 0 && i < count) {
        selectedFlags[i] = 1;
        selectedCount++;
      }
    }
    geometry.getAttribute("selectedFlag").needsUpdate = true;
    setSampleIndex();
    material.uniforms.hasSelection.value = selectedCount > 0 ? 1 : 0;
    const selection = selectedCount ? ` · ${selectedCount.toLocaleString()} selected` : "";
    status.textContent = `${count.toLocaleString()} points${selection}`;
    requestDraw();
  }

  function sendSelection(indices) {
    model.set("selected", Array.from(indices).sort((a, b) => a - b));
    model.save_changes();
  }

  function select(indices, additive) {
    const chosen = new Set(additive ? model.get("selected") : []);
    for (const i of indices) chosen.add(i);
    sendSelection(chosen);
  }

  function toggle(i) {
    const chosen = new Set(model.get("selected"));
    if (chosen.has(i)) chosen.delete(i);
    else chosen.add(i);
    sendSelection(chosen);
  }

  function drawLegend() {
    legend.replaceChildren();
    const names = model.get("legend");
    const hexes = model.get("palette");
    legend.style.display = names.length ? "" : "none";
    names.forEach((name, slot) => {
      const item = element("div", "cnnviz-scatter3d-legend-item", legend);
      item.title = "click: select these points (shift: add to the selection)";
      element("span", "cnnviz-scatter3d-swatch", item).style.background = hexes[slot % hexes.length];
      element("span", null, item, name);
      item.addEventListener("click", (event) => {
        const colours = bytesOf(model.get("colors"));
        const members = [];
        for (let i = 0; i < colours.length; i++) if (colours[i] === slot) members.push(i);
        select(members, event.shiftKey);
      });
    });
  }

  function nameOf(names, value) {
    if (value === undefined || value === NO_CLASS) return null;
    return value < names.length ? names[value] : String(value);
  }

  function describe(i) {
    const names = model.get("class_names");
    const labels = typedView(model.get("labels"), Uint16Array);
    const predictions = typedView(model.get("predictions"), Uint16Array);
    const label = nameOf(names, labels[i]);
    const predicted = nameOf(names, predictions[i]);
    const lines = [`#${i}`];
    if (label !== null) lines.push(`label: ${label}`);
    if (predicted !== null) {
      const verdict = label === null ? "" : labels[i] === predictions[i] ? " ✓" : " ✗";
      lines.push(`predicted: ${predicted}${verdict}`);
    }
    const scores = typedView(model.get("scores"), Float32Array);
    if (i < scores.length) lines.push(scoreLine(model.get("score_name"), scores[i]));
    return lines;
  }

  function showHover(i, x, y) {
    const [sx, sy] = index.screenPosition(i);
    ring.style.display = "block";
    ring.style.transform = `translate(${sx}px, ${sy}px)`;
    tooltipText.replaceChildren(...describe(i).map((line) => element("div", null, null, line)));
    const thumbnail = model.get("sprite_size");
    tooltipCanvas.style.display = atlas && thumbnail ? "block" : "none";
    if (atlas && thumbnail) {
      const columns = model.get("sprite_columns");
      const context = tooltipCanvas.getContext("2d");
      context.fillStyle = "#fff";
      context.fillRect(0, 0, TOOLTIP_THUMBNAIL, TOOLTIP_THUMBNAIL);
      context.drawImage(atlas, (i % columns) * thumbnail, Math.floor(i / columns) * thumbnail, thumbnail, thumbnail,
        0, 0, TOOLTIP_THUMBNAIL, TOOLTIP_THUMBNAIL);
    }
    tooltip.style.display = "flex";
    const { width, height } = size();
    const left = x + 16 + tooltip.offsetWidth > width ? x - 16 - tooltip.offsetWidth : x + 16;
    const top = y + 16 + tooltip.offsetHeight > height ? y - 16 - tooltip.offsetHeight : y + 16;
    tooltip.style.transform = `translate(${Math.max(0, left)}px, ${Math.max(0, top)}px)`;
  }

  function hideHover() {
    ring.style.display = "none";
    tooltip.style.display = "none";
  }

  function ensureIndex() {
    if (!index.stale) return;
    const { width, height } = size();
    const view = camera();
    view.updateMatrixWorld();
    const matrix = new THREE.Matrix4().multiplyMatrices(view.projectionMatrix, view.matrixWorldInverse);
    index.build(positions, count, matrix.elements, width, height, is2d());
  }

  function pointerPosition(event) {
    const bounds = renderer.domElement.getBoundingClientRect();
    return [event.clientX - bounds.left, event.clientY - bounds.top];
  }

  function hoverRadius() {
    return Math.max(HOVER_MIN_RADIUS, model.get("point_size") / 2 + 2);
  }

  function drawLasso() {
    lassoPath.setAttribute("points", lasso.map(([x, y]) => `${x},${y}`).join(" "));
  }

  const canvas = renderer.domElement;
  const onPointerDown = (event) => {
    press = { x: event.clientX, y: event.clientY };
    if (lassoMode && event.button === 0) {
      canvas.setPointerCapture(event.pointerId);
      lasso = [pointerPosition(event)];
      lassoSvg.style.display = "block";
      drawLasso();
    }
  };
  const onPointerMove = (event) => {
    const [x, y] = pointerPosition(event);
    if (lasso) {
      const [lastX, lastY] = lasso[lasso.length - 1];
      if (Math.hypot(x - lastX, y - lastY) >= LASSO_MIN_STEP) {
        lasso.push([x, y]);
        drawLasso();
      }
      return;
    }
    // While the view turns, the pointer's moves (and those the browser makes up as the page under it changes)
    // would each project every point again for a hover the next frame hides: hovering waits for the rest.
    if (event.buttons || turning()) return;
    ensureIndex();
    const i = index.nearest(x, y, hoverRadius());
    if (i < 0) hideHover();
    else showHover(i, x, y);
  };
  const onPointerUp = (event) => {
    const moved = press ? Math.hypot(event.clientX - press.x, event.clientY - press.y) : Infinity;
    press = null;
    if (lasso) {
      const polygon = lasso;
      lasso = null;
      lassoSvg.style.display = "none";
      const [startX, startY] = polygon[0];
      const extent = Math.max(...polygon.map(([x, y]) => Math.hypot(x - startX, y - startY)));
      if (polygon.length >= 3 && extent >= CLICK_TOLERANCE) {
        ensureIndex();
        select(index.inside(polygon), event.shiftKey);
        return;
      }
    }
    if (moved >= CLICK_TOLERANCE || event.button !== 0) return;
    ensureIndex();
    const [x, y] = pointerPosition(event);
    const i = index.nearest(x, y, hoverRadius());
    if (i >= 0 && event.shiftKey) toggle(i);
    else if (i >= 0) sendSelection([i]);
    else if (!event.shiftKey && model.get("selected").length) sendSelection([]);
  };
  const onPointerLeave = () => {
    if (!lasso) hideHover();
  };
  canvas.addEventListener("pointerdown", onPointerDown);
  canvas.addEventListener("pointermove", onPointerMove);
  canvas.addEventListener("pointerup", onPointerUp);
  canvas.addEventListener("pointerleave", onPointerLeave);

  function button(label, title, onClick) {
    const node = element("button", "cnnviz-scatter3d-button", toolbar, label);
    node.type = "button";
    node.title = title;
    node.addEventListener("click", onClick);
    return node;
  }

  const viewButtons = [
    button("3D", "orbit: drag to rotate, wheel to zoom, right-drag or shift-drag to pan", () => {
      model.set("view", "3d");
      model.save_changes();
    }),
    button("2D", "flat: the first two coordinates; drag to pan, wheel to zoom", () => {
      model.set("view", "2d");
      model.save_changes();
    }),
  ];
  viewButtons[0].dataset.view = "3d";
  viewButtons[1].dataset.view = "2d";

  const colorBy = element("select", "cnnviz-scatter3d-select", toolbar);
  colorBy.title = "colour points by";
  colorBy.addEventListener("change", () => {
    model.set("color_by", colorBy.value);
    model.save_changes();
  });
  function colorOptions() {
    const options = colourChoices({
      hasLabels: bytesOf(model.get("labels")).length > 0,
      hasPredictions: bytesOf(model.get("predictions")).length > 0,
      hasScores: bytesOf(model.get("scores")).length > 0,
      scoreName: model.get("score_name"),
    });
    colorBy.replaceChildren(...options.map(([value, text]) => {
      const option = element("option", null, null, text);
      option.value = value;
      return option;
    }));
    colorBy.value = model.get("color_by");
    colorBy.style.display = options.length > 1 ? "" : "none";
  }

  const sizeLabel = element("label", "cnnviz-scatter3d-size", toolbar, "size");
  const sizeSlider = element("input", null, sizeLabel);
  Object.assign(sizeSlider, { type: "range", min: "1", max: "24", step: "0.5" });
  sizeSlider.addEventListener("input", () => {
    model.set("point_size", Number(sizeSlider.value));
    model.save_changes();
  });

  const lassoButton = button("Lasso", "drag a loop around points to select them (shift: add to the selection)", () => {
    lassoMode = !lassoMode;
    lassoButton.classList.toggle("active", lassoMode);
    canvas.style.cursor = lassoMode ? "crosshair" : "";
    applyView();
  });
  button("Reset view", "back to the initial camera", () => controls().reset());
  button("Clear", "clear the selection", () => sendSelection([]));
  const status = element("span", "cnnviz-scatter3d-status", toolbar);

  function setPointSize() {
    sizeSlider.value = String(model.get("point_size"));
    requestDraw();
  }

  let atlasRequest = 0;
  function setSprite() {
    const request = ++atlasRequest;
    const png = bytesOf(model.get("sprite"));
    atlas = null;
    if (!png.length) return;
    createImageBitmap(new Blob([png], { type: "image/png" })).then((bitmap) => {
      if (request === atlasRequest) atlas = bitmap;
    });
  }

  const handlers = {
    "change:points": setPoints,
    "change:colors change:palette change:legend": setColors,
    "change:selected": setSelection,
    "change:point_size": setPointSize,
    "change:view": applyView,
    "change:labels change:predictions change:scores change:score_name change:color_by": colorOptions,
    "change:sprite": setSprite,
    "change:height change:width": resize,
    "change:lod_points": () => {
      setSubset();
      requestDraw();
    },
  };
  for (const [events, handler] of Object.entries(handlers)) model.on(events, handler);
  const observer = new ResizeObserver(resize);
  observer.observe(stage);

  setPoints();
  setPointSize();
  colorOptions();
  setSprite();
  applyView();
  resize();

  return () => {
    for (const [events, handler] of Object.entries(handlers)) model.off(events, handler);
    observer.disconnect();
    if (frame) cancelAnimationFrame(frame);
    cancelAnimationFrame(restFrame);
    orbit.dispose();
    pan.dispose();
    geometry.dispose();
    sampleGeometry.dispose();
    material.dispose();
    box.geometry.dispose();
    box.material.dispose();
    renderer.dispose();
    root.remove();
  };
}

export default { render };
