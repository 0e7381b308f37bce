"""The dashboards at the width of a notebook beside JupyterLab's file browser on a laptop (900 px of output) and
on a wide screen (1600 px): every tab is saved as tests/browser/artifacts/tab-<dashboard>-<tab>-<width>.png,
and the mistakes panel is checked with element boxes: the confusion matrix whole, the gallery not cut, neither
over the other, for 10 classes and for 100 (and at 600 px, where 100 classes scroll in the matrix's box).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from harness import assert_nothing_wrong, dismiss_notifications, save_screenshot, show_tab, wait_until_drawn

TOUR = Path(__file__).parents[2] / "notebooks" / "tour.ipynb"
HUNDRED_CLASSES = Path(__file__).parent / "notebooks" / "mistakes_100_classes.ipynb"
WIDTHS = (900, 1600)
NARROW = 600
# A tab computes its view when first shown; the Compare tab runs a dozen methods, minutes on two busy cores.
TAB_DRAWN_TIMEOUT_S = 600
# Tall enough for the tallest panel, so that each is seen whole.
WINDOW_HEIGHT = 1800
# Pixels a box may stick out of another by rounding.
SLACK = 1.0
# The gallery shows at least this many pictures side by side, beside the matrix or below it.
MIN_GALLERY_COLUMNS = 4

# Boxes of what the mistakes panel shows, relative to the page, and what the pointer would hit at the middle
# of the matrix's corner cells and of the gallery's first and last pictures.
MISTAKES_LAYOUT = """(panel) => {
    const box = (node) => {
        const r = node.getBoundingClientRect();
        return { left: r.left, right: r.right, top: r.top, bottom: r.bottom };
    };
    const hits = (node) => {
        const r = node.getBoundingClientRect();
        const found = document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2);
        return found !== null && (node === found || node.contains(found));
    };
    const figure = panel.querySelector(".bqplot.figure");
    const rows = [...figure.querySelectorAll(".heatmaprow")];
    const cells = rows.map((row) => [...row.querySelectorAll(".heatmapcell")]);
    const corners = [cells[0][0], cells[0].at(-1), cells.at(-1)[0], cells.at(-1).at(-1)];
    const cards = [...panel.querySelectorAll(".cnnviz-mistakes-gallery > *")].filter((card) => card.offsetParent !== null);
    const firstRow = cards.filter((card) => Math.abs(box(card).top - box(cards[0]).top) < 2);
    const outer = panel.closest(".cnnviz-dashboard") || panel;
    let scroller = figure.parentElement;
    while (scroller !== panel && getComputedStyle(scroller).overflowX === "visible") scroller = scroller.parentElement;
    return {
        panel: box(panel),
        dashboard: box(outer),
        figure: box(figure),
        viewport: box(scroller),
        scrolls: scroller.scrollWidth > scroller.clientWidth + 1,
        cells: cells.flat().map(box),
        columns: cells[0].length,
        cornersHit: corners.map(hits),
        gallery: box(panel.querySelector(".cnnviz-mistakes-gallery")),
        firstRow: firstRow.map(box),
        cardsHit: [firstRow[0], firstRow.at(-1)].map(hits),
    };
}"""


def inside(inner: dict, outer: dict) -> bool:
    return (
        inner["left"] >= outer["left"] - SLACK and inner["right"] <= outer["right"] + SLACK
        and inner["top"] >= outer["top"] - SLACK and inner["bottom"] <= outer["bottom"] + SLACK
    )  # fmt: skip


def overlap(a: dict, b: dict) -> bool:
    return min(a["right"], b["right"]) - max(a["left"], b["left"]) > SLACK and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > SLACK


def assert_mistakes_laid_out(panel, classes: int, width: int) -> dict:
    """The matrix whole and in view, the gallery's first and last columns in view, neither over the other."""
    panel.locator(".bqplot.figure .heatmapcell").first.wait_for(timeout=30_000)
    panel.scroll_into_view_if_needed()
    layout = panel.evaluate(MISTAKES_LAYOUT)
    where = f"{classes} classes at {width} px"
    assert layout["columns"] == classes and len(layout["cells"]) == classes * classes, where
    outside = [cell for cell in layout["cells"] if not inside(cell, layout["figure"])]
    assert not outside, f"{where}: {len(outside)} cells of the matrix lie outside its figure"
    assert inside(layout["figure"], layout["viewport"]) and not layout["scrolls"], f"{where}: the matrix does not fit its box"
    assert inside(layout["figure"], layout["dashboard"]), f"{where}: the matrix sticks out of the dashboard"
    assert all(layout["cornersHit"]), f"{where}: a corner cell of the matrix is hidden (hit: {layout['cornersHit']})"
    assert len(layout["firstRow"]) >= MIN_GALLERY_COLUMNS, f"{where}: the gallery's first row holds {len(layout['firstRow'])} pictures"
    for card in layout["firstRow"]:
        assert inside(card, layout["dashboard"]), f"{where}: a gallery column is cut: {card} outside {layout['dashboard']}"
        assert not overlap(card, layout["figure"]), f"{where}: a gallery column lies over the matrix"
    assert all(layout["cardsHit"]), f"{where}: the gallery's first or last column is hidden (hit: {layout['cardsHit']})"
    return layout


