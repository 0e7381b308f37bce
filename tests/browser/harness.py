"""Real Jupyter in real Chromium, for the browser tests (through the fixtures in conftest.py) and the browser
benchmark (bench/bench_browser.py).

`jupyter_server` starts a JupyterLab or a Notebook 7 server on a free localhost port, with a throwaway profile
and token, and ends it with every kernel it started. `open_notebook` copies a notebook next to it, opens it in
Chromium, accepts the kernel dialog, runs every cell and waits for the kernel to go idle; `shut_down_kernels`
ends the kernels once the notebooks are closed. The page it returns can run code in the notebook's kernel
(`kernel_eval`), so that a test can read back what a click changed in Python, and it records every uncaught
script error. Screenshots go to tests/browser/artifacts/.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
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
# A kernel asked to shut down gets this long to exit before the server kills it (jupyter_client waits 5 s).
KERNEL_SHUTDOWN_TIMEOUT_S = 30
SERVER_STOP_TIMEOUT_S = 20
RUN_ALL_TIMEOUT_S = 300
FRONTENDS = ("lab", "notebook")
TINTED = 20  # max - min channel of a scatter point, even faded behind a selection: unlike the background
# Notebook 7.6 (on JupyterLab 4.6) throws this while its plugins start, on every page, the file browser
# included, with every extension but its own disabled: its keyboard-shortcuts plugin reacts to another
# plugin's settings before its own are loaded (https://github.com/jupyter/notebook/issues/7862). It is
# raised before any cell runs, so before any widget exists; any other startup error still counts.
UPSTREAM_STARTUP_ERRORS = {
    "lab": set(),
    "notebook": {"TypeError: Cannot read properties of undefined (reading 'schema')"},
}


# How each front end is started, and where it opens a notebook. Each has its own server and profile, as a user
# would: the JupyterLab server serves Notebook 7 too, but once JupyterLab has opened a notebook there, Notebook 7
# pages fail as they start ("Command 'filebrowser:open-path' not registered").
SERVER_OPTIONS = {
    "lab": ["jupyterlab", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
            "--LabServerApp.check_for_updates_url="],
    "notebook": ["notebook", "--JupyterNotebookApp.expose_app_in_browser=True"],
}  # fmt: skip
NOTEBOOK_ADDRESS = {"lab": "{url}/lab/tree/{name}?token={token}&reset", "notebook": "{url}/notebooks/{name}?token={token}"}


@dataclass
class Server:
    url: str
    token: str
    root: Path
    frontend: str
    pid: int

    def address(self, notebook: str) -> str:
        return NOTEBOOK_ADDRESS[self.frontend].format(url=self.url, name=notebook, token=self.token)

    def api(self, path: str, method: str = "GET"):
        """Call the server's REST API (``path`` such as ``"kernels"``) -> the decoded JSON answer, or None."""
        request = urllib.request.Request(
            f"{self.url}/api/{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=KERNEL_SHUTDOWN_TIMEOUT_S) as response:
            body = response.read()
        return json.loads(body) if body else None

    def kernel_processes(self) -> list[psutil.Process]:
        """The processes the server started and that still run: its kernels (and what they started)."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [child for child in children if is_running(child)]


def is_running(process: psutil.Process) -> bool:
    """Whether the process runs: a zombie has ended, only its exit status waits to be read."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def shut_down_kernels(server: Server) -> None:
    """End every session and kernel of ``server``, and wait until their processes are gone.

    A notebook's kernel outlives its browser tab: left running, the kernels of every notebook a test opened
    (each with its dashboards' watchers polling the model) would share the CPU with every later test.
    """
    for session in server.api("sessions"):
        server.api(f"sessions/{session['id']}", method="DELETE")
    for kernel in server.api("kernels"):
        server.api(f"kernels/{kernel['id']}", method="DELETE")
    _, alive = psutil.wait_procs(server.kernel_processes(), timeout=KERNEL_SHUTDOWN_TIMEOUT_S)
    if alive:
        raise RuntimeError(f"kernel processes still running after their shutdown: {[p.pid for p in alive]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(url: str, token: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"jupyter did not answer within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@contextmanager
def jupyter_server(home: Path, root: Path, frontend: str = "lab"):
    """A JupyterLab (``frontend="lab"``) or Notebook 7 (``"notebook"``) server serving ``root``, its profile in
    ``home``; yields a :class:`Server`."""
    if frontend not in FRONTENDS:
        raise ValueError(f"frontend: expected one of {FRONTENDS}, got {frontend!r}")
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
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = _free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    log = home / "server.log"
    module, *options = SERVER_OPTIONS[frontend]
    command = [
        sys.executable, "-m", module, "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--allow-root", *options,
    ]  # fmt: skip
    with log.open("w") as log_stream:
        server = subprocess.Popen(command, env=env, stdout=log_stream, stderr=subprocess.STDOUT)
    started = Server(url, token, root, frontend, server.pid)
    try:
        _wait_until_serving(url, token, server, log)
        yield started
    finally:
        _stop(server, started)


def _stop(server: subprocess.Popen, started: Server) -> None:
    """Shut the kernels down through the server, then end the server; a server that does not stop in time is
    killed, and with it whatever of its kernels remains."""
    if server.poll() is None:
        try:
            shut_down_kernels(started)
        except (OSError, RuntimeError):
            pass  # the server or a kernel does not answer: both are killed below
    leftovers = started.kernel_processes()
    server.terminate()
    try:
        server.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    for process in leftovers:
        if is_running(process):
            process.kill()


@contextmanager
def chromium():
    """Debian's Chromium, headless, with software WebGL; yields a Playwright ``Browser``."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs it (as root on Debian: apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class NotebookPage:
    """A notebook open in JupyterLab or Notebook 7, every cell run.

    Uncaught script errors are kept apart by when they happened: ``startup_errors`` while the front end
    started, before any cell ran (no widget existed yet), ``run_errors`` from then on.
    """

    def __init__(self, page, name: str, frontend: str):
        self.page = page
        self.name = name
        self.frontend = frontend
        self.startup_errors: list[str] = []
        self.run_errors: list[str] = []
        self._cells_started = False
        page.on("pageerror", self._record_error)

    def _record_error(self, error) -> None:
        text = f"{error.name}: {error.message}"
        (self.run_errors if self._cells_started else self.startup_errors).append(text)

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
        return save_screenshot(f"{Path(self.name).stem}-{label}", locator or self.page)

    def errors_shown(self) -> list[str]:
        """Texts of tracebacks in outputs, of widgets that failed to display and of panels' error messages."""
        # A widget view that failed to render leaves one of these placeholders instead of the widget.
        failed = [
            *self.page.get_by_text("Error displaying widget").all_inner_texts(),
            *self.page.get_by_text("Click to show javascript error").all_inner_texts(),
        ]
        stderr = self.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = [text for text in stderr.all_inner_texts() if "Error" in text or "Traceback" in text]
        # Text content, not inner text: a panel in a dashboard tab not shown has failed all the same.
        panels = self.page.locator(".cnnviz-error").all_text_contents()
        return failed + tracebacks + panels

    def script_errors(self) -> list[str]:
        """Uncaught script errors, less the known upstream ones raised while the front end started."""
        known = UPSTREAM_STARTUP_ERRORS[self.frontend]
        return [error for error in self.startup_errors if error not in known] + self.run_errors

    def output_width(self) -> float:
        """Width in CSS pixels of the notebook's output area (the first one holding a widget)."""
        output = self.page.locator(".jp-OutputArea-output").filter(has=self.page.locator(".widget-box, .jupyter-widgets"))
        return output.first.bounding_box()["width"]

    def set_output_width(self, width: float, tolerance: float = 4.0, timeout_s: float = 30.0) -> float:
        """Resize the window so that outputs are ``width`` pixels wide (the side panels keep their size)."""
        viewport = dict(self.page.viewport_size)
        deadline = time.monotonic() + timeout_s
        shown = self.output_width()
        while abs(shown - width) > tolerance:
            assert time.monotonic() < deadline, f"outputs are {shown:.0f} px wide, not {width}, at a {viewport['width']} px window"
            viewport["width"] = round(viewport["width"] + width - shown)
            self.page.set_viewport_size(viewport)
            shown = self._output_width_once_laid_out(shown, deadline)
        return shown

    def _output_width_once_laid_out(self, before: float, deadline: float) -> float:
        # JupyterLab lays its panels out again some time after the window changes, longer while a kernel keeps
        # the CPU busy: wait for a new width that holds.
        last = before
        while time.monotonic() < deadline:
            self.page.wait_for_timeout(250)
            shown = self.output_width()
            if shown == last and shown != before:
                return shown
            last = shown
        return last


def save_screenshot(name: str, target) -> Path:
    """Save a page or an element as tests/browser/artifacts/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    target.screenshot(path=str(path))
    return path


def assert_nothing_wrong(notebook: NotebookPage) -> None:
    """What a person must not see once a notebook has run: an error in an output or a panel, or a script
    error (a widget view that died in the browser)."""
    shown = notebook.errors_shown()
    assert shown == [], f"{notebook.name} shows errors: {shown}"
    scripts = notebook.script_errors()
    assert scripts == [], f"{notebook.name} ({notebook.frontend}) raised script errors: {scripts}"


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
    # Every plugin has started once the application is restored: what fails later comes from the notebook.
    page.evaluate("() => window.jupyterapp.restored")


def _run_all_and_wait(notebook: NotebookPage) -> None:
    """Start every cell, then poll until the run is over.

    The run-all command is not awaited: its promise waits on the cells, and a page call has no timeout.
    """
    notebook._cells_started = True
    notebook.page.evaluate(
        """() => {
            const app = window.jupyterapp;
            app.shell.activateById(app.shell.currentWidget.id);
            app.commands.execute("notebook:run-all-cells");
        }"""
    )
    _accept_dialogs_until(
        notebook.page, RUN_FINISHED, RUN_ALL_TIMEOUT_S, f"the notebook was still running after {RUN_ALL_TIMEOUT_S} s", 500
    )


def open_notebook(browser, server: Server, path: Path | str, viewport=(1400, 1000)):
    """Copy the notebook at ``path`` into the server's root, open it in a new browser context and run every
    cell -> (NotebookPage, context); the caller closes the context (this function does when it fails), then
    shuts the kernel down (:func:`shut_down_kernels`)."""
    path = Path(path)
    shutil.copy(path, server.root / path.name)
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    try:
        page = context.new_page()
        notebook = NotebookPage(page, path.name, server.frontend)
        page.goto(server.address(path.name))
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        _start_kernel(page)
        _run_all_and_wait(notebook)
        not_run = page.evaluate(NOT_RUN_CELLS)
        if not_run:
            notebook.screenshot("NOT-RUN")
            raise AssertionError(f"{not_run} cells of {path.name} did not run; shown: {notebook.errors_shown()}")
    except BaseException:
        context.close()
        raise
    return notebook, context


def dismiss_notifications(page) -> None:
    """JupyterLab's first-run news toast sits over the bottom right corner of the outputs."""
    toast = page.get_by_role("button", name="No")
    if toast.count() and toast.first.is_visible():
        toast.first.click()


def show_tab(dashboard, title: str):
    """Click the dashboard's tab ``title`` and return its panel once it is visible."""
    dashboard.locator(".lm-TabBar-tab", has_text=title).first.click()
    panel = dashboard.locator(".cnnviz-panel:visible").first
    panel.wait_for(state="visible", timeout=30_000)
    return panel


def wait_until_drawn(panel, timeout_s: float = 180.0) -> None:
    """Every picture of the panel loaded and no long work under way; AssertionError at once if the panel shows
    an error instead."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, error = panel.evaluate(
            """(root) => {
                const shown = (selector) => [...root.querySelectorAll(selector)].filter((p) => p.offsetParent !== null);
                const pictures = shown("img");
                const busy = shown(".cnnviz-task-bar").length > 0;
                const drawn = pictures.length > 0 || shown("canvas").length > 0;
                const error = shown(".cnnviz-error").map((e) => e.textContent).join(" | ");
                return [!busy && drawn && pictures.every((p) => p.complete && p.naturalWidth > 0), error];
            }"""
        )
        assert not error, f"the panel shows an error: {error}"
        if ready:
            return
        time.sleep(0.25)
    raise AssertionError("the panel did not finish drawing")


# Resolves, once the picture has loaded a new source, with the milliseconds from the control's change event to
# the frame after that load; rejects if no new picture comes within the timeout.
REPAINT_AFTER_CHANGE = """async ([select, picture, index, timeoutMs]) => new Promise((resolve, reject) => {
    const before = picture.src;
    const timer = setTimeout(() => reject(new Error(`no repaint within ${timeoutMs} ms`)), timeoutMs);
    let start = 0;
    picture.addEventListener("load", function painted() {
        if (picture.src === before) return;
        picture.removeEventListener("load", painted);
        clearTimeout(timer);
        requestAnimationFrame(() => resolve(performance.now() - start));
    });
    start = performance.now();
    select.selectedIndex = index;
    select.dispatchEvent(new Event("change", { bubbles: true }));
})"""


def repaint_after_change(page, select, picture, index: int, timeout_ms: int = 10_000) -> float:
    """Choose option ``index`` of the ``select`` element -> milliseconds until ``picture`` shows a new image."""
    return page.evaluate(REPAINT_AFTER_CHANGE, [select.element_handle(), picture.element_handle(), index, timeout_ms])


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
