"""The panels in real JupyterLab: every view is drawn, a control's change repaints the right picture, clicks link
the views.

Both tests run the tour notebook: its first dashboard holds the photos and EfficientNet-Lite0, its second the
digits with their labels. How fast pictures repaint is measured by bench/bench_browser.py, not here: here each
change must show the picture of what was chosen, and the last of several quick changes must win.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
from harness import (
    assert_nothing_wrong,
    canvas_pixels,
    dismiss_notifications,
    hover_a_point,
    pixel_spread,
    repaint_after_change,
    save_screenshot,
    show_tab,
    wait_until_drawn,
)

TOUR = Path(__file__).parents[2] / "notebooks" / "tour.ipynb"
MIN_PICTURE_SPREAD = 8.0
# A repaint, even an uncached one (a fresh forward and backward pass of EfficientNet-Lite0), is a matter of
# tenths of a second; this bound only catches a repaint that never comes.
REPAINT_TIMEOUT_MS = 10_000

PICTURE_DIGEST = """async (picture) => {
    const bytes = await (await fetch(picture.src)).arrayBuffer();
    const digest = await crypto.subtle.digest("SHA-256", bytes);
    return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}"""

BLOCK = 8
# A picture's mean colour over each BLOCK x BLOCK square, as the browser decoded it. The maps are computed on
# the fast copy, whose first calls try memory formats and thread counts that round differently: two
# computations of one map can differ in a few pixels by one colormap step, never a whole block.
PICTURE_BLOCKS = """async (picture) => {
    const image = new Image();
    image.src = picture.src;
    await image.decode();
    const canvas = document.createElement("canvas");
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const { data, width, height } = context.getImageData(0, 0, canvas.width, canvas.height);
    const block = %d, rows = Math.floor(height / block), columns = Math.floor(width / block);
    const means = new Array(rows * columns * 3).fill(0);
    for (let y = 0; y < rows * block; y++) {
        for (let x = 0; x < columns * block; x++) {
            const cell = (Math.floor(y / block) * columns + Math.floor(x / block)) * 3;
            for (let c = 0; c < 3; c++) means[cell + c] += data[(y * width + x) * 4 + c] / (block * block);
        }
    }
    return means;
}""" % BLOCK
WORKING_THREADS = "sorted(t.name for t in __import__('threading').enumerate() if t.name in ('cnnviz-weights-watch', 'cnnviz-panel-task'))"
"""Kernel code listing the threads that follow a model's weights or compute a panel's views."""
BLOCK_TOLERANCE = 2.0
"""Largest difference of a block's mean colour, in levels of 255, between the picture shown and the expected one."""

# Kernel code printing the block means of the Grad-CAM overlay that ``panel`` should show on the left, for
# image ``image``, computed by the public function, not by the panel.
GRAD_CAM_BLOCKS = """import json
import numpy as np
panel = {panel}
image = {image}
view = panel.session.view(image)
cam = cw.grad_cam(panel.session.model, panel.session.input(image), panel.layer, panel.target)
picture = np.asarray(cw.render.overlay(view, cam, panel.opacity.value, panel.cmap.value), dtype=np.float64)[..., :3]
rows, columns = picture.shape[0] // {block}, picture.shape[1] // {block}
blocks = picture[: rows * {block}, : columns * {block}].reshape(rows, {block}, columns, {block}, 3).mean(axis=(1, 3))
print(json.dumps(blocks.ravel().tolist()))"""

# Count the pictures ``picture`` shows (each change of its src) and keep each caption ``label`` takes.
RECORD_PICTURES_AND_CAPTIONS = """([picture, label]) => {
    window.cnnvizPictures = 0;
    window.cnnvizCaptions = [];
    new MutationObserver(() => { window.cnnvizPictures += 1; }).observe(picture, { attributes: true, attributeFilter: ["src"] });
    new MutationObserver(() => { window.cnnvizCaptions.push(label.innerText); })
        .observe(label, { childList: true, subtree: true, characterData: true });
}"""

