"""Scatter3D and the charts in real JupyterLab: the cloud is drawn, hovering shows a point, clicks reach Python."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from harness import ARTIFACTS, assert_nothing_wrong, canvas_pixels, dismiss_notifications, hover_a_point, pixel_spread

NOTEBOOK = Path(__file__).parent / "notebooks" / "scatter3d.ipynb"
MIN_SPREAD = 10.0
MIN_POINT_PIXELS = 2_000
SATURATED = 80  # max - min channel: a palette colour, not the white background or the grey box
KERNEL_WAIT_S = 15
# The 2D view's orthographic camera (js/src/scatter3d.js) shows y in [-1.15, 1.15], x as far as the canvas's
# aspect allows: the points, centred in the unit cube, with a margin.
ORTHO_HALF_HEIGHT = 1.15
# A lasso with a notch cut into its right side, (dx, dy) from the canvas's centre: concave, so the points in the
# notch are inside its bounding box but not inside the loop.
LASSO = [(-160, -120), (160, -120), (30, 0), (160, 120), (-160, 120)]
# The canvas sits at a fractional offset and pointer events carry whole pixels: points this close to the loop
# may fall either side of it.
LASSO_EDGE_PX = 1.5


def kernel_soon(notebook, code: str, expected: str) -> None:
    """Wait until ``code`` prints ``expected`` in the kernel: the widget manager holds back an update while
    an earlier one is still being processed, so a change made in the page reaches Python a moment later."""
    deadline = time.monotonic() + KERNEL_WAIT_S
    while (seen := notebook.kernel_eval(code).strip()) != expected:
        assert time.monotonic() < deadline, f"{code} gives {seen!r}, expected {expected!r}"
        time.sleep(0.25)


def screen_positions_2d(notebook, canvas) -> np.ndarray:
    """(N, 2) pixel positions in the canvas of the scatter's points, seen in the 2D view as it starts (or after
    Reset view), computed from the positions the widget holds in Python."""
    points = np.array(json.loads(notebook.kernel_eval(
        "import json, numpy as np\nprint(json.dumps(np.frombuffer(scatter.points, np.float32).reshape(-1, 3)[:, :2].tolist()))"
    )))  # fmt: skip
    width, height = canvas.evaluate("(c) => [c.clientWidth, c.clientHeight]")
    half_width = ORTHO_HALF_HEIGHT * width / height
    return np.column_stack([(points[:, 0] / half_width + 1) / 2 * width, (1 - points[:, 1] / ORTHO_HALF_HEIGHT) / 2 * height])


def inside_polygon(positions: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule: for each position, whether a ray towards +x crosses the polygon's edges an odd number of times."""
    x, y = positions[:, :1], positions[:, 1:]
    a, b = polygon, np.roll(polygon, -1, axis=0)
    spans = (a[:, 1] <= y) != (b[:, 1] <= y)
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing_x = a[:, 0] + (y - a[:, 1]) / (b[:, 1] - a[:, 1]) * (b[:, 0] - a[:, 0])
    return (spans & (crossing_x > x)).sum(axis=1) % 2 == 1


def distance_to_polygon(positions: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """For each position, its distance in pixels to the nearest edge of the polygon."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    edge = b - a
    along = ((positions[:, None, :] - a) * edge).sum(axis=2) / (edge * edge).sum(axis=1)
    nearest = a + np.clip(along, 0, 1)[:, :, None] * edge
    return np.linalg.norm(positions[:, None, :] - nearest, axis=2).min(axis=1)


def saturated(pixels: np.ndarray) -> np.ndarray:
    """Which pixels show a palette colour."""
    return (pixels.max(axis=2) - pixels.min(axis=2)) > SATURATED


def png_pixels(data_url: str) -> np.ndarray:
    """(H, W, 3) pixels of a PNG data URL, as the canvas gives them."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"), dtype=np.int16)


