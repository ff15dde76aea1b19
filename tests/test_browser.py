"""JupyterLab in a real browser: notebook 03's threshold tuner, driven in headless Chromium.

A real JupyterLab server is started on localhost (a free port, a random token, and its own
root, config, data and runtime folders under the test's tmp dir, so nothing of the user's is
read or written). ``notebooks/03_detection.ipynb`` is copied into its root and opened in
Debian's Chromium, driven by Playwright (never a downloaded browser). "Run All Cells" runs it
in quick mode (the parameters cell's default); then the ThresholdTuner's sliders must be on
the page, and moving one by keyboard must change the metrics table and the overlay image.
Screenshots are saved under the test's tmp dir.

The browser test is marked ``browser``: deselect it with ``-m "not browser"``. Without Chromium
or Playwright it skips, except under ``CI=true``, where that is a failure (``.ci/run``
installs both).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from helpers import skip_or_fail

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "03_detection.ipynb"

#: Flags for Chromium on a machine without a display, GPU or outside network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SERVER_START_S = 60       # JupyterLab answering /api/status
RUN_ALL_S = 600           # the whole notebook in quick mode (1-2 min on an idle 2-core CPU)
WIDGET_UPDATE_S = 30      # one slider move: re-filter, re-evaluate, redraw


def _unavailable(reason: str):
    """Skip locally, fail under CI=true (where .ci/run must have installed the browser)."""
    skip_or_fail(reason, "under CI the browser test must run (.ci/run installs it)")


def _chromium() -> str:
    """Path of the system Chromium (``SMEARLAB_CHROMIUM`` overrides the search)."""
    for candidate in (os.environ.get("SMEARLAB_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    _unavailable("Chromium not found (apt-get install chromium, "
                 "or set SMEARLAB_CHROMIUM)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the JupyterLab server ------------------------------------------------------------------------
@dataclass
class LabServer:
    """A running ``jupyter lab`` process and how to reach it."""

    proc: subprocess.Popen
    port: int
    token: str
    root: Path
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """``path`` on the server, authenticated by the token."""
        sep = "&" if "?" in path else "?"
        return f"{self.base}/{path.lstrip('/')}{sep}token={self.token}"

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def request(self, path: str, method: str = "GET", timeout: float = 5) -> int:
        """HTTP status of ``method path`` (token in the header)."""
        req = urllib.request.Request(f"{self.base}/{path.lstrip('/')}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status


def _lab_settings(settings_dir: Path) -> None:
    """User settings of the throw-away lab: every cell in the DOM, no news or update checks."""
    files = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
            '{"fetchNews": "false", "checkForUpdates": false}',
    }
    for rel, text in files.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def start_lab(base: Path, notebooks: list[Path]) -> LabServer:
    """Start JupyterLab on a free localhost port with everything under ``base``.

    Parameters
    ----------
    base : an empty folder; gets ``root/`` (the notebooks, copied), ``jupyter/`` (config, data,
        runtime, settings, IPython, TMPDIR) and ``lab.log``. The kernel inherits the server's
        environment (inline matplotlib, ``OMP_NUM_THREADS=1`` unless set).
    notebooks : notebooks copied into the server's root.

    Returns
    -------
    LabServer, already answering ``/api/status``.
    """
    root, home = base / "root", base / "jupyter"
    for d in (root, home / "config", home / "data", home / "runtime", home / "ipython",
              home / "tmp"):
        d.mkdir(parents=True, exist_ok=True)
    for nb in notebooks:
        shutil.copy(nb, root / nb.name)
    _lab_settings(home / "config" / "lab" / "user-settings")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               IPYTHONDIR=str(home / "ipython"), TMPDIR=str(home / "tmp"),
               JUPYTER_PLATFORM_DIRS="1", MPLBACKEND="module://matplotlib_inline.backend_inline",
               PYTHONUNBUFFERED="1",
               # One core for the kernel's torch, one for the server and the browser: two
               # threads crawl when the 2 cores are shared.
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_CONFIG_PATH", None)
    port, token = _free_port(), secrets.token_hex(16)
    log = base / "lab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = LabServer(proc, port, token, root, log)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if server.request("api/status") == 200:
                return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    stop_lab(server)
    raise RuntimeError(f"jupyter lab did not answer within {SERVER_START_S} s:\n"
                       f"{server.log_tail()}")


def stop_lab(server: LabServer, timeout: float = 30) -> None:
    """Shut the server down cleanly (``POST /api/shutdown`` stops its kernels too).

    Falls back to SIGTERM, then SIGKILL of the server's process group.
    """
    if server.proc.poll() is None:
        try:
            server.request("api/shutdown", method="POST")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            try:
                os.killpg(server.proc.pid, sig)
            except ProcessLookupError:
                return
        try:
            server.proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def chromium_path() -> str:
    return _chromium()


@pytest.fixture
def lab(tmp_path, request) -> LabServer:
    """A JupyterLab server with notebook 03 in its root; shut down at teardown."""
    for dist in ("jupyterlab", "jupyterlab_widgets"):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            _unavailable(f"{dist} is not installed (pip install -e .)")
    server = start_lab(tmp_path / "lab", [NOTEBOOK])
    request.addfinalizer(lambda: stop_lab(server))
    return server


@pytest.fixture
def page(chromium_path, tmp_path):
    """A Playwright page in headless system Chromium with a fresh profile."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[browser]')")
    profile = tmp_path / "chromium-profile"
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_path, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1600})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