def save_every_tab(notebook, dashboard, name: str, width: int, only=None) -> list[str]:
    """Show each tab of the dashboard (or those of ``only``), wait until it is drawn, save it; returns the tabs'
    titles."""
    dashboard.scroll_into_view_if_needed()
    titles = [title.strip() for title in dashboard.locator(".lm-TabBar-tab").all_text_contents()]
    cut = dashboard.locator(".lm-TabBar-tabLabel").evaluate_all(
        "(labels) => labels.filter((label) => label.scrollWidth > label.clientWidth).map((label) => label.textContent)"
    )
    assert cut == [], f"tab titles cut at {width} px"
    for title in titles if only is None else [title for title in titles if title in only]:
        panel = show_tab(dashboard, title)
        wait_until_drawn(panel, TAB_DRAWN_TIMEOUT_S)
        dashboard.scroll_into_view_if_needed()
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        save_screenshot(f"tab-{name}-{slug}-{width}", dashboard)
    return titles


def test_tour_dashboards_at_900_and_1600_px(open_notebook, tmp_path):
    copy = tmp_path / "tour_layout.ipynb"
    shutil.copy(TOUR, copy)
    notebook = open_notebook(copy, viewport=(1300, WINDOW_HEIGHT))
    dismiss_notifications(notebook.page)
    assert_nothing_wrong(notebook)
    dashboards = notebook.page.locator(".cnnviz-dashboard")
    for width in WIDTHS:
        notebook.set_output_width(width)
        assert save_every_tab(notebook, dashboards.nth(0), "photos", width)[0] == "Projector"
        digits = dashboards.nth(1)
        assert "Mistakes" in save_every_tab(notebook, digits, "digits", width)
        layout = assert_mistakes_laid_out(show_tab(digits, "Mistakes"), 10, width)
        if width == max(WIDTHS):
            assert layout["figure"]["right"] <= layout["gallery"]["left"], "with room to spare, the gallery sits beside the matrix"
    assert_nothing_wrong(notebook)