# Choose several options one after the other, without waiting for any repaint.
CHANGE_QUICKLY = """([select, indices]) => {
    for (const index of indices) {
        select.selectedIndex = index;
        select.dispatchEvent(new Event("change", { bubbles: true }));
    }
}"""


def assert_pictures_not_blank(notebook, panel, label: str, selector: str) -> None:
    pictures = panel.locator(selector).filter(visible=True)
    assert pictures.count() > 0, f"{label}: no picture matches {selector}"
    for index in range(pictures.count()):
        shot = notebook.screenshot(f"{label}-{index}", pictures.nth(index))
        assert pixel_spread(shot) > MIN_PICTURE_SPREAD, f"{label}: picture {index} is blank"


def assert_kernel_soon(notebook, expression: str, expected: str, timeout_s: float = 10.0) -> None:
    """A click reaches the kernel as a widget message some milliseconds later: poll until it has."""
    deadline = time.monotonic() + timeout_s
    while (value := notebook.kernel_eval(expression)) != expected:
        assert time.monotonic() < deadline, f"{expression} is {value}, expected {expected}"
        time.sleep(0.2)


def assert_shows_soon(picture, digest: str, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while picture.evaluate(PICTURE_DIGEST) != digest:
        assert time.monotonic() < deadline, f"the picture shown is not {what}"
        time.sleep(0.25)


def assert_shows_soon_about(picture, expected_blocks: list[float], what: str, timeout_s: float = 30.0) -> None:
    """The picture shown comes to match ``expected_blocks`` (see ``PICTURE_BLOCKS``) within ``BLOCK_TOLERANCE``."""
    expected = np.asarray(expected_blocks)
    deadline = time.monotonic() + timeout_s
    while True:
        shown = np.asarray(picture.evaluate(PICTURE_BLOCKS))
        difference = float(np.abs(shown - expected).max()) if shown.shape == expected.shape else float("inf")
        if difference <= BLOCK_TOLERANCE:
            return
        assert time.monotonic() < deadline, f"the picture shown is not {what} (a block differs by {difference:.1f})"
        time.sleep(0.25)


def grad_cam_blocks(notebook, panel: str, image: str) -> list[float]:
    return json.loads(notebook.kernel_eval(GRAD_CAM_BLOCKS.format(panel=panel, image=image, block=BLOCK)).strip())


def assert_grad_cam_of_the_chosen_class(notebook, panel, select, index: int) -> None:
    """The kernel's class is option ``index``; the left picture is its Grad-CAM, labelled with the option's text."""
    value, text = select.evaluate("(s, i) => [s.options[i].value, s.options[i].textContent]", index)
    # ipywidgets writes an option's spaces as no-break spaces, so that the browser keeps them all.
    text = text.replace("\xa0", " ")
    assert notebook.kernel_eval("dashboard.grad_cam.class_chooser.index") == str(index)
    expected = grad_cam_blocks(notebook, "dashboard.grad_cam", "dashboard.grad_cam.image")
    assert_shows_soon_about(panel.locator(".cnnviz-grad-cam-left"), expected, f"the Grad-CAM of option {index} ({text})")
    label = panel.locator(".cnnviz-grad-cam-left").locator("xpath=..").locator(".widget-html").first
    assert label.inner_text().splitlines()[0] == text, f"option {value}: the label says {label.inner_text()!r}"


def open_tour_dashboard(open_notebook, tmp_path, name: str, index: int):
    """Run the tour under another name (JupyterLab gives each notebook path its own kernel, so tests do not
    share one) and return the notebook and its ``index``-th dashboard, scrolled into view, with nothing wrong."""
    copy = tmp_path / f"{name}.ipynb"
    shutil.copy(TOUR, copy)
    notebook = open_notebook(copy, viewport=(1500, 1100))
    dismiss_notifications(notebook.page)
    assert_nothing_wrong(notebook)
    dashboard = notebook.page.locator(".cnnviz-dashboard").nth(index)
    dashboard.scroll_into_view_if_needed()
    return notebook, dashboard


def test_photo_dashboard_every_panel_drawn_changes_repaint_in_order_and_a_long_occlusion_stops(open_notebook, tmp_path):
    notebook, dashboard = open_tour_dashboard(open_notebook, tmp_path, "tour_photos", 0)
    page = notebook.page

    views = {
        "Projector": "canvas",
        "Grad-CAM": ".cnnviz-grad-cam-left, .cnnviz-grad-cam-right",
        "Feature maps": ".cnnviz-feature-grid img, .cnnviz-feature-zoom",
        "Occlusion": ".cnnviz-occlusion-scores, .cnnviz-occlusion-attribution, .cnnviz-occluder img",
        "Guided backprop": ".cnnviz-guided, .cnnviz-guided-grad-cam",
    }
    for title, selector in views.items():
        panel = show_tab(dashboard, title)
        wait_until_drawn(panel)
        notebook.screenshot(f"panel-{title.lower().replace(' ', '-')}", panel)
        assert_pictures_not_blank(notebook, panel, f"photos-{title.lower().replace(' ', '-')}", selector)

    panel = show_tab(dashboard, "Filters")
    wait_until_drawn(panel)
    panel.locator(".cnnviz-find-patterns").click()
    panel.get_by_text("(done)").wait_for(timeout=120_000)
    wait_until_drawn(panel)
    notebook.screenshot("panel-filters", panel)
    assert_pictures_not_blank(notebook, panel, "photos-filters", ".cnnviz-filter-weights, .cnnviz-filter-patterns")

    # Each change of class repaints the left picture with that class's Grad-CAM, under that class's name: the
    # top classes (computed ahead) and classes far down the list (computed on the spot) alike.
    panel = show_tab(dashboard, "Grad-CAM")
    wait_until_drawn(panel)
    classes = panel.locator(".cnnviz-class-chooser select").first
    left = panel.locator(".cnnviz-grad-cam-left")
    for index in (1, 2, 300):
        repaint_after_change(page, classes, left, index, REPAINT_TIMEOUT_MS)
        assert_grad_cam_of_the_chosen_class(notebook, panel, classes, index)
    # Quick changes: the last one wins. Once the panel is idle it sends nothing more, and widget messages
    # arrive in order: the last change's picture on screen means no older one came after it.
    page.evaluate(CHANGE_QUICKLY, [classes.element_handle(), [3, 310, 4, 5]])
    assert_kernel_soon(notebook, "dashboard.grad_cam.class_chooser.index", "5")
    assert notebook.kernel_eval("dashboard.grad_cam.wait(60)") == "True"
    assert_grad_cam_of_the_chosen_class(notebook, panel, classes, 5)

    panel = show_tab(dashboard, "Feature maps")
    wait_until_drawn(panel)
    layers = panel.locator(".cnnviz-layer-chooser select")
    grid = panel.locator(".cnnviz-feature-grid img")
    for index in (3, 21, 39):
        repaint_after_change(page, layers, grid, index, REPAINT_TIMEOUT_MS)
        assert notebook.kernel_eval("maps = dashboard.panels['Feature maps']; maps.layer_chooser.index") == str(index)
    colours = panel.locator(".widget-dropdown select").filter(has=page.locator("option", has_text="magma"))
    repaint_after_change(page, colours, grid, 2, REPAINT_TIMEOUT_MS)
    notebook.screenshot("panel-feature-maps-recoloured", panel)

    panel = show_tab(dashboard, "Occlusion")
    wait_until_drawn(panel)
    scores = panel.locator(".cnnviz-occlusion-scores")
    # Every new map picture, with the caption under it when it arrived (the two come in one message batch,
    # in either order: each caption change is recorded too).
    page.evaluate(RECORD_PICTURES_AND_CAPTIONS, [scores.element_handle(), panel.locator(".cnnviz-occlusion-scores-label").element_handle()])
    notebook.kernel_eval("occlusion = dashboard.panels['Occlusion']; occlusion.window.value = 32; occlusion.stride.value = 8")
    page.wait_for_function("() => window.cnnvizCaptions.some((caption) => caption.includes('25×25 places:'))", timeout=120_000)
    captions = page.evaluate("window.cnnvizCaptions")
    first_fine = next(i for i, caption in enumerate(captions) if "25×25 places:" in caption)
    coarse = [caption for caption in captions[:first_fine] if "25×25 places (coarse" in caption]
    assert [caption.split("(coarse: ")[1].split(" of")[0] for caption in coarse] == ["16", "49", "169"], captions
    assert page.evaluate("window.cnnvizPictures") >= 4, "a picture per level: 4×4, 7×7, 13×13, then the whole map"

    shown_before = scores.get_attribute("src")
    notebook.kernel_eval("occlusion.stride.value = 2")
    progress = panel.locator(".cnnviz-task-bar")
    progress.wait_for(state="visible", timeout=10_000)
    panel.get_by_text("97×97 places (coarse").wait_for(timeout=60_000)
    notebook.screenshot("panel-occlusion-coarse", panel)
    panel.locator(".cnnviz-stop").click()
    progress.wait_for(state="hidden", timeout=10_000)
    assert notebook.kernel_eval("occlusion.long_runner.wait(10) and not occlusion.long_runner.busy") == "True"
    assert scores.get_attribute("src") != shown_before, "the coarse map of the stopped run stays on screen"
    # The run has ended: what the kernel last sent is what stays on screen.
    digest = notebook.kernel_eval("import hashlib; print(hashlib.sha256(occlusion.scores_view.value).hexdigest())").strip()
    assert_shows_soon(scores, digest, "the stopped run's last map")

    notebook.kernel_eval("occlusion.stride.value = 28")
    wait_until_drawn(panel)
    shown_before = scores.get_attribute("src")
    panel.locator(".cnnviz-occlusion-fill select").select_option("grey")
    page.wait_for_function("([picture, before]) => picture.src !== before && picture.complete", arg=[scores.element_handle(), shown_before], timeout=60_000)
    wait_until_drawn(panel)
    assert "filled grey" in panel.inner_text()
    assert notebook.kernel_eval("occlusion.error") == "''"
    notebook.screenshot("panel-occlusion-after-stop", panel)
    assert_nothing_wrong(notebook)


def test_digit_dashboard_a_projector_point_or_a_mistake_becomes_the_grad_cam_image(open_notebook, tmp_path):
    notebook, dashboard = open_tour_dashboard(open_notebook, tmp_path, "tour_digits", 1)
    page = notebook.page

    panel = show_tab(dashboard, "Mistakes")
    wait_until_drawn(panel)
    panel.locator(".bqplot").first.wait_for(timeout=30_000)
    notebook.screenshot("panel-mistakes", panel)
    assert_pictures_not_blank(notebook, panel, "digits-mistakes", ".cnnviz-mistakes-gallery img")
    panel.locator(".cnnviz-mistakes-gallery img").nth(2).click()
    chosen = int(notebook.kernel_eval("int(digits.panels['Mistakes'].shown[2])"))
    assert_kernel_soon(notebook, "digits.image", str(chosen))

    panel = show_tab(dashboard, "Projector")
    wait_until_drawn(panel)
    canvas = panel.locator("canvas").first
    tooltip = panel.locator(".cnnviz-scatter3d-tooltip")
    x, y, hovered = hover_a_point(page, canvas, tooltip)
    page.mouse.click(x, y)
    notebook.screenshot("panel-projector-digits", panel)
    assert_kernel_soon(notebook, "digits.panels['Projector'].scatter.selected", f"[{hovered}]")
    assert notebook.kernel_eval("digits.image") == str(hovered)
    # Its 12 nearest images in the embedding space (cosine), nearest first, as thumbnails.
    nearest = (
        "import numpy as np\n"
        "projector = digits.panels['Projector']\n"
        "embeddings = projector.session.embeddings(None).astype(np.float64)\n"
        "unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)\n"
        f"order = [int(i) for i in np.argsort(-(unit @ unit[{hovered}]), kind='stable') if i != {hovered}][:12]\n"
        "order == projector.neighbours"
    )
    assert_kernel_soon(notebook, nearest, "True", timeout_s=30)
    wait_until_drawn(panel)
    assert panel.locator(".cnnviz-neighbours img").filter(visible=True).count() == 12
    assert_pictures_not_blank(notebook, panel, "digits-neighbours", ".cnnviz-neighbours img")
    notebook.screenshot("panel-projector-neighbours", panel)

    # t-SNE forms on screen: the points move between the frames the scatter shows before the fit ends.
    panel.get_by_role("button", name="t-SNE").click()
    summary = panel.locator(".cnnviz-projector-summary")
    frames = {}
    deadline = time.monotonic() + 600
    while "forming" in (text := summary.inner_text()) or "t-SNE" not in text:
        assert time.monotonic() < deadline, f"t-SNE did not end: {text}"
        forming = re.search(r"forming: iteration (\d+)", text)
        if forming and forming.group(1) not in frames:
            frames[forming.group(1)] = canvas_pixels(canvas).astype(np.int16)
    assert len(frames) >= 2, f"frames seen while t-SNE formed: {list(frames)}"
    pictures = list(frames.values())
    moves = [float(np.abs(after - before).mean()) for before, after in zip(pictures, pictures[1:])]
    assert max(moves) > 0.5, f"the scatter did not change between frames: {moves}"
    notebook.screenshot("panel-projector-tsne", panel)

    panel = show_tab(dashboard, "Grad-CAM")
    wait_until_drawn(panel)
    expected = grad_cam_blocks(notebook, "digits.grad_cam", str(hovered))
    assert_shows_soon_about(panel.locator(".cnnviz-grad-cam-left"), expected, "the Grad-CAM of the chosen point's image")
    notebook.screenshot("panel-grad-cam-digits", panel)
    assert f"image <b>{hovered}</b>" in panel.inner_html()

    # Compare: every method's map, each with its curves and both scores; then one map's sanity check.
    panel = show_tab(dashboard, "Compare")
    assert notebook.kernel_eval("compare = digits.panels['Compare']; compare.wait(600)") == "True"
    wait_until_drawn(panel)
    methods = int(notebook.kernel_eval("len(cw.methods.EXPLANATIONS)"))
    cards = panel.locator(".cnnviz-compare-card")
    assert cards.count() == methods
    notebook.screenshot("panel-compare-digits", panel)
    assert_pictures_not_blank(notebook, panel, "digits-compare", ".cnnviz-compare-card img")
    assert panel.locator(".cnnviz-compare-card img").filter(visible=True).count() == 2 * methods, "a map and its curves per method"
    texts = cards.all_inner_texts()
    assert all("deletion AUC" in text and "insertion AUC" in text for text in texts), texts
    cards.first.get_by_role("button", name="sanity check").click()
    strip = panel.locator(".cnnviz-sanity-strip")
    strip.wait_for(state="visible", timeout=300_000)
    wait_until_drawn(panel)
    assert "sanity check of Grad-CAM" in panel.inner_text()
    assert "it depends on what the model learned" in panel.inner_text()
    assert_pictures_not_blank(notebook, panel, "digits-sanity", ".cnnviz-sanity-strip")
    notebook.screenshot("panel-compare-sanity-digits", panel)
    assert_nothing_wrong(notebook)

    # Outputs cleared, as when the cells run again: nobody sees the dashboards, which stop following their
    # models and end their threads; the browser said so through each dashboard's Presence view.
    assert notebook.kernel_eval("digits.presence.views, dashboard.presence.views") == "(1, 1)"
    notebook.page.evaluate("window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    assert_kernel_soon(notebook, "digits.presence.gone, dashboard.presence.gone, digits.presence.views", "(True, True, 0)")
    assert_kernel_soon(notebook, WORKING_THREADS, "[]", timeout_s=20.0)


DIAGNOSE_DIGITS = Path(__file__).parent / "notebooks" / "diagnose_digits.ipynb"


def opened_dashboard(open_notebook, path: Path, viewport: tuple[int, int]):
    """The notebook at ``path`` run in the browser, nothing wrong on it, and its first dashboard in view."""
    notebook = open_notebook(path, viewport=viewport)
    dismiss_notifications(notebook.page)
    assert_nothing_wrong(notebook)
    dashboard = notebook.page.locator(".cnnviz-dashboard").first
    dashboard.scroll_into_view_if_needed()
    return notebook, dashboard


def test_diagnose_tab_shows_cards_a_card_opens_its_images_in_the_gallery_and_the_export_holds_the_planted_suspects(open_notebook):
    notebook, dashboard = opened_dashboard(open_notebook, DIAGNOSE_DIGITS, (1500, 1100))

    panel = show_tab(dashboard, "Diagnose")
    wait_until_drawn(panel, 300)
    cards = panel.locator(".cnnviz-diagnose-card")
    assert cards.count() >= 3
    notebook.screenshot("panel-diagnose", panel)
    assert_pictures_not_blank(notebook, panel, "diagnose-cards", ".cnnviz-diagnose-card img")
    texts = cards.all_inner_texts()
    assert any("label issues" in text for text in texts), texts

    # The first card's images: the gallery lists exactly them, under a line saying which finding they are.
    before = notebook.kernel_eval("print(board.panels['Mistakes'].shown.tolist())").strip()
    members = notebook.kernel_eval(
        "card = board.panels['Diagnose']._cards[0]\n"
        "_, first = np.unique(card.members, return_index=True)\n"
        "print(card.members[np.sort(first)].tolist())"
    ).strip()
    assert members != before
    cards.first.locator(".cnnviz-diagnose-open").click()
    assert_kernel_soon(notebook, "print(board.panels['Mistakes'].shown.tolist())", members + "\n")
    gallery = show_tab(dashboard, "Mistakes")
    showing = gallery.locator(".cnnviz-mistakes-showing")
    showing.wait_for(state="visible", timeout=10_000)
    assert "showing:" in showing.inner_text()
    wait_until_drawn(gallery)
    count = len(json.loads(members))
    assert gallery.locator(".cnnviz-mistakes-gallery img").filter(visible=True).count() == min(count, 24)
    notebook.screenshot("panel-diagnose-opened", gallery)

    # Export: the CSV, next to the notebook, holds the planted label errors.
    panel = show_tab(dashboard, "Diagnose")
    panel.locator(".cnnviz-diagnose-export").click()
    panel.get_by_text("suspects saved to").wait_for(timeout=10_000)
    found = notebook.kernel_eval(
        "import pandas as pd\n"
        "table = pd.read_csv('diagnose-suspects.csv')\n"
        "suspects = set(table.loc[table['kind'] == 'label issue', 'index'])\n"
        "print(len(suspects & set(flipped.tolist())), len(flipped))"
    ).split()
    assert int(found[0]) >= 0.9 * int(found[1]), f"{found[0]} of the {found[1]} planted label errors exported"
    assert_nothing_wrong(notebook)


CHANGES_DIGITS = Path(__file__).parent / "notebooks" / "changes_digits.ipynb"


def test_changes_tab_draws_every_view_and_a_click_on_a_flip_shows_both_models_maps(open_notebook):
    # Tall enough for the whole tab at 900 px, where its views stand one under the other.
    notebook, dashboard = opened_dashboard(open_notebook, CHANGES_DIGITS, (1300, 2600))
    panel = show_tab(dashboard, "Changes")
    wait_until_drawn(panel, 300)
    panel.locator(".cnnviz-changes-cka .heatmapcell").first.wait_for(timeout=120_000)
    wait_until_drawn(panel, 120)
    assert "negative flip rate" in panel.locator(".cnnviz-changes-summary").inner_text()
    # Every view drawn: the bars, both heatmaps' cells, the flips, both models' maps, both layers' maps.
    assert panel.locator(".cnnviz-changes-bars .bar").count() >= 5
    assert panel.locator(".cnnviz-changes-confusion .heatmapcell").count() == 100
    assert panel.locator(".cnnviz-changes-cka .heatmapcell").count() == 9
    for label, selector in (
        ("changes-flips", ".cnnviz-changes-flips img"),
        ("changes-maps", ".cnnviz-changes-maps img"),
        ("changes-layer-maps", ".cnnviz-changes-layer-maps img"),
    ):
        assert_pictures_not_blank(notebook, panel, label, selector)
    for selector in (".cnnviz-changes-bars", ".cnnviz-changes-confusion", ".cnnviz-changes-cka"):
        shot = notebook.screenshot(f"changes{selector.replace('.cnnviz-changes', '')}", panel.locator(selector).first)
        assert pixel_spread(shot) > MIN_PICTURE_SPREAD, f"{selector} is blank"

    # A click on a flip: it becomes the current image, and both models' maps of it show, two rows of classes.
    flips = json.loads(notebook.kernel_eval("print(board.panels['Changes'].shown_flips.tolist())"))
    panel.locator(".cnnviz-changes-flips img").first.click()
    assert_kernel_soon(notebook, "print(board.image, board.panels['Changes']._maps.image)", f"{flips[0]} {flips[0]}\n", timeout_s=30)
    wait_until_drawn(panel, 60)
    classes = int(notebook.kernel_eval("print(len(board.panels['Changes']._maps.classes))"))
    assert panel.locator(".cnnviz-changes-maps img").filter(visible=True).count() == 2 * classes
    assert_pictures_not_blank(notebook, panel, "changes-flip-maps", ".cnnviz-changes-maps img")
    texts = panel.locator(".cnnviz-changes-maps").inner_text()
    assert "reference" in texts and "this model" in texts

    # A click on the CKA heatmap's first cell: the first layers of both models.
    panel.locator(".cnnviz-changes-cka .heatmapcell").first.click()
    assert_kernel_soon(
        notebook, "p = board.panels['Changes']._layer_pair; print(p.layer_a, p.layer_b)", "features.conv1 features.conv1\n", timeout_s=30
    )
    for width in (900, 1600):
        notebook.set_output_width(width)
        panel = show_tab(dashboard, "Changes")
        wait_until_drawn(panel, 120)
        dashboard.scroll_into_view_if_needed()
        save_screenshot(f"tab-changes-digits-changes-{width}", dashboard)
        cut = panel.evaluate(
            """(root) => {
                const limit = root.closest('.cnnviz-dashboard').getBoundingClientRect();
                return [...root.querySelectorAll('.bqplot.figure, img')].filter((node) => node.offsetParent !== null)
                    .map((node) => node.getBoundingClientRect()).filter((r) => r.right > limit.right + 1 || r.left < limit.left - 1).length;
            }"""
        )
        assert cut == 0, f"at {width} px, {cut} views stick out of the dashboard"
    assert_nothing_wrong(notebook)


VIT_DIGITS = Path(__file__).parent / "notebooks" / "vit_digits.ipynb"
MIDDLE_BLOCK = "encoder.layers.encoder_layer_1"


def test_vit_dashboard_shows_a_middle_block_in_feature_maps_grad_cam_and_compare(open_notebook):
    notebook, dashboard = opened_dashboard(open_notebook, VIT_DIGITS, (1300, 1800))
    notebook.kernel_eval(f"board.panels['Feature maps'].layer = '{MIDDLE_BLOCK}'\nboard.layer = '{MIDDLE_BLOCK}.ln_1'")
    for width in (900, 1600):
        notebook.set_output_width(width)
        for title, selector in (
            ("Feature maps", ".cnnviz-feature-grid img"),
            ("Grad-CAM", ".cnnviz-grad-cam-left, .cnnviz-grad-cam-right"),
            ("Compare", ".cnnviz-compare-card img"),
        ):
            panel = show_tab(dashboard, title)
            wait_until_drawn(panel, 300)
            dashboard.scroll_into_view_if_needed()
            slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
            save_screenshot(f"tab-vit-digits-{slug}-{width}", dashboard)
            if width == 900:
                assert_pictures_not_blank(notebook, panel, f"vit-{slug}", selector)
    layers = notebook.kernel_eval("print(board.panels['Feature maps'].layer, board.panels['Grad-CAM'].layer)").split()
    assert layers == [MIDDLE_BLOCK, f"{MIDDLE_BLOCK}.ln_1"]
    compare = show_tab(dashboard, "Compare")
    titles = compare.locator(".cnnviz-compare-card").all_inner_texts()
    assert any("rollout" in text.lower() for text in titles) and any("chefer" in text.lower() for text in titles), titles
    assert_nothing_wrong(notebook)
