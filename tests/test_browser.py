"""The explorer as a student sees it: JupyterLab in a real browser.

A JupyterLab server on localhost serves a temporary copy of ``notebooks/`` (nothing is
written into the checkout); headless Chromium, driven by Playwright, opens a notebook,
runs every cell from the Run menu, changes one control of the explorer widget and checks
that the figure the widget shows is redrawn into a different image. No other test goes
through the front end: papermill fires no widget callbacks, and ``test_widgets.py`` calls
them from Python.

What the notebook must provide (see ``EXPLORER``):

- a ``parameters`` cell taking ``EXPLORER.parameters`` and ``OUT_DIR`` (papermill injects
  them before the page opens, so the browser runs the smoke profile);
- an ipywidgets ``Dropdown`` (a ``<select>``) or ``ToggleButtons`` with a description
  label, with at least two choices, and a matplotlib figure (inline backend, a PNG
  ``<img>``) drawn in the output of the same cell, for instance through an ``Output``
  widget or ``interactive_output`` in the same ``VBox``, that changes with the choice;
- no error output anywhere, and every cell done within ``RUN_ALL_TIMEOUT_S``.

The control is found by its description label (``control``); with ``control=None`` it
is the first dropdown or toggle-buttons control in a cell that shows a figure. A fixture
notebook with a plain dropdown goes through the same steps first, so a failure there
points at the machinery (server, browser, widget manager), not at the explorer.

Needs the ``playwright`` package and Debian's ``chromium`` (Playwright's own browser
download is not used); without them the tests skip, or fail when
``ATTNLAB_REQUIRE_BROWSER=1`` (as ``.ci/run`` sets). On failure a screenshot of the page,
the cell's screenshot before the change (and after, when there is one) and the server log
are copied to a folder named in the message.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import NamedTuple, Optional

import nbformat
import pytest

pytestmark = pytest.mark.browser

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"


class Target(NamedTuple):
    notebook: str  # a file in notebooks/ (the fixture is written into the server's root)
    control: Optional[str]  # the control's description label; None: the first one next to a figure
    parameters: dict  # injected into the parameters cell; OUT_DIR is added


EXPLORER = Target("07_ablation_explorer.ipynb", control="ablation",
                  parameters={"PROFILE": "smoke", "DATASET": "shapes"})
FIXTURE = Target("browser_fixture.ipynb", control="frequency", parameters={"PROFILE": "smoke"})

SERVER_START_TIMEOUT_S = 60
KERNEL_START_TIMEOUT_S = 60
RUN_ALL_TIMEOUT_S = 480  # a guard against hangs, not a budget (test_notebooks times the notebooks)
REDRAW_TIMEOUT_S = 60
UI_TIMEOUT_MS = 30_000  # any single page action or wait for an element

PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook in the tab shown
CONTROLS = ".widget-dropdown, .widget-toggle-buttons"
FIGURES = ".jp-OutputArea-output img"


# -- what must be installed --------------------------------------------------------------


def _missing_browser() -> Optional[str]:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def chromium_path() -> str:
    reason = _missing_browser()
    if reason:
        if os.environ.get("ATTNLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ATTNLAB_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return shutil.which("chromium")


# -- the server ----------------------------------------------------------------------------


class Lab(NamedTuple):
    url: str
    token: str
    root: Path
    log: Path
    artifacts: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings: Path) -> None:
    # Every cell in the DOM (no windowing: cells scrolled away would be detached), the
    # notebook's kernel started without a "Select Kernel" dialog, no news or update toasts,
    # no autosave (the page's state is what is checked, not the file).
    files = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
                 '{"windowingMode": "none", "autoStartDefaultKernel": true}',
             "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
                 '{"fetchNews": "false", "checkForUpdates": false}',
             "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": '{"autosave": false}'}
    for name, text in files.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(text)


def _server_env(base: Path) -> dict:
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel's figures must come from the inline backend
    env.update(ATTNLAB_RUNS=str(base / "runs"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
               MKL_NUM_THREADS=os.environ.get("MKL_NUM_THREADS", "2"),
               # nothing of the user's Jupyter set-up (kernels, settings) applies, nothing is left in it
               JUPYTER_CONFIG_DIR=str(base / "jupyter-config"), JUPYTER_DATA_DIR=str(base / "jupyter-data"),
               JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(base / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"), PYTHONUNBUFFERED="1")
    return env


def _wait_for_server(proc: subprocess.Popen, url: str, token: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer within {SERVER_START_TIMEOUT_S} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    """Stops the server, then whatever it started (kernels) that is still in its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # jupyter asks for confirmation on one SIGINT; two stop it
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(log: Path, n: int = 40) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(lines[-n:])


@pytest.fixture(scope="module")
def lab(tmp_path_factory, chromium_path):
    base = tmp_path_factory.mktemp("browser")
    root = base / "notebooks"
    shutil.copytree(NOTEBOOKS_DIR, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    _write_settings(base / "settings")
    port, token, log = _free_port(), uuid.uuid4().hex, base / "server.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.port_retries=0", "--ServerApp.terminals_enabled=False",
           "--LabApp.extension_manager=readonly", "--LabApp.news_url=", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=_server_env(base), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_server(proc, url, token, log)
        yield Lab(url, token, root, log, base)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, headless=True)
        try:
            yield b
        finally:
            b.close()


