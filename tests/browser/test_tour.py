"""The tour notebook in real JupyterLab and Notebook 7: it runs, and a person sees pictures, not errors."""

from pathlib import Path

import pytest

from harness import FRONTENDS, assert_nothing_wrong, pixel_spread

TOUR = Path(__file__).parents[2] / "notebooks" / "tour.ipynb"
MIN_PICTURE_SPREAD = 10.0


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_tour_runs_and_shows_the_photos_with_their_top5(open_notebook, tmp_path, frontend):
    # Each front end runs its own copy, so that their screenshots are kept apart.
    copy = tmp_path / f"tour_{frontend}.ipynb"
    copy.write_bytes(TOUR.read_bytes())
    notebook = open_notebook(copy, frontend=frontend)
    notebook.screenshot("page")
    assert_nothing_wrong(notebook)

    # The top-5 cards come first; later outputs hold dashboards whose hidden tabs have pictures too.
    pictures = notebook.page.locator(".jp-OutputArea-output .widget-image").filter(visible=True)
    assert pictures.count() >= 6
    for index in range(6):
        shot = notebook.screenshot(f"photo-{index}", pictures.nth(index))
        assert pixel_spread(shot) > MIN_PICTURE_SPREAD, f"picture {index} is blank"

    captions = notebook.page.locator(".jp-OutputArea-output .widget-html").all_inner_texts()
    assert any("chelsea" in c and "Egyptian cat" in c for c in captions)
    assert any("coffee" in c and "espresso" in c for c in captions)
    assert "Egyptian cat" in notebook.kernel_eval("class_names[probabilities['chelsea'].argmax().item()]")
    dashboards = notebook.page.locator(".cnnviz-dashboard")
    assert dashboards.count() == 2
    for index in range(2):
        dashboards.nth(index).scroll_into_view_if_needed()
        assert dashboards.nth(index).locator(".cnnviz-panel").filter(visible=True).count() == 1
    assert_nothing_wrong(notebook)
