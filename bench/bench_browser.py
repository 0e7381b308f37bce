"""How fast the widgets answer in the browser: JupyterLab in headless Chromium (software WebGL), as the browser
tests drive it.

Run with ``make bench``, or ``.venv/bin/python bench/bench_browser.py [--repeats N]``. Prints markdown tables:

- Scatter3D redraws, 200,000 and 1,000,000 points: the mean time per frame over 12 zoom steps, each frame
  awaited, repeated;
- repaints in the tour's photo dashboard (EfficientNet-Lite0): from a control's change event to the frame after
  the new picture loaded, for 7 changes each: a Grad-CAM class among the top 10 (computed ahead by the panel's
  prefetch), a class far down the list (computed on the spot), a feature-map layer (prefetched), a colormap.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))

import harness  # noqa: E402 - the browser tests' harness, found through the path set above

LARGE_NOTEBOOK = ROOT / "tests" / "browser" / "notebooks" / "scatter3d_large.ipynb"
TOUR = ROOT / "notebooks" / "tour.ipynb"
REDRAWS = 12
CHANGES = 7

# Mean milliseconds per redraw while zooming: wheel steps drive the orbit controls, each frame is awaited.
REDRAW_TIME = """async (canvas, redraws) => {
    const frame = () => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
    const box = canvas.getBoundingClientRect();
    const at = { clientX: box.left + box.width / 2, clientY: box.top + box.height / 2 };
    await frame();
    const start = performance.now();
    for (let i = 0; i < redraws; i++) {
        const step = { ...at, deltaY: i % 2 ? 60 : -60, bubbles: true, cancelable: true };
        canvas.dispatchEvent(new WheelEvent("wheel", step));
        await frame();
    }
    return (performance.now() - start) / redraws;
}"""


def spread(values: list[float]) -> str:
    return f"{min(values):.0f} | {statistics.median(values):.0f} | {max(values):.0f}"


def scatter_redraws(browser, server, repeats: int) -> None:
    notebook, context = harness.open_notebook(browser, server, LARGE_NOTEBOOK)
    try:
        harness.assert_nothing_wrong(notebook)
        print("| Scatter3D | redraw, min (ms) | median (ms) | max (ms) |")
        print("| --- | ---: | ---: | ---: |")
        widgets = notebook.page.locator(".cnnviz-scatter3d")
        for index, points in enumerate(["200,000", "1,000,000"]):
            widget = widgets.nth(index)
            widget.scroll_into_view_if_needed()
            canvas = widget.locator("canvas").first
            times = [canvas.evaluate(REDRAW_TIME, REDRAWS) for _ in range(repeats)]
            print(f"| {points} points | {spread(times)} |", flush=True)
    finally:
        context.close()


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
            scatter_redraws(browser, server, arguments.repeats)
            dashboard_repaints(browser, server)


if __name__ == "__main__":
    main()
