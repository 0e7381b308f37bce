// The subset drawn while the view turns: checked against what a uniform sample without replacement must be.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomSubset, withAlwaysDrawn } from "../src/level_of_detail.js";

function assertSubset({ indices, chosen }, count, size) {
  assert.equal(indices.length, size);
  assert.equal(chosen.length, count);
  for (let i = 1; i < indices.length; i++) assert.ok(indices[i - 1] < indices[i], "ascending, hence distinct");
  assert.ok(indices.every((i) => i < count));
  const flagged = [];
  chosen.forEach((flag, i) => flag && flagged.push(i));
  assert.deepEqual(flagged, Array.from(indices), "the flags mark exactly the indices");
}

test("a subset has the size asked for, distinct indices in range, below and above half the points", () => {
  for (const [count, size] of [[1000, 10], [1000, 499], [1000, 500], [1000, 501], [1000, 990], [7, 7], [7, 0]]) {
    assertSubset(randomSubset(count, size), count, size);
  }
});

test("asking for more points than there are gives every point", () => {
  const subset = randomSubset(50, 80);
  assert.deepEqual(Array.from(subset.indices), Array.from({ length: 50 }, (_, i) => i));
});

test("the same seed gives the same subset, another seed another one", () => {
  assert.deepEqual(randomSubset(10_000, 300, 7).indices, randomSubset(10_000, 300, 7).indices);
  assert.notDeepEqual(randomSubset(10_000, 300, 7).indices, randomSubset(10_000, 300, 8).indices);
});

test("every region keeps its share of the points: a hypergeometric count per cluster", () => {
  // Clusters of 500,000, 100,000 and 5,000 points, 60,000 of 605,000 drawn. Without replacement a cluster of n
  // points keeps k ~ Hypergeometric(N, n, K): mean nK/N, variance nK/N (1 - K/N) (N - n)/(N - 1).
  const sizes = [500_000, 100_000, 5_000];
  const count = sizes.reduce((a, b) => a + b);
  const size = 60_000;
  const { indices } = randomSubset(count, size, 3);
  let start = 0;
  for (const n of sizes) {
    const kept = indices.filter((i) => i >= start && i < start + n).length;
    const mean = (n * size) / count;
    const deviation = Math.sqrt(mean * (1 - size / count) * ((count - n) / (count - 1)));
    assert.ok(Math.abs(kept - mean) < 5 * deviation, `a cluster of ${n} kept ${kept}, expected ${mean.toFixed(0)} ± ${deviation.toFixed(0)}`);
    start += n;
  }
});

test("the points at each position are kept with the same chance: no part of the index range is favoured", () => {
  // 200 draws of 100 of 1,000: each index is kept 20 times on average (binomial, sd 4.24); a chi-square over the
  // 10 blocks of 100 indices has 9 degrees of freedom, below 27.9 with probability 0.999.
  const count = 1000;
  const blocks = new Array(10).fill(0);
  for (let seed = 1; seed <= 200; seed++) for (const i of randomSubset(count, 100, seed).indices) blocks[Math.floor(i / 100)]++;
  const expected = (200 * 100) / 10;
  const chiSquare = blocks.reduce((sum, seen) => sum + (seen - expected) ** 2 / expected, 0);
  assert.ok(chiSquare < 27.9, `blocks ${blocks}: chi-square ${chiSquare.toFixed(1)}`);
});

test("the selected points are always drawn, once each", () => {
  const subset = randomSubset(100, 10, 5);
  const outside = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11].filter((i) => !subset.chosen[i]).slice(0, 2);
  const inside = subset.indices[0];
  const drawn = withAlwaysDrawn(subset, [inside, ...outside, 100, -1]);
  assert.deepEqual(Array.from(drawn).sort((a, b) => a - b), [...subset.indices, ...outside].sort((a, b) => a - b));
  assert.equal(withAlwaysDrawn(subset, [inside]), subset.indices, "nothing to add: the subset itself");
});

test("a count or size that is not a whole number >= 0 is refused", () => {
  assert.throws(() => randomSubset(-1, 3), /^RangeError: count: expected a whole number >= 0, got -1$/);
  assert.throws(() => randomSubset(10, 2.5), /^RangeError: size: expected a whole number >= 0, got 2.5$/);
});
