"""Generate `exercises/` and `solutions/` from the lessons in `notebooks/`.

The lessons are the one authored source. In a lesson, each exercise is a function whose body (or
part of it) sits between nbgrader-style markers, in a cell that names the exercise::

    # Exercise 3.2: the DINO loss over all cross-view pairs
    def dino_loss(student_out, teacher_out, student_temp, teacher_temp):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

    dino_loss = checks.dino_loss(dino_loss)

* `exercises/` gets the cell with each marked block replaced by
  `raise NotImplementedError("Exercise 3.2: ...")` at the block's indentation;
* `solutions/` gets the cell with the marker lines removed;
* markdown cells may hold a marked block too (an answer in words); the exercise copy shows
  "*Your answer here.*" instead;
* every Open-in-Colab link and every `minidino @ git+...` install line, in the lessons too, points
  at the repository named in pyproject.toml (`[project.urls] Repository`), the one place that
  address is written by hand: to run the course from a fork, change it there and rerun this.

Usage::

    python scripts/make_exercises.py          # strip outputs from the lessons, regenerate both
    python scripts/make_exercises.py --check  # exit 1 if anything is stale, has outputs or
                                              # points at another repository
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
LABEL = re.compile(r"#\s*(Exercise\s+\d+\.\d+)\s*:\s*(.+?)\s*$", re.MULTILINE)
KINDS = ("exercises", "solutions")
GITHUB = re.compile(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?")
COLAB = re.compile(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w.-]+/")
INSTALL = re.compile(r"minidino @ git\+[^\s\"'`)\]]+")
NOTE = {
    "exercises": "> **Your copy of the lesson.** Fill in the exercises here: each one raises "
                 "`NotImplementedError` until you do, and the check after it tells you whether "
                 "your version is right. (Course authors: this file is generated from "
                 "`notebooks/{name}` by `python scripts/make_exercises.py`; edit that lesson.)",
    "solutions": "> **The answers.** This is the lesson with every exercise filled in. (Course "
                 "authors: this file is generated from `notebooks/{name}` by "
                 "`python scripts/make_exercises.py`; edit that lesson.)",
}


class SourceError(ValueError):
    """A lesson breaks the exercise conventions."""


def _split_blocks(source: str, where: str) -> list[tuple[str, list[str]]]:
    """Split cell source into ("text", lines) and ("solution", lines) pieces."""
    pieces: list[tuple[str, list[str]]] = [("text", [])]
    inside = False
    for line in source.splitlines():
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise SourceError(f"{where}: '{BEGIN}' inside another solution block")
            pieces.append(("solution", [line]))
            inside = True
        elif marker == END:
            if not inside:
                raise SourceError(f"{where}: '{END}' without a matching '{BEGIN}'")
            pieces[-1][1].append(line)
            pieces.append(("text", []))
            inside = False
        else:
            pieces[-1][1].append(line)
    if inside:
        raise SourceError(f"{where}: '{BEGIN}' is never closed by '{END}'")
    return pieces


def _code_cell(source: str, kind: str, where: str) -> str:
    pieces = _split_blocks(source, where)
    if len(pieces) == 1:
        return source
    label = LABEL.search(source)
    if label is None:
        raise SourceError(f"{where}: a cell with a solution needs a line '# Exercise N.M: task'")
    out: list[str] = []
    for piece, lines in pieces:
        if piece == "text":
            out.extend(lines)
            continue
        begin, body = lines[0], lines[1:-1]
        indent = begin[: len(begin) - len(begin.lstrip())]
        if not indent:
            raise SourceError(f"{where}: a solution block must sit inside a function body, so "
                              "that the stub raises only when the function is called")
        if kind == "solutions":
            out.extend(body)
        else:
            message = f"{label.group(1)}: {label.group(2)}".replace('"', "'")
            out.append(f'{indent}raise NotImplementedError("{message}")')
    text = "\n".join(out)
    compile(text, where, "exec")  # the stub and the answer must both be valid Python
    return text


def _markdown_cell(source: str, kind: str, where: str) -> str:
    out: list[str] = []
    for piece, lines in _split_blocks(source, where):
        if piece == "text":
            out.extend(lines)
        elif kind == "solutions":
            out.extend(lines[1:-1])
        else:
            out.append("*Your answer here.*")
    return "\n".join(out)


def repository(root: Path = ROOT) -> str:
    """pyproject.toml's `[project.urls] Repository`: where Colab badges and installs point."""
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: read the one line
        found = re.search(r'^Repository\s*=\s*"([^"]*)"', text, re.MULTILINE)
        url = found.group(1) if found else None
    else:
        url = tomllib.loads(text).get("project", {}).get("urls", {}).get("Repository")
    match = GITHUB.fullmatch(url or "")
    if match is None:
        raise SourceError(f"pyproject.toml: [project.urls] Repository = {url!r} must be a GitHub "
                          "address, https://github.com/OWNER/NAME (Colab opens the lessons there)")
    return f"https://github.com/{match.group(1)}/{match.group(2)}"


