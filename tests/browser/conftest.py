"""Real JupyterLab in real Chromium.

`lab` starts one JupyterLab server for the session on a free localhost port, with a throwaway profile and
token; `open_notebook(path)` copies a notebook next to it, opens it in Chromium, accepts the kernel
dialog, runs every cell and waits for the kernel to go idle. The page it returns can run code in the
notebook's kernel (`kernel_eval`) so that a test can read back what a click changed in Python.
Screenshots go to tests/browser/artifacts/: every test saves what it looked at, and a failing test saves
the page as it was.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
SERVER_START_TIMEOUT_S = 120
RUN_ALL_TIMEOUT_MS = 300_000

pytestmark = pytest.mark.browser


@dataclass
class Lab:
    url: str
    token: str
    root: Path

    def address(self, notebook: str) -> str:
        return f"{self.url}/lab/tree/{notebook}?token={self.token}&reset"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(url: str, token: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"jupyter lab did not answer within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> Lab:
    home = tmp_path_factory.mktemp("lab-profile")
    root = tmp_path_factory.mktemp("lab-root")
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        IPYTHONDIR=str(home / "ipython"),
    )
    # A fresh profile would ask whether to fetch Jupyter news, a popup over the outputs under test.
    notification = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = _free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    log = home / "server.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=", "--LabServerApp.check_for_updates_url=", "--allow-root",
    ]  # fmt: skip
    with log.open("w") as log_stream:
        server = subprocess.Popen(command, env=env, stdout=log_stream, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(url, token, server, log)
        yield Lab(url, token, root)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="session")
def chromium():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class NotebookPage:
    """A notebook open in JupyterLab, every cell run."""

    def __init__(self, page, name: str):
        self.page = page
        self.name = name

    def kernel_eval(self, code: str, timeout_ms: int = 60_000) -> str:
        """Run ``code`` in the notebook's kernel; returns what it printed plus the repr of its last expression."""
        return self.page.evaluate(
            """async ([code, timeout]) => {
                const panel = window.jupyterapp.shell.currentWidget;
                const kernel = panel.sessionContext.session.kernel;
                const future = kernel.requestExecute({ code, store_history: false });
                let text = "";
                future.onIOPub = (msg) => {
                    const type = msg.header.msg_type;
                    if (type === "stream") text += msg.content.text;
                    if (type === "execute_result") text += msg.content.data["text/plain"];
                    if (type === "error") text += "ERROR " + msg.content.ename + ": " + msg.content.evalue;
                };
                const timer = new Promise((_, reject) => setTimeout(() => reject(new Error("timeout")), timeout));
                await Promise.race([future.done, timer]);
                return text;
            }""",
            [code, timeout_ms],
        )

    def screenshot(self, label: str, locator=None) -> Path:
        """Save the page (or one element) as tests/browser/artifacts/<notebook>-<label>.png."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{Path(self.name).stem}-{label}.png"
        (locator or self.page).screenshot(path=str(path))
        return path

    def errors_shown(self) -> list[str]:
        """Texts of tracebacks in outputs and of widgets that failed to display."""
        # A widget view that failed to render leaves one of these placeholders instead of the widget.
        failed = [
            *self.page.get_by_text("Error displaying widget").all_inner_texts(),
            *self.page.get_by_text("Click to show javascript error").all_inner_texts(),
        ]
        stderr = self.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = [text for text in stderr.all_inner_texts() if "Error" in text or "Traceback" in text]
        return failed + tracebacks


def pixel_spread(path: Path) -> float:
    """Standard deviation of a screenshot's grey levels: near 0 for a blank or uniform picture."""
    return float(np.asarray(Image.open(path).convert("L"), dtype=np.float32).std())


KERNEL_CONNECTED = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const session = panel && panel.sessionContext && panel.sessionContext.session;
    return !!(session && session.kernel && session.kernel.connectionStatus === "connected");
}"""

# Run-all stops at a failing cell, so "done" is: kernel idle and no cell queued ("[*]"), not every cell run.
RUN_FINISHED = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const prompts = [...document.querySelectorAll(".jp-CodeCell .jp-InputPrompt")].map((p) => p.textContent);
    return panel.sessionContext.session.kernel.status === "idle" && prompts.some((p) => /\\[\\d+\\]/.test(p))
        && !prompts.some((p) => p.includes("*"));
}"""


NOT_RUN_CELLS = """() => [...document.querySelectorAll(".jp-CodeCell .jp-InputPrompt")]
    .filter((p) => !/\\[\\d+\\]/.test(p.textContent)).length"""


def _accept_dialog(page) -> None:
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    if accept.count():
        accept.first.click()


def _accept_dialogs_until(page, condition: str, timeout_s: float, failure: str, interval_ms: int) -> None:
    """Poll the JS ``condition`` until it holds, accepting any dialog on the way (a fresh profile asks for a
    kernel, sometimes late); AssertionError ``failure`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _accept_dialog(page)
        if page.evaluate(condition):
            return
        page.wait_for_timeout(interval_ms)
    raise AssertionError(failure)


def _start_kernel(page, timeout_s: float = 120) -> None:
    _accept_dialogs_until(
        page, KERNEL_CONNECTED, timeout_s, f"the notebook's kernel did not start within {timeout_s} s", 250
    )


def _run_all_and_wait(page) -> None:
    """Start every cell, then poll until the run is over.

    The run-all command is not awaited: its promise waits on the cells, and a page call has no timeout.
    """
    page.evaluate(
        """() => {
            const app = window.jupyterapp;
            app.shell.activateById(app.shell.currentWidget.id);
            app.commands.execute("notebook:run-all-cells");
        }"""
    )
    timeout_s = RUN_ALL_TIMEOUT_MS / 1000
    _accept_dialogs_until(page, RUN_FINISHED, timeout_s, f"the notebook was still running after {timeout_s:.0f} s", 500)


@pytest.fixture
def open_notebook(lab, chromium, request):
    """``open_notebook(path) -> NotebookPage``: the notebook copied into the server's root, open, all cells run."""
    contexts = []

    def open_(path: Path | str, viewport=(1400, 1000)) -> NotebookPage:
        path = Path(path)
        shutil.copy(path, lab.root / path.name)
        context = chromium.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        contexts.append(context)
        page = context.new_page()
        page.goto(lab.address(path.name))
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        _start_kernel(page)
        _run_all_and_wait(page)
        notebook = NotebookPage(page, path.name)
        request.node.notebook_page = notebook
        not_run = page.evaluate(NOT_RUN_CELLS)
        if not_run:
            notebook.screenshot("NOT-RUN")
            raise AssertionError(f"{not_run} cells of {path.name} did not run; shown: {notebook.errors_shown()}")
        return notebook

    yield open_
    for context in contexts:
        context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    notebook = getattr(item, "notebook_page", None)
    if report.failed and notebook is not None and call.when == "call":
        notebook.screenshot(f"FAILED-{item.name}")