# --- JupyterLab in the page -----------------------------------------------------------------------
#: JavaScript: the state of the notebook's code cells (prompts) and of its kernel.
_NOTEBOOK_STATE_JS = r"""() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!nb) return null;
  const prompts = [...nb.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
    .map(p => p.textContent.trim());
  const ind = nb.querySelector('.jp-Notebook-ExecutionIndicator');
  const stderr = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]';
  const errors = [...nb.querySelectorAll(stderr)]
    .map(e => e.textContent).filter(t => /Error|Traceback/.test(t));
  const bar = document.querySelector('#jp-main-statusbar');
  const status = /\| *(Idle|Busy|Starting|Restarting|Initializing|Connecting|Unknown|Dead)/;
  const kernel = bar ? (bar.textContent.match(status) || [])[1] : null;
  return {prompts, kernel: kernel ? kernel.toLowerCase() : null,
          indicator: ind ? ind.getAttribute('data-status') : null, errors};
}"""


def open_notebook(page, lab: LabServer, name: str) -> None:
    """Open ``name`` in JupyterLab and wait until its kernel is idle."""
    page.goto(lab.url(f"lab/tree/{name}?reset"), wait_until="domcontentloaded")
    page.wait_for_selector(".jp-NotebookPanel .jp-CodeCell", timeout=SERVER_START_S * 1000)
    wait_for_state(page, lambda s: s["kernel"] == "idle", SERVER_START_S, "kernel idle")


def poll(page, script: str, predicate, timeout_s: float, what: str) -> dict:
    """Evaluate ``script`` in the page until ``predicate(result)``; fail with it on time-out."""
    deadline, state = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        state = page.evaluate(script)
        if state is not None and predicate(state):
            return state
        page.wait_for_timeout(250)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}; page state: {state}")


def wait_for_state(page, predicate, timeout_s: float, what: str) -> dict:
    """Poll the notebook's state (code cell prompts, kernel status) until ``predicate``."""
    return poll(page, _NOTEBOOK_STATE_JS, predicate, timeout_s, what)


