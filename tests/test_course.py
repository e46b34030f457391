"""The course machinery: the exercise generator, the check contract, the lesson conventions, and
the helpers of the lessons' live figures (minidino/course.py)."""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
import struct
import sys
from pathlib import Path

import IPython.display
import matplotlib
import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pytest
from ipywidgets import FloatLogSlider, FloatSlider, IntSlider, Layout, Output, VBox

from minidino import course
from minidino.checks import CheckFailed, run_check
from minidino.checks._core import expect_close

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _generator():
    spec = importlib.util.spec_from_file_location("make_exercises",
                                                  ROOT / "scripts" / "make_exercises.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_exercises"] = module
    spec.loader.exec_module(module)
    return module


gen = _generator()


INSTALL_CELL = ('import subprocess, sys\nsubprocess.run([sys.executable, "-m", "pip", "install", '
                '"-q",\n                "minidino @ git+https://github.com/minidino/minidino"])\n')


def _toy_lesson(root: Path, answer: str = "return x + 1",
                repository: str = "https://github.com/minidino/minidino") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            "# Toy\n[Open in Colab](https://colab.research.google.com/github/minidino/minidino/"
            "blob/main/notebooks/99_toy.ipynb)"),
        nbformat.v4.new_code_cell(
            "# Exercise 9.1: add one\ndef add_one(x):\n    \"\"\"x -> x + 1\"\"\"\n"
            f"    ### BEGIN SOLUTION\n    {answer}\n    ### END SOLUTION\n"),
        nbformat.v4.new_markdown_cell("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION"),
        nbformat.v4.new_code_cell(INSTALL_CELL),
    ]
    for kind in ("notebooks", *gen.KINDS):
        (root / kind).mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "toy"\n\n[project.urls]\nRepository = "{repository}"\n')
    path = root / "notebooks" / "99_toy.ipynb"
    nbformat.write(nb, path)
    return path


def _cells(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells]


def test_generator_writes_stub_and_answer(tmp_path: Path) -> None:
    _toy_lesson(tmp_path)
    assert gen.main(["--root", str(tmp_path)]) == 0
    exercise = _cells(tmp_path / "exercises" / "99_toy.ipynb")
    solution = _cells(tmp_path / "solutions" / "99_toy.ipynb")
    assert 'raise NotImplementedError("Exercise 9.1: add one")' in exercise[2]
    assert "x + 1\n" not in exercise[2] and "BEGIN SOLUTION" not in exercise[2]
    assert "return x + 1" in solution[2] and "BEGIN SOLUTION" not in solution[2]
    assert "*Your answer here.*" in exercise[3] and "Because." in solution[3]
    assert "/blob/main/exercises/99_toy.ipynb" in exercise[0]
    assert "Fill in the exercises here" in exercise[1] and "notebooks/99_toy.ipynb" in exercise[1]
    namespace: dict = {}
    exec(exercise[2], namespace)  # the stub defines the function; it raises only when called
    with pytest.raises(NotImplementedError, match="Exercise 9.1"):
        namespace["add_one"](1)


def test_check_passes_when_up_to_date(tmp_path: Path) -> None:
    _toy_lesson(tmp_path)
    gen.main(["--root", str(tmp_path)])
    assert gen.main(["--root", str(tmp_path), "--check"]) == 0


def test_check_fails_when_a_lesson_is_edited_without_regenerating(tmp_path: Path) -> None:
    _toy_lesson(tmp_path)
    gen.main(["--root", str(tmp_path)])
    _toy_lesson(tmp_path, answer="return 1 + x")  # edit the source only
    problems = gen.stale_files(tmp_path)
    assert any("out of date" in p for p in problems)
    assert gen.main(["--root", str(tmp_path), "--check"]) == 1