# -- notebooks -------------------------------------------------------------------------------


def _write_fixture(path: Path) -> None:
    """A dropdown whose choice redraws a matplotlib figure, as the explorers do."""
    cells = [nbformat.v4.new_code_cell('PROFILE = "quick"\nOUT_DIR = "out"', metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("%matplotlib inline\nimport ipywidgets as w\nimport matplotlib.pyplot as plt\n"
                                       "import numpy as np\nfrom IPython.display import display"),
             nbformat.v4.new_code_cell(
                 'freq = w.Dropdown(options=[1, 2, 3], value=1, description="frequency")\n'
                 "def draw(freq):\n"
                 "    fig, ax = plt.subplots(figsize=(3, 2))\n"
                 "    ax.plot(np.sin(freq * np.linspace(0, 6.3, 200)))\n"
                 "    display(fig)\n"
                 "    plt.close(fig)\n"
                 'display(w.VBox([freq, w.interactive_output(draw, {"freq": freq})]))')]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, str(path))


def _prepare(lab: Lab, target: Target) -> str:
    """Injects the target's parameters into its copy in the server's root; returns its name."""
    import papermill as pm

    path = lab.root / target.notebook
    out_dir = lab.artifacts / "out" / Path(target.notebook).stem
    pm.execute_notebook(str(path), str(path), parameters={**target.parameters, "OUT_DIR": str(out_dir)},
                        prepare_only=True, progress_bar=False, log_output=False)
    return target.notebook


# -- driving the page ------------------------------------------------------------------------


