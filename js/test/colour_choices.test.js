// The colour menu offers only what the data allows, and names the score by what it measures.
import { test } from "node:test";
import assert from "node:assert/strict";
import { colourChoices, scoreLine } from "../src/colour_choices.js";

test("the menu offers the score, by its name, only when there are scores", () => {
  const everything = { hasLabels: true, hasPredictions: true, hasScores: true, scoreName: "neighbours shared" };
  assert.deepEqual(colourChoices(everything), [
    ["label", "colour: label"],
    ["prediction", "colour: prediction"],
    ["correct", "colour: correct / wrong"],
    ["score", "colour: neighbours shared"],
  ]);
  assert.deepEqual(colourChoices({ ...everything, hasScores: false }).map(([value]) => value), [
    "label", "prediction", "correct",
  ]);
  assert.deepEqual(colourChoices({ hasLabels: false, hasPredictions: true, hasScores: true, scoreName: "" }), [
    ["prediction", "colour: prediction"],
    ["score", "colour: score"],
  ]);
});

test("the hover shows a score as a whole percentage", () => {
  assert.equal(scoreLine("neighbours shared", Math.fround(0.7)), "neighbours shared: 70%");
  assert.equal(scoreLine("", 1), "score: 100%");
  assert.equal(scoreLine("agreement", 0), "agreement: 0%");
  assert.equal(scoreLine("agreement", Math.fround(0.123)), "agreement: 12%");
});