def point_at(source: str, url: str) -> str:
    """`source` with its Colab links and minidino install lines pointing at repository `url`."""
    owner_name = url.removeprefix("https://github.com/")
    source = COLAB.sub(f"https://colab.research.google.com/github/{owner_name}/blob/main/", source)
    return INSTALL.sub(f"minidino @ git+{url}", source)


def _pointed(nb: nbformat.NotebookNode, url: str) -> nbformat.NotebookNode:
    out = copy.deepcopy(nb)
    for cell in out.cells:
        cell.source = point_at(cell.source, url)
    return out


def strip_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of `nb` with no outputs, execution counts or widget state."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    return nb


def has_outputs(nb: nbformat.NotebookNode) -> bool:
    """True when any code cell carries outputs or an execution count."""
    return any(c.cell_type == "code" and (c.outputs or c.execution_count is not None)
               for c in nb.cells) or "widgets" in nb.metadata


def derive(nb: nbformat.NotebookNode, kind: str, name: str) -> nbformat.NotebookNode:
    """The `kind` ("exercises" or "solutions") copy of lesson `nb` (file name `name`)."""
    out = strip_outputs(nb)
    for i, cell in enumerate(out.cells):
        where = f"notebooks/{name}, cell {i}"
        if cell.cell_type == "code":
            cell.source = _code_cell(cell.source, kind, where)
        elif cell.cell_type == "markdown":
            cell.source = _markdown_cell(cell.source, kind, where)
            cell.source = cell.source.replace("/blob/main/notebooks/", f"/blob/main/{kind}/")
    note = nbformat.v4.new_markdown_cell(NOTE[kind].format(name=name))
    note.id = f"generated-{kind}-note"
    out.cells.insert(1 if out.cells else 0, note)
    return out


def render(nb: nbformat.NotebookNode) -> str:
    """The exact text written to disk (stable, so `--check` can compare strings)."""
    return nbformat.writes(nb) + "\n"


def build(root: Path = ROOT) -> tuple[dict[Path, str], list[str]]:
    """Every file the lessons imply, and the problems found in the lessons themselves."""
    wanted: dict[Path, str] = {}
    problems: list[str] = []
    url = repository(root)
    lessons = sorted((root / "notebooks").glob("*.ipynb"))
    for path in lessons:
        nb = nbformat.read(path, as_version=4)
        if has_outputs(nb):
            problems.append(f"notebooks/{path.name} carries outputs (run without --check)")
        pointed = _pointed(nb, url)
        if [c.source for c in pointed.cells] != [c.source for c in nb.cells]:
            problems.append(f"notebooks/{path.name} points Colab or pip at another address than "
                            f"{url} (pyproject.toml; run without --check)")
        nb = pointed
        wanted[path] = render(strip_outputs(nb))
        for kind in KINDS:
            wanted[root / kind / path.name] = render(derive(nb, kind, path.name))
    return wanted, problems


def stale_files(root: Path = ROOT) -> list[str]:
    """Problems `--check` reports: outputs in lessons, another repository address in a lesson,
    files out of date, missing or orphaned."""
    wanted, problems = build(root)
    for path, text in wanted.items():
        rel = path.relative_to(root)
        if not path.exists():
            problems.append(f"{rel} is missing")
        elif path.read_text(encoding="utf-8") != text and path.parent.name in KINDS:
            problems.append(f"{rel} is out of date with notebooks/{path.name}")
    for kind in KINDS:
        for path in sorted((root / kind).glob("*.ipynb")):
            if path not in wanted:
                problems.append(f"{kind}/{path.name} has no lesson in notebooks/")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a generated file is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = stale_files(args.root)
            for problem in problems:
                print(f"stale: {problem}", file=sys.stderr)
            if problems:
                print("Run `python scripts/make_exercises.py` and commit the result.",
                      file=sys.stderr)
                return 1
            print("exercises/ and solutions/ are up to date with notebooks/.")
            return 0
        wanted, _ = build(args.root)
    except SourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, text in wanted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(args.root)}")
    for kind in KINDS:
        for path in sorted((args.root / kind).glob("*.ipynb")):
            if path not in wanted:
                path.unlink()
                print(f"removed {path.relative_to(args.root)} (no lesson)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