def run_all_cells(page) -> dict:
    """Run > Run All Cells from the menu bar; wait until every cell ran and the kernel idles."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    # Queued cells show [*] at once; the run is over when none does and the kernel is idle.
    wait_for_state(page, lambda s: any(p == "[*]:" for p in s["prompts"])
                   or all(p[1:-2].isdigit() for p in s["prompts"]), 30, "the run to start")
    state = wait_for_state(page, lambda s: "[*]:" not in s["prompts"] and s["kernel"] == "idle",
                           RUN_ALL_S, "Run All Cells to finish")
    not_run = [i for i, p in enumerate(state["prompts"]) if not p[1:-2].isdigit()]
    assert not not_run, (f"code cells {not_run} did not run (an earlier cell failed?): "
                         f"{state['errors']}")
    return state


# --- the threshold tuner --------------------------------------------------------------------------
#: JavaScript: the tuner's sliders, metrics table and overlay image, found by its NMS slider.
_TUNER_STATE_JS = """() => {
  const nms = [...document.querySelectorAll('.widget-slider .widget-label')]
    .find(l => l.textContent.trim() === 'NMS IoU');
  const root = nms && nms.closest('.jp-OutputArea-output');
  if (!root) return null;
  const sliders = [...root.querySelectorAll('.widget-slider')].map(s => ({
    label: s.querySelector('.widget-label').textContent.trim(),
    readout: (s.querySelector('.widget-readout') || {}).textContent}));
  const table = root.querySelector('.widget-html table');
  const rows = table ? [...table.querySelectorAll('tr')]
    .map(r => [...r.cells].map(c => c.textContent.trim())) : [];
  const img = root.querySelector('img');
  return {sliders, rows, table: table ? table.textContent : null,
          image: img ? img.getAttribute('src') : null,
          image_size: img ? [img.naturalWidth, img.naturalHeight] : null};
}"""
NON_CLASS_SLIDERS = ("NMS IoU", "image")


def wait_for_tuner(page, predicate, timeout_s: float, what: str) -> dict:
    """Poll what the ThresholdTuner shows (sliders, table, overlay) until ``predicate``."""
    return poll(page, _TUNER_STATE_JS, predicate, timeout_s, what)


def boxes_kept(state: dict) -> int:
    """The "N boxes kept of M" count from the tuner's metrics table."""
    match = re.search(r"(\d+) boxes kept of", state["rows"][-1][-1])
    assert match, f"no 'boxes kept' in the tuner's last row: {state['rows'][-1]}"
    return int(match.group(1))


def test_ipywidgets_matches_the_pyproject_pin():
    """The kernel's ipywidgets is the version smearlab pins, with its JupyterLab manager."""
    from packaging.requirements import Requirement

    pin = next(r for r in map(Requirement, metadata.requires("smearlab") or [])
               if r.name == "ipywidgets" and not r.marker)
    assert pin.specifier, "pyproject.toml should pin ipywidgets (the widget protocol version)"
    installed = metadata.version("ipywidgets")
    assert pin.specifier.contains(installed), f"ipywidgets {installed} is outside {pin}"
    assert metadata.version("jupyterlab_widgets"), "jupyterlab_widgets (the lab manager) missing"


@pytest.mark.browser
def test_threshold_tuner_in_jupyterlab(page, lab, tmp_path):
    """Run notebook 03 in JupyterLab, move a tuner slider, see the metrics and overlay change."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    open_notebook(page, lab, NOTEBOOK.name)
    run_all_cells(page)

    # The tuner rendered: one score slider per class of its metrics table, NMS IoU, an overlay.
    before = wait_for_tuner(page, lambda s: s["table"] and s["image"], WIDGET_UPDATE_S,
                            "the tuner's table and overlay")
    labels = [s["label"] for s in before["sliders"]]
    classes = [r[0] for r in before["rows"][1:-1]]          # header, one row per class, "all"
    assert [lb for lb in labels if lb not in NON_CLASS_SLIDERS] == classes, (labels, classes)
    assert "NMS IoU" in labels and len(classes) >= 2
    assert before["image"].startswith("blob:") and min(before["image_size"]) > 0

    tuner = page.locator(".jp-OutputArea-output",
                         has=page.locator(".widget-label", has_text="NMS IoU"))
    tuner.scroll_into_view_if_needed()
    tuner.screenshot(path=str(shots / "tuner_before.png"))

    # Move the first class's score slider to an end by keyboard on its focused handle: to 1
    # (fewer boxes kept) from below 0.5, else to 0 (more boxes kept).
    moved = labels.index(classes[0])
    up = float(before["sliders"][moved]["readout"]) < 0.5
    handle = tuner.locator(".widget-slider").nth(moved).locator(".noUi-handle")
    handle.focus()
    handle.press("End" if up else "Home")
    after = wait_for_tuner(page, lambda s: boxes_kept(s) != boxes_kept(before)
                           and s["image"] != before["image"], WIDGET_UPDATE_S,
                           f"the table and overlay to change after moving {classes[0]!r}")
    assert after["sliders"][moved]["readout"] == ("1.00" if up else "0.00")
    assert (boxes_kept(after) < boxes_kept(before)) == up, (before["rows"], after["rows"])
    assert after["rows"][1:-1] != before["rows"][1:-1]    # the per-class metrics changed
    assert after["image"].startswith("blob:") and min(after["image_size"]) > 0

    tuner.screenshot(path=str(shots / "threshold_tuner.png"))
    page.screenshot(path=str(shots / "jupyterlab.png"))
    assert (shots / "threshold_tuner.png").stat().st_size > 10_000
