"""Scatter3D and the charts in real JupyterLab: the cloud is drawn, hovering shows a point, clicks reach Python."""

from __future__ import annotations

import base64
import io
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import pixel_spread

NOTEBOOK = Path(__file__).parent / "notebooks" / "scatter3d.ipynb"
MIN_SPREAD = 10.0
MIN_POINT_PIXELS = 2_000
SATURATED = 80  # max - min channel: a palette colour, not the white background or the grey box
TINTED = 20  # max - min channel of a point faded behind a selection: still tinted, unlike the background
KERNEL_WAIT_S = 15


def kernel_soon(notebook, code: str, expected: str) -> None:
    """Wait until ``code`` prints ``expected`` in the kernel: the widget manager holds back an update while
    an earlier one is still being processed, so a change made in the page reaches Python a moment later."""
    deadline = time.monotonic() + KERNEL_WAIT_S
    while (seen := notebook.kernel_eval(code).strip()) != expected:
        assert time.monotonic() < deadline, f"{code} gives {seen!r}, expected {expected!r}"
        time.sleep(0.25)


def canvas_pixels(canvas) -> np.ndarray:
    """The WebGL canvas's own pixels (H, W, 3), without the DOM drawn over it (legend, tooltip)."""
    url = canvas.evaluate("(c) => c.toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"), dtype=np.int16)


def point_centres(pixels: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Pixels deep inside drawn points: tinted, with every neighbour within 2 pixels tinted too (points that
    a selection fades count: they can still be hovered)."""
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > TINTED
    core = coloured.copy()
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            core &= np.roll(np.roll(coloured, dy, axis=0), dx, axis=1)
    rows, columns = np.nonzero(core[3:-3, 3:-3])
    order = np.random.default_rng(0).permutation(len(rows))[:count]
    return [(int(columns[i]) + 3, int(rows[i]) + 3) for i in order]


def hover_a_point(page, canvas, tooltip) -> tuple[float, float, int]:
    """Move the pointer over drawn points until the tooltip shows one -> (x, y, point index)."""
    box = canvas.bounding_box()
    pixels = canvas_pixels(canvas)
    scale = pixels.shape[1] / box["width"]
    for column, row in point_centres(pixels, 40):
        x, y = box["x"] + column / scale, box["y"] + row / scale
        page.mouse.move(x - 30, y - 30)
        page.mouse.move(x, y, steps=3)
        if tooltip.is_visible():
            return x, y, int(re.search(r"#(\d+)", tooltip.inner_text()).group(1))
    raise AssertionError("no tooltip appeared over any drawn point")


def dismiss_notifications(page) -> None:
    """JupyterLab's first-run news toast sits over the bottom right corner of the outputs."""
    toast = page.get_by_role("button", name="No")
    if toast.count() and toast.first.is_visible():
        toast.first.click()


def test_scatter_is_drawn_hovers_and_selects(open_notebook):
    notebook = open_notebook(NOTEBOOK)
    page = notebook.page
    dismiss_notifications(page)
    assert notebook.errors_shown() == []

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
    widget.locator("select.cnnviz-scatter3d-select").select_option("label")

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

    widget.get_by_role("button", name="Lasso").click()
    box = canvas.bounding_box()
    centre_x, centre_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(centre_x - 150, centre_y - 120)
    page.mouse.down()
    for dx, dy in [(150, -120), (150, 120), (-150, 120), (-150, -120)]:
        page.mouse.move(centre_x + dx, centre_y + dy, steps=8)
    notebook.screenshot("scatter3d-lasso", widget)
    page.mouse.up()
    status = widget.locator(".cnnviz-scatter3d-status")
    page.wait_for_function("(node) => !node.textContent.includes(' 45 selected')", arg=status.element_handle())
    lassoed = int(re.search(r"([\d,]+) selected", status.inner_text()).group(1).replace(",", ""))
    assert 0 < lassoed < 450
    kernel_soon(notebook, "print(len(scatter.selected))", str(lassoed))
    notebook.screenshot("scatter3d-lassoed", widget)


def test_confusion_cell_click_reaches_python(open_notebook):
    notebook = open_notebook(NOTEBOOK)
    page = notebook.page
    dismiss_notifications(page)
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
REDRAWS = 12


def redraw_time_ms(canvas) -> float:
    """Mean time per redraw while zooming: wheel steps drive the orbit controls, each frame is awaited."""
    return canvas.evaluate(
        """async (canvas, redraws) => {
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
        }""",
        REDRAWS,
    )


def test_two_hundred_thousand_and_a_million_points(open_notebook):
    notebook = open_notebook(LARGE_NOTEBOOK)
    page = notebook.page
    dismiss_notifications(page)
    assert notebook.errors_shown() == []
    widgets = page.locator(".cnnviz-scatter3d")
    assert widgets.count() == 2
    for index, (name, count) in enumerate([("200k", 200_000), ("1M", 1_000_000)]):
        widget = widgets.nth(index)
        widget.scroll_into_view_if_needed()
        canvas = widget.locator("canvas").first
        status = widget.locator(".cnnviz-scatter3d-status")
        assert status.inner_text().startswith(f"{count:,} points")
        pixels = canvas_pixels(canvas)
        assert ((pixels.max(axis=2) - pixels.min(axis=2)) > SATURATED).sum() > MIN_POINT_PIXELS
        milliseconds = redraw_time_ms(canvas)
        print(f"{name} points: {milliseconds:.0f} ms per redraw")
        notebook.screenshot(f"scatter3d-{name}", widget)
        tooltip = widget.locator(".cnnviz-scatter3d-tooltip")
        _, _, hovered = hover_a_point(page, canvas, tooltip)
        assert 0 <= hovered < count
