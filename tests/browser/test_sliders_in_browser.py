"""The lessons as a learner sees them: JupyterLab in a real browser, Run All, move the sliders.

nbval runs the notebooks' kernels but never renders a widget, so a broken slider (an ipywidgets /
JupyterLab mismatch, a callback that raises, a figure drawn outside its Output) would pass it.
This test serves a temporary copy of the lessons with JupyterLab on a free local port, opens
every lesson with a live figure (01, 02, 03, 04, 05, 06, 08, 09 and 11) in headless Chromium
through Playwright (each in a fresh workspace), runs every cell, checks that the kernel runs in
fast mode, then moves every control of every live figure, one at a time. Sliders move with the
keyboard: lesson 01's patch and new grid size, 02's four crop scales, number of local crops and
seed, 03's and 04's temperatures and 04's center momentum, 05's base momentum and steps, 06's
warm-up and final learning rate, 08's image, layer and mass kept, 09's grid, mask ratio and seed,
11's radius, k, temperature, context and frame. Dropdowns get another option: 01's patch size,
08's backbone and head, 11's features (02's source has one option here: no CIFAR-10 in the
served copy). For each it checks that its label is shown in full, that its value moved, that its
live figure changed, that no cell shows an error and that the interactive cell holds one figure
only. The test fails when a lesson shows a control, or has a live figure, that LESSONS leaves
out.

It needs Chromium (Debian's `chromium` package) and the `playwright` Python package; without
them it is skipped with the reason. Screenshots of a failure are written to the folder that the
failure message names.
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
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LESSONS = {  # lesson -> the labels of its controls (sliders, dropdowns), every one it shows
    "01_vit_from_scratch.ipynb": ("patch_size", "patch", "new_grid"),
    "02_multi_crop.ipynb": ("source", "global_min", "global_max", "local_min", "local_max",
                            "n_local_crops", "seed"),
    "03_head_temperature_loss.ipynb": ("student_temp", "teacher_temp"),
    "04_centering_and_collapse.ipynb": ("teacher_temp", "center_momentum"),
    "05_ema_teacher.ipynb": ("base m", "steps"),
    "06_training_loop.ipynb": ("warmup_epochs", "min_lr_ratio"),
    "08_attention_heads.ipynb": ("backbone", "image", "layer", "head", "keep"),
    "09_ibot_masked_patches.ipynb": ("grid", "ratio", "seed"),
    "11_video_label_propagation.ipynb": ("name", "radius", "topk", "temperature", "n_context",
                                         "frame"),
}
NUDGE = ("ArrowRight", "ArrowRight", "ArrowLeft")  # one step up (down from the top), via two
KEYS = {  # (lesson, label) -> the keys for a slider that one step from its default leaves as is
    # radius 12 (the default and top) and 11 both span lesson 11's 12 x 12 grid: five steps down
    ("11_video_label_propagation.ipynb", "radius"): ("PageDown",),
}
CONTROLS = ".widget-slider, .widget-dropdown"  # the kinds of control `course.live_figure` shows

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


def _wait_until(page, ready: Callable[[], bool], failure: str, timeout_s: float = 120) -> None:
    """Poll `ready()` until it is true; fail with `failure` after `timeout_s`, or at once with
    the error that a cell shows meanwhile (a callback that raised). The timeout is generous: on
    a loaded machine a niced kernel can take tens of seconds for a redraw of one second."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        errors = _errors(page)
        assert errors == [], f"{failure}: {errors[0]}"
        assert time.monotonic() < deadline, f"{failure} within {timeout_s:.0f} s"
        time.sleep(0.25)


def _labelled(page, label: str):
    """Controls labelled exactly `label`, as a locator relative to whatever holds them."""
    return page.locator(CONTROLS).filter(
        has=page.locator(".widget-label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")))


def _control(page, label: str):
    """The slider or dropdown whose label reads `label` (the whole of it: labels must not be
    cut)."""
    controls = _notebook(page).locator(_labelled(page, label))
    assert controls.count() >= 1, f"no control labelled {label!r}"
    control = controls.first
    shown = control.locator(".widget-label").inner_text().strip()
    width = control.locator(".widget-label").evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert shown == label and width[0] <= width[1], f"label {shown!r} is cut: {width}"
    return control


def _value(control) -> str:
    """What the control shows: a slider's readout, a dropdown's chosen option."""
    if "widget-dropdown" in (control.get_attribute("class") or ""):
        return control.locator("select").input_value()
    return control.locator(".widget-readout").inner_text().strip()