def test_a_hundred_classes_at_900_and_1600_px(open_notebook):
    notebook = open_notebook(HUNDRED_CLASSES, viewport=(1300, WINDOW_HEIGHT))
    dismiss_notifications(notebook.page)
    assert_nothing_wrong(notebook)
    dashboard = notebook.page.locator(".cnnviz-dashboard").first
    for width in WIDTHS:
        notebook.set_output_width(width)
        # The tabs where the number of classes shows: the tour saves every tab of real models.
        save_every_tab(notebook, dashboard, "100-classes", width, only=("Mistakes", "Diagnose", "Projector", "Grad-CAM"))
        assert_mistakes_laid_out(show_tab(dashboard, "Mistakes"), 100, width)

    # Narrower than the matrix, the matrix scrolls in its own box, inside the dashboard; the gallery is whole.
    notebook.set_output_width(NARROW)
    panel = show_tab(dashboard, "Mistakes")
    panel.scroll_into_view_if_needed()
    save_screenshot(f"tab-100-classes-mistakes-{NARROW}", dashboard)
    layout = panel.evaluate(MISTAKES_LAYOUT)
    assert layout["scrolls"] and inside(layout["viewport"], layout["dashboard"]), f"at {NARROW} px the matrix must scroll in its box"
    assert len(layout["firstRow"]) >= MIN_GALLERY_COLUMNS and all(inside(card, layout["dashboard"]) for card in layout["firstRow"])
    assert all(layout["cardsHit"]), f"at {NARROW} px the gallery's first or last column is hidden"

    # Cells too small for their count show it, with the two classes' whole names, when the pointer rests on them.
    true, predicted, count = json.loads(notebook.kernel_eval(
        "import json, numpy as np\nconfusion = many.panels['Mistakes'].matrix.confusion\n"
        "true, predicted = np.unravel_index((confusion - 1000 * np.eye(100, dtype=int)).argmax(), confusion.shape)\n"
        "print(json.dumps([int(true), int(predicted), int(confusion[true, predicted])]))"
    ))  # fmt: skip
    names = json.loads(notebook.kernel_eval("print(json.dumps(class_names))"))
    panel = show_tab(dashboard, "Mistakes")
    panel.locator(".heatmaprow").nth(true).locator(".heatmapcell").nth(predicted).hover()
    tooltip = notebook.page.locator(".bqplot_tooltip_div").filter(visible=True).first
    tooltip.wait_for(timeout=5_000)
    shown = tooltip.inner_text()
    assert names[true] in shown and names[predicted] in shown and str(count) in shown, shown
    save_screenshot("tab-100-classes-mistakes-tooltip", panel)
    assert_nothing_wrong(notebook)


DIAGNOSE_DIGITS = Path(__file__).parent / "notebooks" / "diagnose_digits.ipynb"
# Boxes of the Diagnose tab's cards and of the heatmap clusters' pictures and plot, relative to the page.
DIAGNOSE_LAYOUT = """(panel) => {
    const box = (node) => {
        const r = node.getBoundingClientRect();
        return { left: r.left, right: r.right, top: r.top, bottom: r.bottom };
    };
    const shown = (selector) => [...panel.querySelectorAll(selector)].filter((node) => node.offsetParent !== null);
    return {
        dashboard: box(panel.closest(".cnnviz-dashboard")),
        list: box(panel.querySelector(".cnnviz-diagnose-cards")),
        cards: shown(".cnnviz-diagnose-card").map(box),
        pictures: shown(".cnnviz-diagnose-card img, .cnnviz-diagnose-cluster img").map(box),
        eigengap: shown(".cnnviz-diagnose-eigengap").map(box),
    };
}"""


def test_diagnose_tab_at_900_and_1600_px(open_notebook):
    notebook = open_notebook(DIAGNOSE_DIGITS, viewport=(1300, WINDOW_HEIGHT))
    dismiss_notifications(notebook.page)
    assert_nothing_wrong(notebook)
    dashboard = notebook.page.locator(".cnnviz-dashboard").first
    panel = show_tab(dashboard, "Diagnose")
    wait_until_drawn(panel, TAB_DRAWN_TIMEOUT_S)
    panel.locator(".cnnviz-diagnose-cluster-run").click()
    panel.locator(".cnnviz-diagnose-cluster img").first.wait_for(timeout=60_000)
    for width in WIDTHS:
        notebook.set_output_width(width)
        panel = show_tab(dashboard, "Diagnose")
        wait_until_drawn(panel, TAB_DRAWN_TIMEOUT_S)
        dashboard.scroll_into_view_if_needed()
        save_screenshot(f"tab-diagnose-digits-diagnose-{width}", dashboard)
        layout = panel.evaluate(DIAGNOSE_LAYOUT)
        assert layout["cards"] and layout["eigengap"], f"at {width} px: no cards or no eigengap plot"
        for item in [layout["list"], *layout["eigengap"]]:
            assert inside(item, layout["dashboard"]), f"at {width} px: {item} is cut by the dashboard {layout['dashboard']}"
        # The cards scroll up and down in their list; none is cut on the sides.
        for item in layout["cards"] + layout["pictures"]:
            across = item["left"] >= layout["list"]["left"] - SLACK and item["right"] <= layout["list"]["right"] + SLACK
            assert across, f"at {width} px: {item} sticks out of the list {layout['list']}"
    assert_nothing_wrong(notebook)