def test_check_fails_on_outputs_orphans_and_missing_copies(tmp_path: Path) -> None:
    lesson = _toy_lesson(tmp_path)
    gen.main(["--root", str(tmp_path)])
    nb = nbformat.read(lesson, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="2\n")]
    nb.cells[1].execution_count = 1
    nbformat.write(nb, lesson)
    shutil.copy(tmp_path / "exercises" / "99_toy.ipynb", tmp_path / "exercises" / "98_old.ipynb")
    (tmp_path / "solutions" / "99_toy.ipynb").unlink()
    problems = "\n".join(gen.stale_files(tmp_path))
    assert "carries outputs" in problems
    assert "98_old.ipynb has no lesson" in problems
    assert "solutions/99_toy.ipynb is missing" in problems


@pytest.mark.parametrize("source, message", [
    ("# Exercise 9.1: x\ndef f():\n    ### BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n", "Exercise N.M"),
    ("# Exercise 9.1: x\n### BEGIN SOLUTION\ny = 1\n### END SOLUTION\n", "function body"),
])
def test_generator_rejects_broken_markers(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(gen.SourceError, match=message):
        gen._code_cell(source, "exercises", "cell")


def test_the_repository_copies_are_up_to_date() -> None:
    assert gen.stale_files(ROOT) == []


def test_badges_and_installs_point_at_the_repository_of_pyproject(tmp_path: Path) -> None:
    lesson = _toy_lesson(tmp_path, repository="https://github.com/someone/fork")
    problems = gen.stale_files(tmp_path)
    assert any("99_toy.ipynb points Colab or pip at another address than "
               "https://github.com/someone/fork" in p for p in problems)
    assert gen.main(["--root", str(tmp_path), "--check"]) == 1
    assert gen.main(["--root", str(tmp_path)]) == 0  # rewrites the lesson and both copies
    assert gen.stale_files(tmp_path) == []
    for path, folder in ((lesson, "notebooks"), (tmp_path / "exercises" / "99_toy.ipynb",
                                                 "exercises")):
        cells = _cells(path)
        assert ("https://colab.research.google.com/github/someone/fork/blob/main/"
                f"{folder}/99_toy.ipynb") in "\n".join(cells)
        assert '"minidino @ git+https://github.com/someone/fork"' in "\n".join(cells)
        assert "github.com/minidino/minidino" not in "\n".join(cells)


@pytest.mark.parametrize("urls", ["", '[project.urls]\nRepository = "https://gitlab.com/a/b"\n'])
def test_the_repository_must_be_a_github_address(tmp_path: Path, urls: str) -> None:
    _toy_lesson(tmp_path)
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "toy"\n{urls}')
    with pytest.raises(gen.SourceError, match="Repository"):
        gen.repository(tmp_path)
    assert gen.main(["--root", str(tmp_path), "--check"]) == 2


def test_this_project_names_its_repository_once() -> None:
    assert gen.repository(ROOT) == "https://github.com/minidino/minidino"
    install = gen.point_at("minidino @ git+https://github.com/a/b.git@main", "https://github.com/c/d")
    assert install == "minidino @ git+https://github.com/c/d"


def test_run_check_contract(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    def reference(x):
        return x + 1

    def trials(fn) -> int:
        x = torch.arange(3.0)
        expect_close("Exercise 9.1", "x = [0, 1, 2]", fn(x), reference(x), hint="add one")
        return 1

    def stub(x):
        raise NotImplementedError("Exercise 9.1: add one")

    def good(x):
        return 1 + x

    assert run_check("Exercise 9.1", stub, reference, trials) is reference
    assert "not done yet" in capsys.readouterr().out
    assert run_check("Exercise 9.1", good, reference, trials) is good
    with pytest.raises(CheckFailed, match="hint: add one"):
        run_check("Exercise 9.1", lambda x: x + 2, reference, trials)
    with pytest.raises(CheckFailed, match="shape"):
        run_check("Exercise 9.1", lambda x: x[:2] + 1, reference, trials)


# --- conventions every lesson follows (notebooks/README.md) ---------------------------------


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.name for p in LESSONS])
def test_lesson_conventions(lesson: Path) -> None:
    cells = _cells(lesson)
    text = "\n".join(cells)
    assert re.match(r"\d\d_[a-z0-9_]+\.ipynb$", lesson.name)
    repository = gen.repository(ROOT).removeprefix("https://github.com/")
    assert f"colab.research.google.com/github/{repository}/blob/main/notebooks/{lesson.name}"\
        in cells[0], "the first cell carries the Open-in-Colab badge"
    assert "Learning goals" in cells[0], "the first cell lists the learning goals"
    assert re.search(r"\*\*Time:\*\* about \d+ min", cells[0]), "and a time estimate"
    assert 'if "google.colab" in sys.modules' in text and "course.setup(" in text, "setup cell"
    assert re.search(r"^#+ .*Recap", text, re.MULTILINE), "a recap section"
    assert "arxiv.org" in text and "minidino/" in text, "the recap links the paper and the code"
    assert "MINIDINO_FAST" not in text, "lessons read sizes from minidino.course, not the flag"