def _move(page, control, keys: tuple[str, ...]) -> bool:
    """Move a slider with `keys`, or choose the next option of a dropdown (the first after the
    last); False for a dropdown with one option, which has nothing to choose."""
    if "widget-dropdown" in (control.get_attribute("class") or ""):
        select = control.locator("select")
        count = select.locator("option").count()
        if count < 2:
            return False
        index = select.evaluate("s => s.selectedIndex")
        select.select_option(index=(index + 1) % count)
        return True
    control.locator(".noUi-handle, .slider-handle, [role=slider]").first.focus()
    for key in keys:
        page.keyboard.press(key)
        time.sleep(0.3)  # a learner's pace: each key press is a value of its own
    return True


def _src(figures) -> str | None:
    """The image data of the one figure, or None while there is none (or more than one)."""
    if figures.count() != 1:
        return None
    try:
        return figures.first.get_attribute("src", timeout=2_000)
    except sync_api.TimeoutError:  # replaced between count() and here
        return None


def _kernels(base: str, token: str, method: str = "GET", kernel: str = "") -> list[dict]:
    """The server's kernels (GET), or shut down `kernel` (DELETE), by JupyterLab's REST API."""
    request = urllib.request.Request(f"{base}/api/kernels/{kernel}", method=method,
                                     headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.load(reply) if method == "GET" else []


def _kernel_states(base: str, token: str) -> list[str]:
    """The execution state of every kernel, as the server last saw it ("idle", "busy", ...)."""
    return [kernel["execution_state"] for kernel in _kernels(base, token)]


def _kernels_idle(base: str, token: str) -> bool:
    """Whether the server has seen every kernel go idle after its last request (a widget's
    change is one: its redraw runs in the kernel)."""
    return all(state == "idle" for state in _kernel_states(base, token))


def _settled(base: str, token: str, figures) -> Callable[[], bool]:
    """A condition: the kernels are idle and the one figure is the same at two calls in a row
    (no redraw queued behind the one on show)."""
    last: list[str | None] = [None]

    def ready() -> bool:
        src = _src(figures) if _kernels_idle(base, token) else None
        settled = src is not None and src == last[0]
        last[0] = src
        return settled

    return ready


def test_every_lesson_with_a_live_figure_is_covered():
    """A lesson with sliders or dropdowns is in LESSONS, so that the browser moves them."""
    live = set()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = "".join("".join(cell["source"]) for cell in json.loads(path.read_text())["cells"]
                       if cell["cell_type"] == "code")
        if re.search(r"\blive_figure\(|\bipywidgets\b|\binteract(?:ive)?\(", code):
            live.add(path.name)
    assert live - set(LESSONS) == set(), "lessons with controls that the browser test leaves out"


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
        setup = _notebook(page).locator(".jp-OutputArea-output", has_text="fast mode: ")
        assert "fast mode: on" in " ".join(setup.all_inner_texts()), \
            f"{lesson}: the kernel did not inherit MINIDINO_FAST=1 (course.setup's line)"
        shown = {text.strip() for text in
                 _notebook(page).locator(CONTROLS).locator(".widget-label").all_inner_texts()}
        assert shown - {""} == set(LESSONS[lesson]), \
            f"{lesson}: controls shown {sorted(shown - {''})}, LESSONS lists {LESSONS[lesson]}"
        for label in LESSONS[lesson]:
            control = _control(page, label)
            cell = _notebook(page).locator(".jp-CodeCell").filter(has=_labelled(page, label))
            figures = cell.locator(".jp-OutputArea-output img")
            assert figures.count() == 1, (f"{lesson}: the cell of {label!r} shows "
                                          f"{figures.count()} figures; want one live figure")
            before, value = figures.first.get_attribute("src"), _value(control)
            if not _move(page, control, KEYS.get((lesson, label), NUDGE)):
                continue  # one option (02's source: the served copy has no CIFAR-10 on disk)
            _wait_until(page, lambda c=control, v=value: _value(c) != v,
                        f"{lesson}: {label!r} still shows {value!r} after the move")
            _wait_until(page, lambda f=figures, b=before: _src(f) not in (b, None),  # None: drawing
                        f"{lesson}: moving {label!r} to {_value(control)!r} did not redraw "
                        "its figure")
            _wait_until(page, _settled(base, token, figures),
                        f"{lesson}: the figure of {label!r} did not settle to one")
            assert figures.count() == 1, f"{lesson}: moving {label!r} left a second figure"
        assert _errors(page) == [], f"{lesson}: a callback raised"
    except BaseException as err:
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / f"{Path(lesson).stem}.png"), full_page=True)
        try:
            kernels = f"kernels {_kernel_states(base, token)}; "
        except OSError:
            kernels = ""
        raise AssertionError(f"{err} ({kernels}screenshot in {shots})") from err
    finally:
        page.close()
        try:  # the lesson's kernel (the only one): the next lesson gets the machine to itself
            for kernel in _kernels(base, token):
                _kernels(base, token, "DELETE", kernel["id"])
        except OSError as err:  # not to hide the test's own failure
            print(f"could not shut down the kernel of {lesson}: {err}")
