// ScreenIndex answers hover and lasso queries from the projected points alone, so its geometry can be checked
// here against brute force, without WebGL or a browser.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mulberry32 as generator } from "../src/level_of_detail.js";
import { ScreenIndex } from "../src/screen_index.js";

const WIDTH = 400;
const HEIGHT = 300;
// Column-major 4x4 matrices, as three.js stores them.
const IDENTITY = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
// A camera at the origin looking down -z, depths 1 to 9 mapped onto -1..1: w = -z, so points behind it have
// w <= 0.
const PERSPECTIVE = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, -1.25, -1, 0, 0, -2.25, 0];

function built(points, matrix = IDENTITY, flatten = false) {
  const index = new ScreenIndex();
  index.build(Float32Array.from(points.flat()), points.length, matrix, WIDTH, HEIGHT, flatten);
  return index;
}

// Seeded points, so that a failing case can be replayed.
function randomPoints(random, count) {
  return Array.from({ length: count }, () => [random() * 2 - 1, random() * 2 - 1, random() * 2 - 1]);
}

// Even-odd point in polygon by ray casting, written independently of the index: counts crossings of a
// horizontal ray towards +x with each edge, half-open in y so that a vertex on the ray counts once.
function contains(polygon, x, y) {
  let crossings = 0;
  polygon.forEach(([ax, ay], a) => {
    const [bx, by] = polygon[(a + 1) % polygon.length];
    if ((ay <= y && y < by) || (by <= y && y < ay)) {
      const atY = ax + ((y - ay) / (by - ay)) * (bx - ax);
      if (atY > x) crossings += 1;
    }
  });
  return crossings % 2 === 1;
}

test("normalised device coordinates map onto the canvas, y pointing down", () => {
  const index = built([[-1, 1, 0], [1, -1, 0], [0, 0, 0], [0.5, 0.5, 0]]);
  assert.deepEqual(index.screenPosition(0), [0, 0]);
  assert.deepEqual(index.screenPosition(1), [WIDTH, HEIGHT]);
  assert.deepEqual(index.screenPosition(2), [WIDTH / 2, HEIGHT / 2]);
  assert.deepEqual(index.screenPosition(3), [300, 75]);
  assert.equal(index.stale, false);
});

test("points outside the view volume or behind the camera are never found", () => {
  // In view; beside it; behind the camera; nearer than the near plane; beyond the far plane.
  const index = built([[0, 0, -2], [3, 0, -2], [0, 0, 2], [0, 0, -0.5], [0, 0, -100]], PERSPECTIVE);
  const everything = [[-10, -10], [WIDTH + 10, -10], [WIDTH + 10, HEIGHT + 10], [-10, HEIGHT + 10]];
  assert.deepEqual(index.inside(everything), [0]);
  assert.equal(index.nearest(WIDTH / 2, HEIGHT / 2, 5), 0);
});

test("perspective divides by w", () => {
  const index = built([[1, 0.5, -4]], PERSPECTIVE);
  const [x, y] = index.screenPosition(0);
  assert.ok(Math.abs(x - ((1 / 4 + 1) / 2) * WIDTH) < 1e-3);
  assert.ok(Math.abs(y - ((1 - 0.5 / 4) / 2) * HEIGHT) < 1e-3);
});

test("flatten projects every point as if its z were 0", () => {
  // x' = x + z: the 3D view moves points sideways by their depth, the flat view must not.
  const shear = [1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1];
  const points = [[0.1, 0.2, 0.5], [-0.3, 0.4, -0.6]];
  const flat = built(points, shear, true);
  const plain = built(points.map(([x, y]) => [x, y, 0]), shear, false);
  const deep = built(points, shear, false);
  for (const i of [0, 1]) {
    assert.deepEqual(flat.screenPosition(i), plain.screenPosition(i));
    assert.notDeepEqual(flat.screenPosition(i), deep.screenPosition(i));
  }
});

test("nearest picks the front-most point within the radius", () => {
  // Points 0 and 1 land on the same pixel; 1 is nearer the camera (smaller depth).
  const index = built([[0, 0, 0.5], [0, 0, -0.5], [0.1, 0, -0.9]]);
  assert.equal(index.nearest(WIDTH / 2, HEIGHT / 2, 3), 1);
  // Point 2 is 20 pixels to the right: inside a radius of 25, and in front of the others.
  assert.equal(index.nearest(WIDTH / 2, HEIGHT / 2, 25), 2);
  assert.equal(index.nearest(WIDTH / 2 + 20, HEIGHT / 2 + 20, 5), -1);
});

