"""Fixtures of the browser tests: one Jupyter server and one Chromium for the session, and `open_notebook(path)`
(see harness.py). Every test here is marked `browser`; a failing test saves the page as it was.

Nothing a browser test starts runs beside another test: each test's notebooks are closed and their kernels
shut down when it ends, and the browser tests run after every other test, so that the servers and Chromium,
which end with the session, end with the last of them."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

import harness

BROWSER_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items):
    # A conftest's pytestmark marks nothing (pytest reads it from test modules only), and this hook sees every
    # test of the session: the browser tests are those under this folder.
    for item in items:
        if is_browser_test(item):
            item.add_marker(pytest.mark.browser)
    # A stable sort: each group keeps its order.
    items.sort(key=is_browser_test)


def is_browser_test(item) -> bool:
    return BROWSER_TESTS in item.path.parents


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory):
    """``jupyter(frontend) -> Server``: one server per front end for the session, started when first asked for."""
    servers = {}
    with ExitStack() as stack:

        def server(frontend: str) -> harness.Server:
            if frontend not in servers:
                home, root = tmp_path_factory.mktemp(f"{frontend}-profile"), tmp_path_factory.mktemp(f"{frontend}-root")
                servers[frontend] = stack.enter_context(harness.jupyter_server(home, root, frontend))
            return servers[frontend]

        yield server


@pytest.fixture(scope="session")
def chromium():
    # A missing browser is an error of every browser test, never a skip: `make test` installs it first.
    with harness.chromium() as browser:
        yield browser


@pytest.fixture
def open_notebook(jupyter, chromium, request):
    """``open_notebook(path, viewport=(w, h), frontend="lab") -> NotebookPage``: the notebook copied into the
    server's root, open in JupyterLab (or Notebook 7: ``frontend="notebook"``), all cells run. When the test
    ends its pages are closed and their kernels shut down."""
    contexts, servers = [], []

    def open_(path, viewport=(1400, 1000), frontend="lab") -> harness.NotebookPage:
        server = jupyter(frontend)
        if server not in servers:
            servers.append(server)
        notebook, context = harness.open_notebook(chromium, server, path, viewport)
        contexts.append(context)
        request.node.notebook_page = notebook
        return notebook

    yield open_
    # The pages first: a page left open would start a new kernel for its notebook.
    for context in contexts:
        context.close()
    for server in servers:
        harness.shut_down_kernels(server)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    notebook = getattr(item, "notebook_page", None)
    if report.failed and notebook is not None and call.when == "call":
        notebook.screenshot(f"FAILED-{item.name}")
