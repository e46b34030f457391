"""Checks for lesson 11: the J score of one frame, and one step of video label propagation.

References: `minidino.propagation.j_score` (it takes one frame (H, W) as well as a clip), and
`reference_propagate_step` below, which is the body of `minidino.propagation.propagate_labels`
for one target frame (the tests check that the two agree frame by frame).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from minidino.checks._core import expect, expect_close, fail, run_check
from minidino.propagation import _window
from minidino.propagation import j_score as _j_score_ref

__all__ = ["frame_j_score", "propagate_step"]

FrameJFn = Callable[[Tensor, Tensor], Any]
StepFn = Callable[..., Tensor]


def reference_propagate_step(context_features: Tensor, context_labels: Tensor,
                             target_features: Tensor, topk: int, temperature: float,
                             radius: int | None, grid: tuple[int, int]) -> Tensor:
    """Soft labels of one target frame from C context frames.

    context_features (C, N, D), context_labels (C, N, L), target_features (N, D), N = h w for
    grid = (h, w) -> target soft labels (N, L). Each target patch takes the `topk` context
    patches of highest cosine similarity within `radius` patches of its own position (None: no
    window), weighted by softmax(similarity / temperature), and averages their labels.
    """
    return _step(context_features, context_labels, target_features, topk, temperature, radius,
                 grid)


def _step(context_features: Tensor, context_labels: Tensor, target_features: Tensor, topk: int,
          temperature: float, radius: int | None, grid: tuple[int, int], window: bool = True,
          weighted: bool = True, normalise: bool = True, softmax_dim: int = 1) -> Tensor:
    """The reference, and (with a flag turned off) the usual mistakes, to name them in hints."""
    C, N, D = context_features.shape
    L = context_labels.shape[-1]
    keys = context_features.float().reshape(C * N, D)  # (C N, D)
    queries = target_features.float()  # (N, D)
    if normalise:
        keys, queries = F.normalize(keys, dim=-1), F.normalize(queries, dim=-1)
    sim = (queries @ keys.T).reshape(N, C, N)  # (N, C, N) cosine similarity
    allowed = _window(*grid, radius) if window else None  # (N, N) or None
    if allowed is not None:
        sim = sim.masked_fill(~allowed[:, None], float("-inf"))  # (N, C, N)
    best, idx = sim.reshape(N, C * N).topk(min(topk, C * N), dim=1)  # (N, k)
    if weighted:
        weights = torch.softmax(best / temperature, dim=softmax_dim)  # (N, k)
    else:
        weights = torch.isfinite(best).float()  # (N, k) every allowed neighbour alike
        weights = weights / weights.sum(1, keepdim=True)
    values = context_labels.float().reshape(C * N, L)[idx]  # (N, k, L)
    return (weights[..., None] * values).sum(1)  # (N, L)


# ---------------------------------------------------------------- Exercise 11.1
def _variants(pred: Tensor, gt: Tensor) -> dict[str, float]:
    """The usual wrong ways to score one frame, with the hint that names each."""
    n = int(max(pred.max(), gt.max(), 0))
    ious, inters, unions, present = [], [], [], []
    for obj in range(0, n + 1):
        p, g = pred == obj, gt == obj
        inter, union = float((p & g).sum()), float((p | g).sum())
        inters.append(inter)
        unions.append(union)
        ious.append(inter / union if union else 0.0)
        present.append(union > 0)
    objs = [i for i in range(1, n + 1) if present[i]]
    in_gt = [i for i in range(1, int(gt.max()) + 1) if present[i]]
    mean = lambda ids: sum(ious[i] for i in ids) / len(ids) if ids else math.nan  # noqa: E731
    return {
        "the background (id 0) is scored as an object: objects are the ids 1..n only":
            mean([0] + objs),
        "an object absent from both maps counts as 0: skip it, it says nothing about this frame":
            sum(ious[1:]) / n if n else math.nan,
        "the objects are weighted by their size (all intersections over all unions): take the "
        "IoU of each object, then their plain mean":
            sum(inters[i] for i in objs) / sum(unions[i] for i in objs) if objs else math.nan,
        "only the ids of the ground truth are scored: an id found only in the prediction is a "
        "wrong object and scores 0 (take n as the largest id in either map)": mean(in_gt),
    }


def _frame_cases() -> list[tuple[str, Tensor, Tensor]]:
    """(case, pred, gt): id maps (H, W) with known answers, then random blobs."""
    def box(rows: slice, cols: slice, value: int = 1, size: int = 16) -> Tensor:
        mask = torch.zeros(size, size, dtype=torch.int64)
        mask[rows, cols] = value
        return mask

    g = torch.Generator().manual_seed(11)
    blobs = F.interpolate(torch.randn(2, 4, 5, 5, generator=g), size=(24, 24), mode="bilinear")
    pred_blobs, gt_blobs = (blobs.argmax(1) * (blobs.max(1).values > 0.3))  # (24, 24) ids 0..3
    two = box(slice(2, 8), slice(2, 8)) + box(slice(10, 16), slice(0, 16), 2)
    return [
        ("two objects, the prediction equals the ground truth", two, two.clone()),
        ("one object, the prediction shifted by half its width (IoU 1/3)",
         box(slice(0, 8), slice(4, 12)), box(slice(0, 8), slice(0, 8))),
        ("a large object predicted perfectly and a small one half right",
         box(slice(0, 12), slice(0, 12)) + box(slice(14, 16), slice(13, 15), 2),
         box(slice(0, 12), slice(0, 12)) + box(slice(14, 16), slice(12, 14), 2)),
        ("ids 1 and 3 only: object 2 is absent from both maps",
         box(slice(0, 6), slice(0, 6)) + box(slice(8, 16), slice(9, 16), 3),
         box(slice(0, 6), slice(1, 6)) + box(slice(8, 16), slice(8, 16), 3)),
        ("the prediction has an object 2 that the ground truth does not",
         box(slice(0, 8), slice(0, 8)) + box(slice(12, 16), slice(12, 16), 2),
         box(slice(0, 8), slice(0, 8))),
        ("three random blobby objects", pred_blobs, gt_blobs),
        ("no object in either map (all background)", torch.zeros(8, 8, dtype=torch.int64),
         torch.zeros(8, 8, dtype=torch.int64)),
    ]


def _frame_trials(fn: FrameJFn) -> int:
    exercise = "Exercise 11.1 (frame_j_score)"
    cases = _frame_cases()
    for case, pred, gt in cases:
        try:
            out = fn(pred.clone(), gt.clone())
        except ZeroDivisionError:
            fail(exercise, case, "division by zero", "with no object in either map there is "
                 "nothing to average: return float('nan'), as j_score does")
        ok = isinstance(out, (int, float)) or (isinstance(out, Tensor) and out.numel() == 1)
        expect(exercise, case, ok, f"expected one number, got {type(out).__name__} "
               f"{tuple(getattr(out, 'shape', ()))}", "average the objects' IoUs into one float")
        value, expected = float(out), _j_score_ref(pred, gt)
        if math.isnan(expected):
            expect(exercise, case, math.isnan(value), f"got {value:.4g}, expected nan",
                   "with no object in either map there is nothing to score: return "
                   "float('nan'), as j_score does")
            continue
        expect(exercise, case, 0.0 <= value <= 1.0, f"J = {value:.4g}, outside [0, 1]",
               "IoU is the intersection (p & g) divided by the union (p | g); did you swap them?")
        if not math.isclose(value, expected, abs_tol=1e-5):
            hint = "per object id 1..n: IoU = |pred == id & gt == id| / |pred == id | gt == id|; " \
                   "skip ids absent from both, then take the plain mean"
            for wrong_hint, wrong in _variants(pred, gt).items():
                if math.isclose(value, wrong, abs_tol=1e-5):
                    hint = wrong_hint
                    break
            fail(exercise, case, f"J = {value:.4f}, expected {expected:.4f}", hint)
    return len(cases)


def frame_j_score(fn: FrameJFn) -> FrameJFn:
    """Check Exercise 11.1 against `minidino.propagation.j_score` on single frames."""
    return run_check("Exercise 11.1 (frame_j_score)", fn, _j_score_ref, _frame_trials)


# ---------------------------------------------------------------- Exercise 11.2
_MISTAKES = {  # flags of `_step` -> what the hint says
    "window": ("window", False, "the window is ignored: a context patch counts only if it lies at "
               "most `radius` rows and columns away from the target patch (set the others to "
               "-inf before topk)"),
    "weighted": ("weighted", False, "the top-k labels are averaged with equal weights: weight "
                 "them by softmax(similarity / temperature) over the k neighbours"),
    "softmax_dim": ("softmax_dim", 0, "the softmax runs over the target patches: it must run "
                    "over each patch's k neighbours (dim=1), so its weights sum to 1"),
    "normalise": ("normalise", False, "dot products of unnormalised features: L2-normalise the "
                  "context and target features first (cosine similarity)"),
}


def _step_cases() -> list[tuple[str, dict[str, Any]]]:
    """(case, keyword arguments): from one nearest neighbour up to the full step."""
    g = torch.Generator().manual_seed(110)

    def make(C: int, grid: tuple[int, int], D: int, L: int, unit: bool = True,
             **kwargs: Any) -> dict[str, Any]:
        N = grid[0] * grid[1]
        feats = torch.randn(C + 1, N, D, generator=g)  # (C + 1, N, D)
        if unit:
            feats = F.normalize(feats, dim=-1)
        else:
            feats = feats * torch.exp(1.5 * torch.randn(C + 1, N, 1, generator=g))  # norms vary
        labels = torch.softmax(3 * torch.randn(C, N, L, generator=g), dim=-1)  # (C, N, L)
        return dict(context_features=feats[:C], context_labels=labels, target_features=feats[C],
                    grid=grid, **kwargs)

    return [
        ("unit features, 2 context frames, topk=1, no window (radius=None)",
         make(2, (4, 5), 8, 3, topk=1, temperature=0.1, radius=None)),
        ("unit features, 2 context frames, topk=5, temperature=0.1, no window",
         make(2, (4, 5), 8, 3, topk=5, temperature=0.1, radius=None)),
        ("unit features, 2 context frames, topk=5, temperature=0.1, radius=1",
         make(2, (4, 5), 8, 3, topk=5, temperature=0.1, radius=1)),
        ("features of very different norms, topk=5, no window",
         make(2, (4, 5), 8, 3, unit=False, topk=5, temperature=0.1, radius=None)),
        ("4 context frames, 6 x 6 grid, 4 labels, topk=7, temperature=0.05, radius=2",
         make(4, (6, 6), 16, 4, unit=False, topk=7, temperature=0.05, radius=2)),
        ("radius=0 with topk=5 > the 3 patches the window allows",
         make(3, (3, 4), 8, 2, topk=5, temperature=0.2, radius=0)),
        ("a non-square 2 x 7 grid, radius=1, temperature=1.0",
         make(2, (2, 7), 8, 3, unit=False, topk=4, temperature=1.0, radius=1)),
    ]


def _step_trials(fn: StepFn) -> int:
    exercise = "Exercise 11.2 (propagate_step)"
    cases = _step_cases()
    for case, kwargs in cases:
        given = {k: v.clone() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        out = fn(**given)
        expected = reference_propagate_step(**kwargs)  # (N, L)
        expect(exercise, case, isinstance(out, Tensor), f"expected a tensor, got "
               f"{type(out).__name__}", "return the soft labels (N, L) of the target frame")
        expect(exercise, case, tuple(out.shape) == tuple(expected.shape),
               f"shape {tuple(out.shape)}, expected {tuple(expected.shape)}",
               "one row of L soft labels per target patch: (N, L)")
        expect(exercise, case, bool(torch.isfinite(out).all()), "the result has NaN or inf",
               "set the similarities outside the window to -inf, then let topk pick the k "
               "largest: softmax gives the -inf ones weight 0, as long as the patch's own "
               "position is inside its window")
        if torch.allclose(out.float(), expected, atol=1e-4):
            continue
        hint = ("for each target patch: cosine similarity to every context patch, -inf outside "
                "the window, topk, softmax(best / temperature) over the k, weighted mean of labels")
        if not torch.allclose(out.float().sum(-1), torch.ones(len(out)), atol=1e-3):
            hint = _MISTAKES["softmax_dim"][2]
        for flag, value, wrong_hint in _MISTAKES.values():
            wrong = _step(**kwargs, **{flag: value})  # (N, L)
            if torch.allclose(out.float(), wrong, atol=1e-4):
                hint = wrong_hint
                break
        expect_close(exercise, case, out.float(), expected, hint, atol=1e-4)
    return len(cases)


def propagate_step(fn: StepFn) -> StepFn:
    """Check Exercise 11.2 against `reference_propagate_step` (= one frame of propagate_labels)."""
    return run_check("Exercise 11.2 (propagate_step)", fn, reference_propagate_step, _step_trials)
