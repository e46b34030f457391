"""The course machinery: the exercise generator, the check contract, and the lesson conventions."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

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


def _toy_lesson(root: Path, answer: str = "return x + 1") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            "# Toy\n[Open in Colab](https://colab.research.google.com/github/minidino/minidino/"
            "blob/main/notebooks/99_toy.ipynb)"),
        nbformat.v4.new_code_cell(
            "# Exercise 9.1: add one\ndef add_one(x):\n    \"\"\"x -> x + 1\"\"\"\n"
            f"    ### BEGIN SOLUTION\n    {answer}\n    ### END SOLUTION\n"),
        nbformat.v4.new_markdown_cell("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION"),
    ]
    for kind in ("notebooks", *gen.KINDS):
        (root / kind).mkdir(parents=True, exist_ok=True)
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
    assert f"colab.research.google.com/github/minidino/minidino/blob/main/notebooks/{lesson.name}"\
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
