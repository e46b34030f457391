"""The lessons as a learner sees them: JupyterLab in a real browser, Run All, move the sliders.

nbval runs the notebooks' kernels but never renders a widget, so a broken slider (an ipywidgets /
JupyterLab mismatch, a callback that raises, a figure drawn outside its Output) would pass it.
This test serves a temporary copy of the lessons with JupyterLab on a free local port, opens
lessons 02, 03, 04 and 08 in headless Chromium through Playwright (each in a fresh workspace),
runs every cell, then moves sliders with the keyboard (the crop scale and number of local crops,
the temperatures, the center momentum, the image and the mass kept) and checks that each label is
shown in full, that its live figure changed, that no cell shows an error and that the interactive
cell holds one figure only.

It needs Chromium (Debian's `chromium` package) and the `playwright` Python package; without
them it is skipped with the reason. Screenshots of a failure are written to the folder that the
failure message names.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LESSONS = {  # lesson -> the labels of the sliders to move
    "02_multi_crop.ipynb": ("local_min", "n_local_crops"),
    "03_head_temperature_loss.ipynb": ("student_temp", "teacher_temp"),
    "04_centering_and_collapse.ipynb": ("teacher_temp", "center_momentum"),
    "08_attention_heads.ipynb": ("image", "keep"),
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (install Debian's "
                       "'chromium' package to run the browser test)"),
]
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the 'playwright' Python package is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a copy of notebooks/ on a free port; yields (base url, token)."""
    folder = tmp_path_factory.mktemp("lessons")
    for name in LESSONS:
        shutil.copy(ROOT / "notebooks" / name, folder / name)
    port, token = _free_port(), "minidino-browser-test"
    settings = folder / "settings"  # every cell in the page (no windowing), no news pop-up
    for plugin, values in (("notebook-extension/tracker", '{"windowingMode": "none"}'),
                           ("apputils-extension/notification", '{"fetchNews": "false"}')):
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(values)
    log = (folder / "jupyter.log").open("w")
    env = {**os.environ, "MINIDINO_FAST": "1", "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         "--ip=127.0.0.1", f"--ServerApp.token={token}", f"--ServerApp.root_dir={folder}",
         "--ServerApp.open_browser=False", "--allow-root", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start; see "
                                       f"{folder / 'jupyter.log'}") from None
                time.sleep(0.5)
        yield base, token
    finally:  # by its own process id (and its kernels, in its process group)
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        yield chromium
        chromium.close()


def _notebook(page):
    """The notebook on show (a restored workspace could hold hidden ones too)."""
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")


def _run_all(page, timeout_s: float = 420) -> None:
    """Run every cell and wait until none is queued or running."""
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
    start = time.monotonic()
    while True:
        time.sleep(1)
        prompts = _notebook(page).locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        busy = [p for p in prompts if "*" in p]
        done = prompts and all(any(ch.isdigit() for ch in p) for p in prompts)
        if done and not busy:
            return
        if not busy and time.monotonic() - start > 60:
            raise TimeoutError(f"no cell started within 60 s: {prompts}")
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"cells still running after {timeout_s:.0f} s: {prompts}")


ERROR_LINE = re.compile(r"^[\w.]*(?:Error|Exception): .*$", re.MULTILINE)  # "ValueError: x"


def _errors(page) -> list[str]:
    """Outputs that show a traceback or an exception line (not a message that names an error,
    such as lesson 08's note that the official weights could not be downloaded offline), each
    summed up by its exception line."""
    innermost = ".jp-OutputArea-output:not(:has(.jp-OutputArea-output))"  # not a widget's frame
    errors = []
    for text in _notebook(page).locator(innermost).all_inner_texts():
        lines = ERROR_LINE.findall(text)
        if "Traceback" in text or lines and "Exercise" not in text:
            errors.append(lines[-1] if lines else text[:300])
    return errors


def _labelled(page, label: str):
    """Slider widgets labelled exactly `label`, as a locator relative to whatever holds them."""
    return page.locator(".widget-slider").filter(
        has=page.locator(".widget-label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")))


def _slider(page, label: str):
    """The slider widget whose label reads `label` (the whole of it: labels must not be cut)."""
    sliders = _notebook(page).locator(_labelled(page, label))
    assert sliders.count() >= 1, f"no slider labelled {label!r}"
    slider = sliders.first
    shown = slider.locator(".widget-label").inner_text().strip()
    width = slider.locator(".widget-label").evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert shown == label and width[0] <= width[1], f"slider label {shown!r} is cut: {width}"
    return slider


def _src(figures) -> str | None:
    """The image data of the one figure, or None while there is none (or more than one)."""
    if figures.count() != 1:
        return None
    try:
        return figures.first.get_attribute("src", timeout=2_000)
    except sync_api.TimeoutError:  # replaced between count() and here
        return None


@pytest.mark.parametrize("lesson", list(LESSONS))
def test_sliders_redraw_their_one_live_figure(lab, browser, lesson, tmp_path):
    base, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    shots = tmp_path / "screenshots"
    try:
        workspace = Path(lesson).stem  # a fresh one per lesson: no other notebook restored
        page.goto(f"{base}/lab/workspaces/{workspace}/tree/{lesson}?reset&token={token}",
                  timeout=60_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        select = page.locator(".jp-Dialog button", has_text="Select")  # the kernel to start
        try:
            select.click(timeout=10_000)
        except sync_api.TimeoutError:
            pass  # no dialog: the notebook names its kernel
        _run_all(page)
        assert _errors(page) == [], f"{lesson}: a cell shows an error"
        for label in LESSONS[lesson]:
            slider = _slider(page, label)
            cell = _notebook(page).locator(".jp-CodeCell").filter(has=_labelled(page, label))
            figures = cell.locator(".jp-OutputArea-output img")
            assert figures.count() == 1, (f"{lesson}: the cell of slider {label!r} shows "
                                          f"{figures.count()} figures; want one live figure")
            before = figures.first.get_attribute("src")
            slider.locator(".noUi-handle, .slider-handle, [role=slider]").first.focus()
            for key in ("ArrowRight", "ArrowRight", "ArrowLeft"):
                page.keyboard.press(key)
                time.sleep(0.3)
            deadline = time.monotonic() + 30
            while _src(figures) in (before, None):  # None: being redrawn, or gone
                errors = _errors(page)
                assert errors == [], f"{lesson}: moving {label!r} raised: {errors[0]}"
                assert time.monotonic() < deadline, \
                    f"{lesson}: moving {label!r} did not redraw its figure"
                time.sleep(0.25)
            assert figures.count() == 1, f"{lesson}: moving {label!r} left a second figure"
        assert _errors(page) == [], f"{lesson}: a callback raised"
    except BaseException as err:
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / f"{Path(lesson).stem}.png"), full_page=True)
        raise AssertionError(f"{err} (screenshot in {shots})") from err
    finally:
        page.close()