test("nearest finds a point across a cell boundary and only within the radius", () => {
  const random = generator(7);
  const points = randomPoints(random, 2000);
  const index = built(points);
  for (let trial = 0; trial < 300; trial++) {
    const x = random() * WIDTH;
    const y = random() * HEIGHT;
    const radius = 1 + random() * 30;
    let best = -1;
    points.forEach(([, , z], i) => {
      const [px, py] = index.screenPosition(i);
      if ((px - x) ** 2 + (py - y) ** 2 <= radius * radius && (best < 0 || z < points[best][2])) best = i;
    });
    assert.equal(index.nearest(x, y, radius), best, `query (${x}, ${y}) radius ${radius}`);
  }
});

test("inside a square selects exactly the points in it", () => {
  const index = built([[0, 0, 0], [0.2, 0.3, 0], [0.6, 0, 0], [-0.9, -0.9, 0]]);
  // The square spans x 140..260 and y 90..210 on the 400 x 300 canvas: it holds points 0 and 1.
  assert.deepEqual(index.inside([[140, 90], [260, 90], [260, 210], [140, 210]]).sort(), [0, 1]);
});

test("inside follows the even-odd rule in concave and self-crossing loops", () => {
  const random = generator(11);
  const points = randomPoints(random, 5000);
  const index = built(points);
  const loops = {
    "L shape": [[40, 40], [360, 40], [360, 100], [120, 100], [120, 260], [40, 260]],
    "bow tie": [[50, 50], [350, 250], [350, 50], [50, 250]],
    star: [0, 1, 2, 3, 4].map((k) => {
      const angle = (k * 4 * Math.PI) / 5 - Math.PI / 2;
      return [200 + 140 * Math.cos(angle), 150 + 140 * Math.sin(angle)];
    }),
  };
  for (const [name, loop] of Object.entries(loops)) {
    const expected = points.map((_, i) => i).filter((i) => contains(loop, ...index.screenPosition(i)));
    assert.ok(expected.length > 50, `${name}: the loop should hold many points`);
    assert.deepEqual(index.inside(loop).sort((a, b) => a - b), expected, name);
  }
});

test("inside random lassos matches brute force", () => {
  const random = generator(3);
  const points = randomPoints(random, 3000);
  const index = built(points);
  for (let trial = 0; trial < 40; trial++) {
    const loop = Array.from({ length: 3 + Math.floor(random() * 20) }, () => [random() * WIDTH, random() * HEIGHT]);
    const expected = points.map((_, i) => i).filter((i) => contains(loop, ...index.screenPosition(i)));
    assert.deepEqual(index.inside(loop).sort((a, b) => a - b), expected, JSON.stringify(loop));
  }
});

test("a rebuild with fewer points forgets the points left over from the last build", () => {
  const index = new ScreenIndex();
  const many = Float32Array.from(randomPoints(generator(5), 500).flat());
  index.build(many, 500, IDENTITY, WIDTH, HEIGHT, false);
  index.invalidate();
  assert.equal(index.stale, true);
  index.build(Float32Array.from([0, 0, 0, 0.5, 0.5, 0]), 2, IDENTITY, WIDTH, HEIGHT, false);
  assert.equal(index.stale, false);
  const everything = [[0, 0], [WIDTH, 0], [WIDTH, HEIGHT], [0, HEIGHT]];
  assert.deepEqual(index.inside(everything).sort(), [0, 1]);
});

test("a canvas resized between builds indexes the new grid", () => {
  const index = new ScreenIndex();
  const positions = Float32Array.from([0.9, 0.9, 0]);
  index.build(positions, 1, IDENTITY, 100, 100, false);
  assert.equal(index.nearest(95, 5, 2), 0);
  index.build(positions, 1, IDENTITY, 1000, 600, false);
  assert.equal(index.nearest(95, 5, 2), -1);
  assert.equal(index.nearest(950, 30, 2), 0);
});
