"""The checks every browser test relies on: a panel that shows an error fails them, on screen or in a hidden tab;
and what they start ends with them: a test's kernels when it ends, the servers after the last browser test."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
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


# A run of its own, in a scratch folder, with this folder's fixtures: a unit test, then two browser tests.
LIFECYCLE_RUN = {
    "pytest.ini": """
        [pytest]
        markers = browser: drives real JupyterLab in Chromium
        """,
    "test_unit.py": """
        from pathlib import Path

        def test_a_unit_test():
            with (Path(__file__).parent / "order.txt").open("a") as order:
                order.write("unit\\n")
        """,
    "browser/test_lifecycle.py": """
        import json
        import urllib.request
        from pathlib import Path

        import psutil

        FOLDER = Path(__file__).parent

        def jupyter_processes():
            # This run's Jupyter server, then what it started (the kernels), found as processes.
            server = next(p for p in psutil.Process().children() if "jupyterlab" in p.cmdline())
            return [server, *server.children(recursive=True)]

        def kernels_listed(server):
            request = urllib.request.Request(f"{server.url}/api/kernels", headers={"Authorization": f"token {server.token}"})
            with urllib.request.urlopen(request) as response:
                return json.loads(response.read())

        def test_a_dashboard_notebook(open_notebook, jupyter):
            with (FOLDER.parent / "order.txt").open("a") as order:
                order.write("browser\\n")
            open_notebook(FOLDER / "dashboard.ipynb")
            processes = jupyter_processes()
            seen = {"kernels": len(kernels_listed(jupyter("lab"))), "processes": [(p.pid, p.create_time()) for p in processes]}
            (FOLDER / "seen.json").write_text(json.dumps(seen))

        def test_the_next_browser_test(jupyter):
            with (FOLDER.parent / "order.txt").open("a") as order:
                order.write("browser\\n")
            server, *started = jupyter_processes()
            assert kernels_listed(jupyter("lab")) == [], "the server still lists the last test's kernel"
            running = [p.pid for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            assert running == [], "the last test's kernel still runs"
        """,
}
DASHBOARD_NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code", "execution_count": None, "id": "dashboard", "metadata": {}, "outputs": [],
            "source": (
                "import cnnviz_widgets as cw\n"
                "x, labels, names = cw.demo.digits('test')\n"
                "cw.explore(cw.demo.digits_model(), list(cw.demo.digit_pictures(x[:20])), labels=labels[:20],\n"
                "           class_names=names, preprocess=cw.demo.digits_preprocess)"
            ),
        }
    ],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}
LIFECYCLE_TIMEOUT_S = 600


def test_a_notebook_test_leaves_no_kernel_and_the_server_ends_with_the_browser_tests(tmp_path):
    for name, text in LIFECYCLE_RUN.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    for name in ("conftest.py", "harness.py"):
        shutil.copy(Path(__file__).parent / name, tmp_path / "browser" / name)
    (tmp_path / "browser" / "dashboard.ipynb").write_text(json.dumps(DASHBOARD_NOTEBOOK))

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=LIFECYCLE_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert (tmp_path / "order.txt").read_text().split() == ["unit", "browser", "browser"], "browser tests run last"
    seen = json.loads((tmp_path / "browser" / "seen.json").read_text())
    assert seen["kernels"] == 1 and len(seen["processes"]) >= 2, "the notebook's kernel was seen running"
    still_running = [pid for pid, started in seen["processes"] if runs(pid, started)]
    assert still_running == [], "the server or its kernel outlived the browser tests"


def runs(pid: int, started: float) -> bool:
    """Whether the process ``pid`` started at ``started`` still runs (not another process given its pid since)."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
