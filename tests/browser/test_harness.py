"""The checks every browser test relies on: a panel that shows an error fails them, on screen or in a hidden tab."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import assert_nothing_wrong, show_tab, wait_until_drawn

FAILING_PANEL = Path(__file__).parent / "notebooks" / "failing_panel.ipynb"
MESSAGE = "preprocess: a picture of 8 x 8 pixels; the digits CNN reads 32 x 32"


def test_a_panel_showing_an_error_fails_the_check_of_every_notebook(open_notebook):
    notebook = open_notebook(FAILING_PANEL)
    dashboard = notebook.page.locator(".cnnviz-dashboard").first
    mistakes = dashboard.locator(".cnnviz-panel-mistakes")
    mistakes.locator(".cnnviz-error").wait_for(timeout=60_000)
    notebook.screenshot("mistakes-error", mistakes)
    assert any(MESSAGE in text for text in notebook.errors_shown())
    with pytest.raises(AssertionError, match=re.escape(MESSAGE)):
        assert_nothing_wrong(notebook)

    # A failed panel in a tab not shown has failed all the same.
    wait_until_drawn(show_tab(dashboard, "Grad-CAM"))
    assert not mistakes.is_visible()
    assert [text for text in notebook.errors_shown() if MESSAGE in text], "the hidden panel's error is not seen"
    with pytest.raises(AssertionError, match=re.escape(MESSAGE)):
        assert_nothing_wrong(notebook)
