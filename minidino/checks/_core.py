"""The machinery behind every exercise check: run, compare, explain, fall back.

A lesson cell looks like this::

    def dino_loss(student_out, teacher_out, student_temp, teacher_temp):
        ...  # the learner's code (a stub that raises NotImplementedError at first)

    dino_loss = checks.dino_loss(dino_loss)

The check calls the learner's function on seeded random and edge cases and compares each result
with minidino's reference. Three outcomes:

* it matches: the check prints a tick and returns the learner's function;
* the function still raises ``NotImplementedError`` (an untouched exercise): the check says "not
  done yet" and returns minidino's reference, so the rest of the notebook runs;
* it is wrong: the check raises ``CheckFailed`` with the case that failed, the numbers, and a hint
  in plain words about the usual cause.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])


class CheckFailed(AssertionError):
    """Raised when a learner's implementation disagrees with the reference."""

    def _render_traceback_(self) -> list[str]:
        """In Jupyter, show the explanation only: the frames inside the check are noise."""
        return [f"CheckFailed: {self}"]


def fail(exercise: str, case: str, problem: str, hint: str = "") -> None:
    """Raise `CheckFailed` with a message a learner can act on."""
    message = f"{exercise} is not right yet.\n  case: {case}\n  problem: {problem}"
    if hint:
        message += f"\n  hint: {hint}"
    raise CheckFailed(message)


def expect_close(exercise: str, case: str, actual: Any, expected: Tensor, hint: str = "",
                 atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Fail unless `actual` is a tensor with `expected`'s shape and (nearly) its values."""
    if not isinstance(actual, Tensor):
        fail(exercise, case, f"expected a torch.Tensor, got {type(actual).__name__}")
    if tuple(actual.shape) != tuple(expected.shape):
        fail(exercise, case, f"shape {tuple(actual.shape)}, expected {tuple(expected.shape)}",
             hint)
    actual_f = actual.detach().to(torch.float64)  # same shape as expected
    expected_f = expected.detach().to(torch.float64)
    if not torch.isfinite(actual_f).all():
        fail(exercise, case, "the result contains NaN or inf", hint)
    if not torch.allclose(actual_f, expected_f, atol=atol, rtol=rtol):
        diff = (actual_f - expected_f).abs().max().item()
        fail(exercise, case, f"values differ from the reference by up to {diff:.3g}", hint)


def expect(exercise: str, case: str, ok: bool, problem: str, hint: str = "") -> None:
    """Fail with `problem` unless `ok`."""
    if not ok:
        fail(exercise, case, problem, hint)


def run_check(exercise: str, learner: F, reference: F, trials: Callable[[F], int]) -> F:
    """Run `trials(learner)`; return the function the rest of the notebook should use.

    `trials` raises `CheckFailed` on the first wrong case and returns the number of cases it ran.
    """
    if not callable(learner):
        raise TypeError(f"{exercise}: expected a function, got {type(learner).__name__}")
    try:
        n_cases = trials(learner)
    except NotImplementedError:
        print(f"[not done yet] {exercise}: the cells below use minidino's reference instead.")
        return reference
    print(f"[ok] {exercise}: matches minidino's reference on {n_cases} cases.")
    return learner
