// Level of detail for the point cloud: while the view turns, only a fixed random subset of the points is drawn.
// A uniform random subset keeps every region's share of the points, so dense clusters stay dense and sparse
// outskirts stay sparse, in proportion. It is drawn once per point set, not per frame, and it is the same
// subset on every frame, so the cloud does not shimmer while it turns.

// Small, seeded and fast: the same points give the same subset on every redraw of the widget.
export function mulberry32(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// -> { indices, chosen }: `size` distinct indices in 0..count-1, ascending (neighbours in memory stay together
// for the vertex fetch), and a flag per point saying whether it is among them. Marks are drawn at random until
// enough are set; past half the points the subset is the complement of a smaller one, so the draws stay few.
export function randomSubset(count, size, seed = 1) {
  if (!Number.isInteger(count) || count < 0) throw new RangeError(`count: expected a whole number >= 0, got ${count}`);
  if (!Number.isInteger(size) || size < 0) throw new RangeError(`size: expected a whole number >= 0, got ${size}`);
  const kept = Math.min(size, count);
  const complement = kept > count / 2;
  const marks = complement ? count - kept : kept;
  const chosen = new Uint8Array(count);
  const random = mulberry32(seed);
  for (let marked = 0; marked < marks; ) {
    const i = Math.floor(random() * count);
    if (!chosen[i]) {
      chosen[i] = 1;
      marked++;
    }
  }
  if (complement) for (let i = 0; i < count; i++) chosen[i] ^= 1;
  const indices = new Uint32Array(kept);
  for (let i = 0, next = 0; next < kept; i++) if (chosen[i]) indices[next++] = i;
  return { indices, chosen };
}

// The subset plus the points that must always show (the selected ones) that it lacks, appended.
export function withAlwaysDrawn(subset, alwaysDrawn) {
  const missing = alwaysDrawn.filter((i) => i >= 0 && i < subset.chosen.length && !subset.chosen[i]);
  if (!missing.length) return subset.indices;
  const indices = new Uint32Array(subset.indices.length + missing.length);
  indices.set(subset.indices);
  indices.set(missing, subset.indices.length);
  return indices;
}
