// Where each point lands on the screen, bucketed in a grid of square cells, so that hovering and the lasso
// look only at the points near the pointer or inside the loop: a million points are projected once per
// camera move (a few milliseconds), not once per mouse event.
const CELL = 24; // pixels

export class ScreenIndex {
  constructor() {
    this.stale = true;
    this.capacity = 0;
  }

  invalidate() {
    this.stale = true;
  }

  allocate(count) {
    if (count <= this.capacity) return;
    this.capacity = count;
    this.x = new Float32Array(count);
    this.y = new Float32Array(count);
    this.depth = new Float32Array(count);
    this.cell = new Int32Array(count);
    this.order = new Uint32Array(count);
  }

  // matrix: column-major projection x view matrix (16 numbers); flatten drops z, as the 2D view draws.
  build(positions, count, matrix, width, height, flatten) {
    this.allocate(count);
    const e = matrix;
    const columns = Math.max(1, Math.ceil(width / CELL));
    const rows = Math.max(1, Math.ceil(height / CELL));
    const starts = new Uint32Array(columns * rows + 1);
    for (let i = 0; i < count; i++) {
      const px = positions[3 * i];
      const py = positions[3 * i + 1];
      const pz = flatten ? 0 : positions[3 * i + 2];
      const w = e[3] * px + e[7] * py + e[11] * pz + e[15];
      this.cell[i] = -1;
      if (w <= 1e-6) continue;
      const nx = (e[0] * px + e[4] * py + e[8] * pz + e[12]) / w;
      const ny = (e[1] * px + e[5] * py + e[9] * pz + e[13]) / w;
      const nz = (e[2] * px + e[6] * py + e[10] * pz + e[14]) / w;
      if (nx < -1 || nx > 1 || ny < -1 || ny > 1 || nz < -1 || nz > 1) continue;
      const sx = ((nx + 1) / 2) * width;
      const sy = ((1 - ny) / 2) * height;
      this.x[i] = sx;
      this.y[i] = sy;
      this.depth[i] = nz;
      const cell = Math.min(rows - 1, Math.floor(sy / CELL)) * columns + Math.min(columns - 1, Math.floor(sx / CELL));
      this.cell[i] = cell;
      starts[cell + 1]++;
    }
    for (let c = 0; c < columns * rows; c++) starts[c + 1] += starts[c];
    const fill = starts.slice(0, columns * rows);
    for (let i = 0; i < count; i++) {
      const cell = this.cell[i];
      if (cell >= 0) this.order[fill[cell]++] = i;
    }
    Object.assign(this, { starts, columns, rows, stale: false });
  }

  screenPosition(i) {
    return [this.x[i], this.y[i]];
  }

  // Calls visit(i) for every point in the cells overlapping the rectangle [x0, x1] x [y0, y1].
  forEachIn(x0, y0, x1, y1, visit) {
    const c0 = Math.max(0, Math.floor(x0 / CELL));
    const c1 = Math.min(this.columns - 1, Math.floor(x1 / CELL));
    const r0 = Math.max(0, Math.floor(y0 / CELL));
    const r1 = Math.min(this.rows - 1, Math.floor(y1 / CELL));
    for (let r = r0; r <= r1; r++) {
      for (let c = c0; c <= c1; c++) {
        const cell = r * this.columns + c;
        for (let k = this.starts[cell]; k < this.starts[cell + 1]; k++) visit(this.order[k]);
      }
    }
  }

  // The front-most point within radius pixels of (x, y), or -1: in a dense cloud, the one the user sees.
  nearest(x, y, radius) {
    let best = -1;
    let bestDepth = Infinity;
    const radius2 = radius * radius;
    this.forEachIn(x - radius, y - radius, x + radius, y + radius, (i) => {
      const dx = this.x[i] - x;
      const dy = this.y[i] - y;
      if (dx * dx + dy * dy <= radius2 && this.depth[i] < bestDepth) {
        best = i;
        bestDepth = this.depth[i];
      }
    });
    return best;
  }

  // Every on-screen point inside the polygon [[x, y], ...] (even-odd rule).
  inside(polygon) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const [x, y] of polygon) {
      x0 = Math.min(x0, x); x1 = Math.max(x1, x);
      y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    }
    const found = [];
    this.forEachIn(x0, y0, x1, y1, (i) => {
      const px = this.x[i];
      const py = this.y[i];
      let crossings = false;
      for (let a = 0, b = polygon.length - 1; a < polygon.length; b = a++) {
        const [ax, ay] = polygon[a];
        const [bx, by] = polygon[b];
        if (ay > py !== by > py && px < ((bx - ax) * (py - ay)) / (by - ay) + ax) crossings = !crossings;
      }
      if (crossings) found.push(i);
    });
    return found;
  }
}