def _wait_until(what: str, check, timeout_s: float, poll_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def _kernel_status(page) -> Optional[str]:
    """The notebook's kernel status ("idle", "busy", ...); None until a kernel is attached
    (the indicator reads "idle" before there is any kernel)."""
    panel = page.locator(PANEL).first
    name = panel.locator(".jp-Toolbar-kernelName")
    if not name.count() or name.first.inner_text().strip() in ("", "No Kernel"):
        return None
    indicator = panel.locator(".jp-Notebook-ExecutionIndicator")
    return indicator.first.get_attribute("data-status") if indicator.count() else None


def _prompts(page) -> list[str]:
    return [p.strip() for p in page.locator(f"{PANEL} .jp-CodeCell .jp-InputPrompt").all_inner_texts()]


def _output_text(scope, limit: int = 3000) -> str:
    """The text outputs under ``scope`` (tracebacks included), last part."""
    return "\n".join(scope.locator(".jp-OutputArea-output pre").all_inner_texts())[-limit:]


# The error outputs of the notebook shown: JupyterLab renders a traceback as plain stderr
# text, so errors are read from the cell models (the server exposes the app for this).
CELL_ERRORS_JS = """() => window.jupyterapp.shell.currentWidget.content.widgets
    .filter(c => c.model.type === 'code')
    .map(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue))"""


def _run_all(page) -> None:
    """Run > Run All Cells, then waits until no cell is queued or running (Run All stops at
    the first error); raises with the first error and its traceback."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^\s*Run\s*$")).click()
    label = page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$"))
    page.locator(".lm-Menu-item", has=label).click()
    ran = re.compile(r"\[\d+\]:")
    settled = []

    def finished():
        prompts = _prompts(page)
        quiet = ("[*]:" not in prompts and any(ran.fullmatch(p) for p in prompts)
                 and _kernel_status(page) == "idle")
        settled.append(quiet)
        return settled[-2:] == [True, True]  # twice in a row: no gap between two cells

    _wait_until("every cell to run (Run > Run All Cells)", finished, RUN_ALL_TIMEOUT_S, poll_s=0.5)
    cells = page.locator(f"{PANEL} .jp-CodeCell")
    for i, errors in enumerate(page.evaluate(CELL_ERRORS_JS)):
        if errors:
            raise AssertionError(f"code cell {i + 1} failed under Run All: {errors[0]}\n{_output_text(cells.nth(i))}")
    prompts = _prompts(page)
    assert all(ran.fullmatch(p) for p in prompts), f"Run All left cells unrun, with no error shown: {prompts}"


def _find_control(page, label: Optional[str]):
    controls = page.locator(f"{PANEL} :is({CONTROLS})")
    if label is not None:
        named = controls.filter(has=page.locator(".widget-label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")))
        if named.count():
            return named.first
    else:
        for i in range(controls.count()):
            if _cell_of(controls.nth(i)).locator(FIGURES).count():
                return controls.nth(i)
    labels = page.locator(f"{PANEL} :is({CONTROLS}) .widget-label").all_inner_texts()
    widgets = page.locator(f"{PANEL} .jupyter-widgets").count()
    raise AssertionError(f"no dropdown or toggle buttons {'labelled ' + repr(label) if label else 'next to a figure'}"
                         f"; controls seen: {labels}; ipywidgets elements on the page: {widgets}"
                         " (0 means the widget manager did not render the widgets)")


def _cell_of(control):
    return control.locator("xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' jp-Cell ')][1]")


def _choose_another(control) -> str:
    """Picks a choice other than the current one; returns what it picked."""
    select = control.locator("select")
    if select.count():
        values = select.locator("option").evaluate_all("os => os.map(o => o.value)")
        current = select.input_value()
        others = [v for v in values if v != current]
        assert others, f"the dropdown offers only {values}: nothing to change to"
        select.select_option(others[0])
        return select.locator(f'option[value="{others[0]}"]').inner_text()
    buttons = control.locator("button.widget-toggle-button:not(.mod-active)")
    assert buttons.count(), "the toggle buttons offer no other choice"
    picked = buttons.first.inner_text()
    buttons.first.click()
    return picked


def _figures(cell) -> list[str]:
    return cell.locator(FIGURES).evaluate_all("imgs => imgs.map(i => i.src)")


def _exercise(page, lab: Lab, target: Target) -> dict:
    """Runs the notebook, changes its control; returns the figures before and after."""
    name = _prepare(lab, target)
    t0 = time.monotonic()
    # A workspace of its own: JupyterLab would otherwise reopen the tabs of earlier tests.
    page.goto(f"{lab.url}/lab/workspaces/{Path(name).stem}/tree/{name}?token={lab.token}")
    page.locator(f"{PANEL} .jp-Cell").first.wait_for()
    _wait_until("the kernel to start", lambda: _kernel_status(page) == "idle", KERNEL_START_TIMEOUT_S)
    t_open = time.monotonic()
    _run_all(page)
    t_run = time.monotonic()

    control = _find_control(page, target.control)
    cell = _cell_of(control)
    before = _figures(cell)
    assert before, f"{name}: the cell with the control shows no figure (no <img> in its output) before the change"
    stem = Path(name).stem
    cell.screenshot(path=str(lab.artifacts / f"{stem}-before.png"))
    picked = _choose_another(control)

    seen = []

    def redrawn():
        seen.append(_figures(cell))
        changed = seen[-1] and seen[-1] != before and _kernel_status(page) == "idle"
        return changed and seen[-2:] == [seen[-1]] * 2  # the same twice: the redraw is complete

    try:
        _wait_until(f"the figure to change after choosing {picked!r}", redrawn, REDRAW_TIMEOUT_S, poll_s=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; the cell's text output:\n{_output_text(cell)}") from exc
    after = _figures(cell)
    cell.screenshot(path=str(lab.artifacts / f"{stem}-after.png"))
    return {"before": before, "after": after, "picked": picked,
            "times": {"open_s": t_open - t0, "run_all_s": t_run - t_open, "redraw_s": time.monotonic() - t_run}}


def _in_browser(browser, lab: Lab, target: Target) -> dict:
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        return _exercise(page, lab, target)
    except Exception as exc:
        stem = Path(target.notebook).stem
        try:
            page.screenshot(path=str(lab.artifacts / f"{stem}-failure.png"), full_page=True)
        except Exception:  # noqa: BLE001 - the page may be gone; the message still helps
            pass
        # outside pytest's temporary folders, which later runs delete
        kept = Path(tempfile.mkdtemp(prefix=f"attnlab-browser-{stem}-"))
        for path in [*lab.artifacts.glob(f"{stem}-*.png"), lab.log]:
            shutil.copy(path, kept)
        raise AssertionError(f"{exc}\n\nscreenshots and server log in {kept}\n"
                             f"server log tail:\n{_tail(lab.log, 15)}") from exc
    finally:
        page.close()
        _end_sessions(lab, target.notebook)


def _end_sessions(lab: Lab, notebook: str) -> None:
    """Shuts down the notebook's kernel, so that it does not idle beside the next test's."""
    def call(method: str, path: str):
        request = urllib.request.Request(f"{lab.url}{path}", method=method,
                                         headers={"Authorization": f"token {lab.token}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read() or b"null")

    for session in call("GET", "/api/sessions"):
        if session["path"] == notebook:
            call("DELETE", f"/api/sessions/{session['id']}")


def _assert_redrawn(result: dict) -> None:
    before, after = result["before"], result["after"]
    assert all(src.startswith("data:image/") for src in before + after), "figures are not inline images"
    assert after != before, f"the figure did not change after choosing {result['picked']!r}"
    assert set(after) - set(before), "the figures after the change are only a subset of those before"


# -- the tests -------------------------------------------------------------------------------


def test_fixture_dropdown_redraws_its_figure(browser, lab):
    _write_fixture(lab.root / FIXTURE.notebook)
    result = _in_browser(browser, lab, FIXTURE)
    _assert_redrawn(result)
    assert len(result["after"]) == 1 and result["picked"] == "2"


def test_explorer_redraws_its_figure(browser, lab):
    assert (NOTEBOOKS_DIR / EXPLORER.notebook).exists(), f"notebooks/{EXPLORER.notebook} does not exist yet"
    result = _in_browser(browser, lab, EXPLORER)
    _assert_redrawn(result)
    print(f"{EXPLORER.notebook}: chose {result['picked']!r};", result["times"])
