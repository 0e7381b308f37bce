// Scatter3D: a three.js point cloud for anywidget. Positions arrive as a float32 buffer (x, y, z per
// point) and colours as one uint8 palette index per point, so a large cloud crosses the wire as bytes.
import * as THREE from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";

function float32(view) {
  return new Float32Array(view.buffer, view.byteOffset, view.byteLength / 4);
}

function uint8(view) {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

function colours(model) {
  const palette = model.get("palette").map((hex) => new THREE.Color(hex));
  const indices = uint8(model.get("colors"));
  const rgb = new Float32Array(indices.length * 3);
  indices.forEach((index, i) => {
    const c = palette[index % palette.length];
    rgb[3 * i] = c.r;
    rgb[3 * i + 1] = c.g;
    rgb[3 * i + 2] = c.b;
  });
  return rgb;
}

function render({ model, el }) {
  const width = () => el.clientWidth || model.get("width");
  const height = model.get("height");
  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio);
  renderer.setSize(width(), height);
  renderer.setClearColor(0xffffff);
  el.classList.add("cnnviz-scatter3d");
  el.appendChild(renderer.domElement);

  const scene = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(50, width() / height, 0.01, 100);
  camera.position.set(2.2, 1.6, 2.2);
  const controls = new OrbitControls(camera, renderer.domElement);

  const geometry = new THREE.BufferGeometry();
  const material = new THREE.PointsMaterial({ vertexColors: true, sizeAttenuation: true });
  scene.add(new THREE.Points(geometry, material));

  const draw = () => renderer.render(scene, camera);
  const update = () => {
    geometry.setAttribute("position", new THREE.BufferAttribute(float32(model.get("points")), 3));
    geometry.setAttribute("color", new THREE.BufferAttribute(colours(model), 3));
    geometry.computeBoundingSphere();
    material.size = model.get("point_size");
    draw();
  };
  controls.addEventListener("change", draw);
  model.on("change:points change:colors change:palette change:point_size", update);
  const resize = new ResizeObserver(() => {
    camera.aspect = width() / height;
    camera.updateProjectionMatrix();
    renderer.setSize(width(), height);
    draw();
  });
  resize.observe(el);
  update();

  return () => {
    resize.disconnect();
    controls.dispose();
    geometry.dispose();
    material.dispose();
    renderer.dispose();
  };
}

export default { render };