def test_every_exercise_is_checked_and_there_are_enough() -> None:
    labels: list[str] = []
    for lesson in LESSONS:
        cells = nbformat.read(lesson, as_version=4).cells
        for i, cell in enumerate(cells):
            if cell.cell_type != "code" or gen.BEGIN not in cell.source:
                continue
            label = gen.LABEL.search(cell.source)
            assert label is not None, f"{lesson.name}, cell {i}: an exercise without a label"
            labels.append(label.group(1))
            following = "\n".join(c.source for c in cells[i:i + 3])
            assert "checks." in following, f"{lesson.name}: {label.group(1)} has no check call"
    assert len(labels) == len(set(labels)), f"duplicate exercise numbers: {labels}"
    assert len(labels) >= 15, f"only {len(labels)} exercises: {labels}"


# --- the lessons' live figures (minidino/course.py) -----------------------------------------


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list:
    """What live_figure displays, in order (outside a notebook nothing is rendered)."""
    objects: list = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: objects.extend(objs))
    matplotlib.use("Agg")
    return objects


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def _images(objects: list) -> list[bytes]:
    return [o.data for o in objects if isinstance(o, IPython.display.Image)]


@pytest.mark.parametrize("value", [0.01, 0.02, 0.04, 0.05, 0.07, 0.1, 0.4, 0.9, 1.0])
def test_log_grid_passes_through_the_value_and_both_ends(value: float) -> None:
    lo, hi, step = course.log_grid(value, 0.01, 1.0)
    on_grid = (math.log10(value) - lo) / step
    assert abs(on_grid - round(on_grid)) < 1e-6, "a slider would snap the value off the grid"
    assert lo == math.log10(0.01) and 0 <= math.log10(1.0) - hi < 2e-4
    assert (hi - lo) / step >= 40 - 1e-6, "at least 40 steps"
    assert f"{10 ** lo:.3g}" == "0.01" and f"{10 ** hi:.3g}" == "1", "the ends read as given"


@pytest.mark.parametrize("args", [(0.5, 0.01, 0.1), (0.1, 0.0, 1.0), (0.1, 1.0, 0.01),
                                  (0.1, 0.1, 0.1)])
def test_log_grid_rejects_impossible_ranges(args: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError, match="0 < low <= value <= high"):
        course.log_grid(*args)


def test_log_slider_shows_its_value_with_three_digits() -> None:
    slider = course.log_slider(0.04, 0.01, 1.0)
    assert isinstance(slider, FloatLogSlider)
    assert slider.value == 0.04 and slider.base == 10 and slider.readout_format == ".3g"
    assert f"{slider.base ** slider.max:.3g}" == "1"
    assert f"{slider.base ** slider.min:.3g}" == "0.01"


def test_figure_png_keeps_the_figure_size() -> None:
    matplotlib.use("Agg")
    for title in ("short", "a title far wider than the figure itself " * 3):
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.set_title(title)
        assert _png_size(course.figure_png(fig)) == (4 * course.FIGURE_DPI, 2 * course.FIGURE_DPI)
        plt.close(fig)


