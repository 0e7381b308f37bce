"""The tour notebook in real JupyterLab: it runs, and a person sees pictures, not errors."""

from pathlib import Path

from conftest import pixel_spread

TOUR = Path(__file__).parents[2] / "notebooks" / "tour.ipynb"
MIN_PICTURE_SPREAD = 10.0


def test_tour_runs_and_shows_the_photos_with_their_top5(open_notebook):
    notebook = open_notebook(TOUR)
    notebook.screenshot("page")
    assert notebook.errors_shown() == []

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
