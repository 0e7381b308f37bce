// The words of the scatter's colour menu and of its hover lines for scores, kept apart from the drawing so
// that they can be checked without a browser.

// [value, text] per colouring the data allows, in the menu's order.
export function colourChoices({ hasLabels, hasPredictions, hasScores, scoreName }) {
  return [
    ["label", "colour: label", hasLabels],
    ["prediction", "colour: prediction", hasPredictions],
    ["correct", "colour: correct / wrong", hasLabels && hasPredictions],
    ["score", `colour: ${scoreName || "score"}`, hasScores],
  ].filter(([, , available]) => available).map(([value, text]) => [value, text]);
}

// A score in [0, 1] as the hover shows it: what it measures, then a whole percentage.
export function scoreLine(scoreName, score) {
  return `${scoreName || "score"}: ${Math.round(score * 100)}%`;
}