def test_live_figure_draws_one_figure_below_its_controls_and_redraws_it(shown: list) -> None:
    calls = []

    def draw(temp: float, n: int) -> plt.Figure:
        calls.append((temp, n))
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot(np.arange(n) * temp)
        ax.set_title(f"T = {temp:.3g}, n = {n}")
        return fig

    temp, n = course.log_slider(0.04, 0.01, 1.0), IntSlider(value=2, min=1, max=5)
    open_before = plt.get_fignums()
    course.live_figure(draw, temp=temp, n=n)
    assert calls == [(0.04, 2)], "drawn once, when the cell runs"
    boxes = [o for o in shown if isinstance(o, VBox)]
    assert len(boxes) == 1 and len(_images(shown)) == 1
    panel, output = boxes[0].children
    assert list(panel.children) == [temp, n] and isinstance(output, Output), "controls, then figure"
    assert plt.get_fignums() == open_before, "the figure is closed, so it is not shown again"
    for control, name in ((temp, "temp"), (n, "n")):
        assert control.description == name and control.style.description_width == "initial"
        assert control.layout.width == course.SLIDER_WIDTH

    n.value = 3
    temp.value = 0.1
    assert calls[1:] == [(0.04, 3), (0.1, 3)]
    images = _images(shown)
    assert len(images) == 3 and len(set(images)) == 3, "each move draws a new figure"
    assert {_png_size(png) for png in images} == {(300, 200)}, "of the same size"
    assert plt.get_fignums() == open_before


def test_live_figure_keeps_labels_and_widths_it_is_given(shown: list) -> None:
    slider = FloatSlider(value=0.9, description="center_momentum", layout=Layout(width="300px"))

    def draw(momentum: float) -> plt.Figure:
        return plt.figure(figsize=(2, 1))

    course.live_figure(draw, momentum=slider)
    assert slider.description == "center_momentum" and slider.layout.width == "300px"
    assert slider.style.description_width == "initial"


def test_live_figure_fails_the_cell_when_the_first_drawing_fails(shown: list) -> None:
    def broken(x: int) -> plt.Figure:
        plt.figure()
        raise ValueError("cannot draw this")

    open_before = plt.get_fignums()
    with pytest.raises(ValueError, match="cannot draw this"):
        course.live_figure(broken, x=IntSlider())
    assert shown == [] and plt.get_fignums() == open_before


def test_live_figure_wants_the_figure_returned(shown: list) -> None:
    def shows_instead(x: int) -> None:
        plt.subplots()

    with pytest.raises(TypeError, match="return fig"):
        course.live_figure(shows_instead, x=IntSlider())
    with pytest.raises(ValueError, match="at least one control"):
        course.live_figure(shows_instead)


def test_live_figure_reports_an_error_after_a_move(shown: list) -> None:
    def draw(x: int) -> plt.Figure:
        if x > 2:
            raise RuntimeError("x is too large")
        return plt.figure(figsize=(2, 1))

    slider = IntSlider(value=0, max=5)
    course.live_figure(draw, x=slider)
    with pytest.raises(RuntimeError, match="too large"):  # in a notebook: shown in the Output
        slider.value = 3


@pytest.mark.parametrize("background, colour", [
    ("white", "black"), ("black", "white"), ("yellow", "black"), ("navy", "white"),
    (plt.get_cmap("viridis")(1.0), "black"), (plt.get_cmap("viridis")(0.0), "white"),
])
def test_text_colour_reads_on_its_background(background, colour: str) -> None:
    assert course.text_colour(background) == colour


def test_annotate_heatmap_writes_every_value_in_a_readable_colour() -> None:
    matplotlib.use("Agg")
    fig, ax = plt.subplots()
    image = ax.imshow(np.array([[0.0, 0.5], [0.9, 1.0]]), cmap="viridis", vmin=0, vmax=1)
    texts = course.annotate_heatmap(image)
    assert [t.get_text() for t in texts] == ["0.00", "0.50", "0.90", "1.00"]
    assert [t.get_position() for t in texts] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert [t.get_color() for t in texts] == ["white", "black", "black", "black"]
    plt.close(fig)
