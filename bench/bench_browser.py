"""How fast the widgets answer in the browser: JupyterLab in headless Chromium (software WebGL), as the browser
tests drive it.

Run with ``make bench``, or ``.venv/bin/python bench/bench_browser.py [--repeats N]``. Prints markdown tables:

- Scatter3D redraws at 200,000, 1,000,000 and 5,000,000 points, each redraw's frame awaited after a zoom step:
  while the view turns (the random sample of ``lod_points`` drawn) and at rest (every point drawn, measured
  with the level of detail off);
- repaints in the tour's photo dashboard (EfficientNet-Lite0): from a control's change event to the frame after
  the new picture loaded, for 7 changes each: a Grad-CAM class among the top 10 (computed ahead by the panel's
  prefetch), a class far down the list (computed on the spot), a feature-map layer (prefetched), a colormap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))

import harness  # noqa: E402 - the browser tests' harness, found through the path set above
from test_scatter3d import TURNING_REDRAWS_MS  # noqa: E402 - the browser test's measure, the same path

LARGE_NOTEBOOK = ROOT / "tests" / "browser" / "notebooks" / "scatter3d_large.ipynb"
TOUR = ROOT / "notebooks" / "tour.ipynb"
TURNING_REDRAWS = 12
RESTING_REDRAWS = 3  # of every point: seconds each at 5,000,000
CHANGES = 7
# The same clusters as the browser test's notebook, at 5,000,000 points (85 MB sent to the browser).
FIVE_MILLION_CELLS = [
    """import numpy as np
import cnnviz_widgets as cw
rng = np.random.default_rng(2)
labels = rng.integers(0, 10, 5_000_000)
points = rng.normal(scale=4.0, size=(10, 3))[labels] + rng.normal(size=(5_000_000, 3))""",
    "giant = cw.Scatter3D(points, labels=labels, height=420)\ngiant",
]


def spread(values: list[float]) -> str:
    return f"{min(values):.0f} | {statistics.median(values):.0f} | {max(values):.0f}"


def five_million_notebook(folder: Path) -> Path:
    path = folder / "scatter3d_five_million.ipynb"
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}
             for source in FIVE_MILLION_CELLS]  # fmt: skip
    kernel = {"display_name": "Python 3", "language": "python", "name": "python3"}
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": kernel}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def redraw_times(notebook, widget_name: str, index: int, repeats: int) -> tuple[int, list[float], list[float]]:
    """-> (points drawn while turning, ms of each redraw while turning, ms of each redraw of every point)."""
    widget = notebook.page.locator(".cnnviz-scatter3d").nth(index)
    widget.scroll_into_view_if_needed()
    canvas = widget.locator("canvas").first
    sample = int(notebook.kernel_eval(f"print({widget_name}.lod_points)"))
    turning = [t for _ in range(repeats) for t in canvas.evaluate(TURNING_REDRAWS_MS, TURNING_REDRAWS)]
    notebook.kernel_eval(f"{widget_name}.lod_points = 0")
    resting = [t for _ in range(repeats) for t in canvas.evaluate(TURNING_REDRAWS_MS, RESTING_REDRAWS)]
    notebook.kernel_eval(f"{widget_name}.lod_points = {sample}")
    return sample, turning, resting


def scatter_redraws(browser, server, repeats: int, scratch: Path) -> None:
    print("| Scatter3D | drawn while turning | turning: redraw, min (ms) | median (ms) | max (ms) "
          "| at rest, every point: min (ms) | median (ms) | max (ms) |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    clouds = [(LARGE_NOTEBOOK, [("big", 200_000), ("huge", 1_000_000)]), (five_million_notebook(scratch), [("giant", 5_000_000)])]
    for path, widgets in clouds:
        notebook, context = harness.open_notebook(browser, server, path)
        try:
            harness.assert_nothing_wrong(notebook)
            for index, (name, count) in enumerate(widgets):
                sample, turning, resting = redraw_times(notebook, name, index, repeats)
                drawn = f"{sample:,}" if 0 < sample < count else "every point"
                print(f"| {count:,} points | {drawn} | {spread(turning)} | {spread(resting)} |", flush=True)
        finally:
            context.close()
            harness.shut_down_kernels(server)


def repaints(notebook, select, picture, indices) -> list[float]:
    times = []
    for index in indices:
        times.append(harness.repaint_after_change(notebook.page, select, picture, index))
        notebook.page.wait_for_timeout(300)
    return times


def dashboard_repaints(browser, server) -> None:
    notebook, context = harness.open_notebook(browser, server, TOUR, viewport=(1500, 1100))
    try:
        harness.dismiss_notifications(notebook.page)
        harness.assert_nothing_wrong(notebook)
        dashboard = notebook.page.locator(".cnnviz-dashboard").first
        dashboard.scroll_into_view_if_needed()
        print("\n| photo dashboard, change of | repaint, min (ms) | median (ms) | max (ms) |")
        print("| --- | ---: | ---: | ---: |")

        panel = harness.show_tab(dashboard, "Grad-CAM")
        harness.wait_until_drawn(panel)
        assert notebook.kernel_eval("dashboard.grad_cam.wait_prefetched(120)") == "True"
        classes = panel.locator(".cnnviz-class-chooser select").first
        left = panel.locator(".cnnviz-grad-cam-left")
        print(f"| Grad-CAM class, top 10 | {spread(repaints(notebook, classes, left, range(1, CHANGES + 1)))} |", flush=True)
        rare = range(300, 300 + 10 * CHANGES, 10)
        print(f"| Grad-CAM class, far down the list | {spread(repaints(notebook, classes, left, rare))} |", flush=True)

        panel = harness.show_tab(dashboard, "Feature maps")
        harness.wait_until_drawn(panel)
        assert notebook.kernel_eval("dashboard.panels['Feature maps'].wait_prefetched(120)") == "True"
        layers = panel.locator(".cnnviz-layer-chooser select")
        grid = panel.locator(".cnnviz-feature-grid img")
        print(f"| feature-map layer | {spread(repaints(notebook, layers, grid, [3, 9, 15, 21, 27, 33, 39]))} |", flush=True)
        colours = panel.locator(".widget-dropdown select").filter(has=notebook.page.locator("option", has_text="magma"))
        print(f"| feature-map colormap | {spread(repaints(notebook, colours, grid, [2, 1, 3, 0, 2, 1, 3]))} |", flush=True)
        harness.assert_nothing_wrong(notebook)
    finally:
        context.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="redraw measurements per scatter")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        home, root = Path(scratch, "profile"), Path(scratch, "root")
        root.mkdir()
        with harness.jupyter_server(home, root) as server, harness.chromium() as browser:
            print(f"JupyterLab in headless Chromium ({harness.CHROMIUM}), software WebGL\n")
            scatter_redraws(browser, server, arguments.repeats, Path(scratch))
            dashboard_repaints(browser, server)


if __name__ == "__main__":
    main()
