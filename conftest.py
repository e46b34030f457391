"""Session-wide pytest hooks: a table of the time each notebook took (nbval runs one notebook per
file, one test per cell), so a notebook that outgrows its budget shows in every test run."""

from __future__ import annotations

from collections import defaultdict

NOTEBOOK_BUDGET_S = 90.0
_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report) -> None:
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if not _seconds:
        return
    terminalreporter.section(f"time per notebook (budget {NOTEBOOK_BUDGET_S:.0f} s each)")
    for path, seconds in sorted(_seconds.items(), key=lambda item: -item[1]):
        flag = "  OVER BUDGET" if seconds > NOTEBOOK_BUDGET_S else ""
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}{flag}")