def save_artifact(name: str, pixels: np.ndarray) -> None:
    """Keep pixels read from a canvas as tests/browser/artifacts/<name>.png, to be looked at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(ARTIFACTS / f"{name}.png")


def test_scatter_is_drawn_hovers_and_selects(open_notebook):
    notebook = open_notebook(NOTEBOOK)
    page = notebook.page
    dismiss_notifications(page)
    assert_nothing_wrong(notebook)

    widget = page.locator(".cnnviz-scatter3d").first
    widget.scroll_into_view_if_needed()
    canvas = widget.locator("canvas").first
    notebook.screenshot("scatter3d-3d", widget)
    pixels = canvas_pixels(canvas)
    point_pixels = int(((pixels.max(axis=2) - pixels.min(axis=2)) > SATURATED).sum())
    assert point_pixels > MIN_POINT_PIXELS, f"only {point_pixels} coloured pixels: the cloud is not drawn"
    assert pixel_spread(notebook.screenshot("scatter3d-canvas", canvas)) > MIN_SPREAD

    legend = widget.locator(".cnnviz-scatter3d-legend")
    assert legend.inner_text().split() == [str(digit) for digit in range(10)]

    tooltip = widget.locator(".cnnviz-scatter3d-tooltip")
    x, y, hovered = hover_a_point(page, canvas, tooltip)
    assert "label:" in tooltip.inner_text() and "predicted:" in tooltip.inner_text()
    thumbnail = canvas_pixels(tooltip.locator("canvas"))
    assert thumbnail.std() > MIN_SPREAD, "the tooltip's thumbnail is blank"
    notebook.screenshot("scatter3d-hover", widget)

    page.mouse.click(x, y)
    page.wait_for_function(
        "() => document.querySelector('.cnnviz-scatter3d-status').textContent.includes('1 selected')", timeout=10_000
    )
    kernel_soon(notebook, "print(scatter.selected, selections[-1])", f"[{hovered}] [{hovered}]")
    notebook.screenshot("scatter3d-selected", widget)

    widget.locator("select.cnnviz-scatter3d-select").select_option("correct")
    page.wait_for_function(
        "() => document.querySelector('.cnnviz-scatter3d-legend').innerText.includes('wrong')", timeout=10_000
    )
    assert legend.inner_text().split() == ["correct", "wrong"]
    kernel_soon(notebook, "print(scatter.color_by)", "correct")
    notebook.screenshot("scatter3d-correct-wrong", widget)

    # Scores of 0, 25, 50, 75 and 100% by the digit (mod 5): one per bin, and a hover shows the point's.
    notebook.kernel_eval("scatter.set_scores((y.numpy() % 5) / 4, 'digit mod 5')")
    select = widget.locator("select.cnnviz-scatter3d-select")
    page.wait_for_function(
        "() => [...document.querySelectorAll('select.cnnviz-scatter3d-select option')]"
        ".some((option) => option.textContent === 'colour: digit mod 5')",
        timeout=10_000,
    )
    select.select_option("score")
    page.wait_for_function(
        "() => document.querySelector('.cnnviz-scatter3d-legend').innerText.includes('80–100%')", timeout=10_000
    )
    assert legend.inner_text().split() == ["0–20%", "20–40%", "40–60%", "60–80%", "80–100%"]
    kernel_soon(notebook, "print(scatter.color_by)", "score")
    _, _, scored = hover_a_point(page, canvas, tooltip)
    expected_score = int(notebook.kernel_eval(f"print(int(y[{scored}]) % 5 * 25)").strip())
    assert f"digit mod 5: {expected_score}%" in tooltip.inner_text()
    notebook.screenshot("scatter3d-score", widget)
    notebook.kernel_eval("scatter.set_scores(None)")
    page.wait_for_function(
        "() => !document.querySelector('select.cnnviz-scatter3d-select option[value=score]')", timeout=10_000
    )
    assert select.input_value() == "label", "without scores the points go back to their labels"
    select.select_option("label")

    widget.get_by_role("button", name="2D").click()
    kernel_soon(notebook, "print(scatter.view)", "2d")
    assert pixel_spread(notebook.screenshot("scatter3d-2d", widget)) > MIN_SPREAD
    x, y, second = hover_a_point(page, canvas, tooltip)
    page.keyboard.down("Shift")
    page.mouse.click(x, y)
    page.keyboard.up("Shift")
    expected = sorted({hovered, second})
    page.wait_for_function(
        f"() => document.querySelector('.cnnviz-scatter3d-status').textContent.includes('{len(expected)} selected')",
        timeout=10_000,
    )
    kernel_soon(notebook, "print(scatter.selected)", str(expected))

    widget.locator(".cnnviz-scatter3d-legend-item", has_text="7").click()
    kernel_soon(notebook, "print(scatter.selected == [int(i) for i in (y == 7).nonzero()])", "True")

    # The lasso, in the 2D view as it starts: which points it holds follows from their positions alone.
    widget.get_by_role("button", name="Reset view").click()
    widget.get_by_role("button", name="Lasso").click()
    box = canvas.bounding_box()
    centre_x, centre_y = round(box["x"] + box["width"] / 2), round(box["y"] + box["height"] / 2)
    loop = [(centre_x + dx, centre_y + dy) for dx, dy in LASSO]
    positions = screen_positions_2d(notebook, canvas)
    polygon = np.array(loop, dtype=float) - [box["x"], box["y"]]
    inside = inside_polygon(positions, polygon)
    certain = distance_to_polygon(positions, polygon) > LASSO_EDGE_PX
    in_notch = inside_polygon(positions, polygon[[0, 1, 3, 4]]) & ~inside & certain
    assert (inside & certain).sum() > 20 and in_notch.sum() > 5, "the loop must hold many points and leave some out of its notch"
    selections_before = notebook.kernel_eval("print(len(selections))").strip()

    page.mouse.move(*loop[0])
    page.mouse.down()
    for x, y in [*loop[1:], loop[0]]:
        page.mouse.move(x, y, steps=8)
    notebook.screenshot("scatter3d-lasso", widget)
    page.mouse.up()
    deadline = time.monotonic() + KERNEL_WAIT_S
    while notebook.kernel_eval("print(len(selections))").strip() == selections_before:
        assert time.monotonic() < deadline, "the lasso's selection did not reach Python"
        time.sleep(0.25)
    lassoed = np.zeros(len(positions), dtype=bool)
    lassoed[json.loads(notebook.kernel_eval("print(scatter.selected)"))] = True
    wrong = np.flatnonzero((lassoed != inside) & certain)
    assert wrong.size == 0, f"points {wrong.tolist()} are {'in' if lassoed[wrong[0]] else 'out of'} the selection, wrongly"
    status = widget.locator(".cnnviz-scatter3d-status")
    assert f"{lassoed.sum():,} selected" in status.inner_text()
    notebook.screenshot("scatter3d-lassoed", widget)


def test_confusion_cell_click_reaches_python(open_notebook):
    notebook = open_notebook(NOTEBOOK)
    page = notebook.page
    dismiss_notifications(page)
    assert_nothing_wrong(notebook)
    figure = page.locator(".bqplot").first
    figure.scroll_into_view_if_needed()
    cells = figure.locator(".heatmapcell")
    assert cells.count() == 100
    notebook.screenshot("confusion", figure)
    cells.nth(3 * 10 + 5).click()  # row 3 (true 3), column 5 (predicted 5)
    kernel_soon(notebook, "print(matrix.selection)", "(3, 5)")
    notebook.screenshot("confusion-clicked", figure)
    bars = page.locator(".bqplot").nth(1)
    bars.scroll_into_view_if_needed()
    assert pixel_spread(notebook.screenshot("probabilities", bars)) > MIN_SPREAD


LARGE_NOTEBOOK = Path(__file__).parent / "notebooks" / "scatter3d_large.ipynb"
# Milliseconds of each of ``redraws`` redraws while the view turns: wheel steps drive the orbit controls. A redraw
# is timed from the start of its animation frame (the widget draws in the frame's first callback) until the
# drawing is finished: reading back one pixel waits for the GPU. Then the frame is let through to the screen.
TURNING_REDRAWS_MS = """async (canvas, redraws) => {
    const gl = canvas.getContext("webgl2");
    const pixel = new Uint8Array(4);
    const frame = () => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
    const box = canvas.getBoundingClientRect();
    const at = { clientX: box.left + box.width / 2, clientY: box.top + box.height / 2 };
    await frame();
    const times = [];
    for (let i = 0; i < redraws; i++) {
        canvas.dispatchEvent(new WheelEvent("wheel", { ...at, deltaY: i % 2 ? 60 : -60, bubbles: true, cancelable: true }));
        times.push(await new Promise((done) => requestAnimationFrame((start) => {
            gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixel);
            done(performance.now() - start);
        })));
        await frame();
    }
    return times;
}"""
# The canvas as a PNG data URL while the view turns (the frame after a wheel step) and once it has rested (the
# widget waits 150 ms and 4 frames after the last move; this waits longer on both counts).
TURNING_AND_RESTING = """async (canvas) => {
    const frame = () => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
    const box = canvas.getBoundingClientRect();
    const at = { clientX: box.left + box.width / 2, clientY: box.top + box.height / 2, bubbles: true, cancelable: true };
    await frame();
    canvas.dispatchEvent(new WheelEvent("wheel", { ...at, deltaY: -60 }));
    await frame();
    const turning = canvas.toDataURL("image/png");
    canvas.dispatchEvent(new WheelEvent("wheel", { ...at, deltaY: 60 }));
    const still = performance.now();
    for (let frames = 0; frames < 8 || performance.now() - still < 500; frames++) await frame();
    return [turning, canvas.toDataURL("image/png")];
}"""
TURNING_REDRAWS = 24
TURNING_MEDIAN_MS = 50


def test_two_hundred_thousand_and_a_million_points(open_notebook):
    notebook = open_notebook(LARGE_NOTEBOOK)
    page = notebook.page
    dismiss_notifications(page)
    assert_nothing_wrong(notebook)
    widgets = page.locator(".cnnviz-scatter3d")
    assert widgets.count() == 2

    # Level of detail at a million points: while the view turns a random sample is drawn, fast; at rest every point.
    # Hovering and picking are checked below, on the view as the turns left it.
    widgets.nth(1).scroll_into_view_if_needed()
    canvas = widgets.nth(1).locator("canvas").first
    sample = int(notebook.kernel_eval("print(huge.lod_points)"))
    assert 0 < sample < 1_000_000
    times = canvas.evaluate(TURNING_REDRAWS_MS, TURNING_REDRAWS)
    median = float(np.median(times))
    assert median < TURNING_MEDIAN_MS, f"redraws while turning take {median:.0f} ms (median of {times})"
    turning, resting = (png_pixels(url) for url in canvas.evaluate(TURNING_AND_RESTING))
    save_artifact("scatter3d_large-1M-turning", turning)
    save_artifact("scatter3d_large-1M-resting", resting)
    assert saturated(turning).sum() > MIN_POINT_PIXELS, "the sample drawn while turning is blank"
    # A sample of 1,000 points, each at most a few pixels across, covers far fewer pixels than the million.
    notebook.kernel_eval("huge.lod_points = 1000")
    kernel_soon(notebook, "print(huge.lod_points)", "1000")
    page.wait_for_timeout(500)
    turning, resting = (int(saturated(png_pixels(url)).sum()) for url in canvas.evaluate(TURNING_AND_RESTING))
    assert turning < resting / 4, f"{turning} coloured pixels turning on 1,000 points, {resting} at rest"
    notebook.kernel_eval(f"huge.lod_points = {sample}")

    for index, (name, count) in enumerate([("200k", 200_000), ("1M", 1_000_000)]):
        widget = widgets.nth(index)
        widget.scroll_into_view_if_needed()
        canvas = widget.locator("canvas").first
        status = widget.locator(".cnnviz-scatter3d-status")
        assert status.inner_text().startswith(f"{count:,} points")
        pixels = canvas_pixels(canvas)
        assert ((pixels.max(axis=2) - pixels.min(axis=2)) > SATURATED).sum() > MIN_POINT_PIXELS
        notebook.screenshot(f"scatter3d-{name}", widget)
        tooltip = widget.locator(".cnnviz-scatter3d-tooltip")
        _, _, hovered = hover_a_point(page, canvas, tooltip)
        assert 0 <= hovered < count
    assert_nothing_wrong(notebook)
