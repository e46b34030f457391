"""Checks for lesson 06: the lr schedule, gradient clipping, the frozen last layer, the step."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from minidino.checks._core import expect, expect_close, fail, run_check
from minidino.config import fast_config
from minidino.head import cancel_last_layer_gradients as reference_cancel
from minidino.presets import get_preset
from minidino.schedules import cosine_schedule
from minidino.step import build_parts
from minidino.step import train_step as reference_train_step

__all__ = ["lr_schedule", "clip_gradients_", "cancel_last_layer_gradients", "train_step"]

EX61 = "Exercise 6.1 (lr_schedule)"
EX62 = "Exercise 6.2 (clip_gradients_)"
EX63 = "Exercise 6.3 (cancel_last_layer_gradients)"
EX64 = "Exercise 6.4 (train_step)"


def reference_lr_schedule(peak_lr: float, min_lr: float, total_steps: int,
                          warmup_steps: int) -> Tensor:
    """Linear warm-up 0 -> peak_lr, then a cosine peak_lr -> min_lr: (total_steps,) float64."""
    return cosine_schedule(peak_lr, min_lr, total_steps, warmup_steps)  # (total_steps,)


def reference_clip_gradients_(parameters: list[Tensor], max_norm: float) -> Tensor:
    """Scale every gradient by one factor so that their global L2 norm is at most max_norm;
    return the global norm before clipping (a 0-d tensor)."""
    return nn.utils.clip_grad_norm_(parameters, max_norm)


# ------------------------------------------------------------------ Exercise 6.1
def _lr_trials(fn: Callable[..., Tensor]) -> int:
    cases = [  # (peak_lr, min_lr, total_steps, warmup_steps)
        (1.0, 0.0, 10, 3),
        (2.0, 0.5, 50, 5),
        (5e-4, 1e-6, 200, 20),
        (1.0, 0.1, 12, 0),
        (3.0, 1.0, 8, 6),
    ]
    for peak_lr, min_lr, total, warmup in cases:
        case = f"peak_lr={peak_lr}, min_lr={min_lr}, total_steps={total}, warmup_steps={warmup}"
        want = reference_lr_schedule(peak_lr, min_lr, total, warmup)  # (total,)
        got = fn(peak_lr, min_lr, total, warmup)
        expect(EX61, case, isinstance(got, Tensor) and tuple(got.shape) == (total,),
               f"expected a tensor of shape ({total},), got "
               f"{tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__}",
               "one value per step")
        got = got.double()  # (total,)
        scale = abs(peak_lr)
        if warmup > 0:
            expect(EX61, case, abs(float(got[0])) < 1e-6 * scale,
                   f"the first step has lr {float(got[0]):.4g}, expected 0",
                   "the warm-up starts at 0 and climbs linearly to peak_lr: the first "
                   "warmup_steps values are torch.linspace(0, peak_lr, warmup_steps)")
            expect(EX61, case, abs(float(got[warmup - 1]) - peak_lr) < 1e-6 * scale,
                   f"the last warm-up step has lr {float(got[warmup - 1]):.4g}, expected "
                   f"peak_lr={peak_lr}", "the warm-up ends exactly at peak_lr (both ends are "
                   "included, as torch.linspace does)")
        else:
            expect(EX61, case, abs(float(got[0]) - peak_lr) < 1e-6 * scale,
                   f"the first step has lr {float(got[0]):.4g}, expected peak_lr={peak_lr}",
                   "with warmup_steps=0 there is no warm-up: the cosine starts at step 0")
        expect(EX61, case, abs(float(got[-1]) - min_lr) < 1e-6 * scale,
               f"the last step has lr {float(got[-1]):.6g}, expected min_lr={min_lr}",
               "the cosine must end exactly at min_lr: with n cosine steps i = 0..n-1, use "
               "progress i / (n - 1) (dividing by n stops one step short of min_lr)")
        expect_close(EX61, case, got, want, "after the warm-up: min_lr + 0.5 * (peak_lr - "
                     "min_lr) * (1 + cos(pi * i / (n - 1))) for i = 0..n-1, n = total_steps - "
                     "warmup_steps", atol=1e-6 * scale, rtol=1e-5)
    return len(cases)


def lr_schedule(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Check Exercise 6.1: fn(peak_lr, min_lr, total_steps, warmup_steps) -> (total_steps,)."""
    return run_check(EX61, fn, reference_lr_schedule, _lr_trials)


# ------------------------------------------------------------------ Exercise 6.2
def _params_with_grads(seed: int, scales: list[float], none_at: int | None = None
                       ) -> list[nn.Parameter]:
    """Parameters of assorted shapes with random gradients of the given sizes."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 4), (16,), (3, 5, 2), (4,)]
    params = []
    for i, (shape, scale) in enumerate(zip(shapes, scales, strict=True)):
        p = nn.Parameter(torch.randn(shape, generator=g))
        if i != none_at:
            p.grad = scale * torch.randn(shape, generator=g)
        params.append(p)
    return params


def _clip_trials(fn: Callable[..., Any]) -> int:
    cases = [  # (case, seed, gradient sizes per tensor, parameter without grad, max_norm)
        ("all gradients large, global norm far above max_norm", 0, [3.0, 3.0, 3.0, 3.0],
         None, 1.0),
        ("one tensor's gradient is huge, the others small", 1, [50.0, 0.01, 0.01, 0.01],
         None, 3.0),
        ("global norm below max_norm: nothing changes", 2, [0.01, 0.02, 0.01, 0.03], None, 3.0),
        ("each tensor below max_norm, their global norm above it", 3, [0.3, 0.3, 0.3, 0.3],
         None, 2.0),
        ("one parameter has no gradient (grad is None)", 4, [2.0, 2.0, 2.0, 2.0], 1, 1.5),
    ]
    for case, seed, scales, none_at, max_norm in cases:
        mine = _params_with_grads(seed, scales, none_at)
        ref = _params_with_grads(seed, scales, none_at)
        weights = [p.detach().clone() for p in mine]
        norm = fn(mine, max_norm)
        expect(EX62, case, norm is not None, "the function returned None",
               "return the global gradient norm measured before clipping")
        want_norm = reference_clip_gradients_(ref, max_norm)
        for p, w in zip(mine, weights, strict=True):
            expect(EX62, case, torch.equal(p.detach(), w), "the parameters themselves changed",
                   "clipping rescales p.grad, never the weights p")
        for i, (p, r) in enumerate(zip(mine, ref, strict=True)):
            if r.grad is None:
                expect(EX62, case, p.grad is None, f"parameter {i} had no gradient and got one",
                       "skip parameters whose grad is None")
                continue
            expect_close(EX62, f"{case}: gradient of parameter {i}", p.grad, r.grad,
                         "minidino (like torch.nn.utils.clip_grad_norm_) clips the GLOBAL norm: "
                         "total = sqrt(sum over tensors of ||grad||^2); if total > max_norm, "
                         "multiply every gradient by max_norm / (total + 1e-6). Clipping each "
                         "tensor on its own, or clamping single values, changes the direction "
                         "of the update", atol=1e-6, rtol=1e-4)
        expect_close(EX62, f"{case}: the returned norm", torch.as_tensor(norm), want_norm,
                     "return the global gradient norm measured BEFORE clipping (a 0-d tensor)",
                     atol=1e-5, rtol=1e-4)
    return len(cases)


def clip_gradients_(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check Exercise 6.2: fn(parameters, max_norm) clips in place, returns the global norm."""
    return run_check(EX62, fn, reference_clip_gradients_, _clip_trials)


# ------------------------------------------------------------------ Exercise 6.3
def _tiny_student() -> tuple[nn.Module, list[Tensor]]:
    """A small student (backbone + DINO head) and one random gradient per parameter."""
    from minidino.step import build_student

    torch.manual_seed(0)
    cfg = replace(fast_config(get_preset("cpu-demo")), depth=1, norm_last_layer=False)
    student = build_student(cfg)
    g = torch.Generator().manual_seed(1)
    return student, [torch.randn(p.shape, generator=g) for p in student.parameters()]


def _with_grads(model: nn.Module, grads: list[Tensor]) -> nn.Module:
    """A copy of `model` whose parameters carry copies of `grads` (deepcopy drops .grad)."""
    model = copy.deepcopy(model)
    for p, grad in zip(model.parameters(), grads, strict=True):
        p.grad = grad.clone()
    return model


def _cancel_trials(fn: Callable[..., Any]) -> int:
    with torch.random.fork_rng():  # leave the notebook's random state alone
        base, grads = _tiny_student()
    cases = [(0, 1), (2, 3), (1, 1), (5, 1), (0, 0)]  # (epoch, freeze_last_layer_epochs)
    for epoch, freeze in cases:
        case = f"epoch={epoch}, freeze_last_layer_epochs={freeze}"
        mine, ref = _with_grads(base, grads), _with_grads(base, grads)
        fn(mine, epoch, freeze)
        reference_cancel(ref, epoch, freeze)
        expect(EX63, case, any(p.grad is not None for p in ref.parameters()),
               "internal: the reference dropped every gradient")
        for (name, p), r in zip(mine.named_parameters(), ref.parameters(), strict=True):
            if r.grad is None:
                zeroed = p.grad is not None and not p.grad.any()
                expect(EX63, case, not zeroed, f"{name}.grad was set to zeros",
                       "set the gradient to None (param.grad = None) instead: AdamW skips a "
                       "parameter without gradient, but a zero gradient still moves it "
                       "(momentum from earlier steps and weight decay)")
                expect(EX63, case, p.grad is None, f"{name} still has its gradient",
                       "while epoch < freeze_last_layer_epochs, drop the gradient of every "
                       "parameter whose name contains 'last_layer' (the prototypes)")
            else:
                kept = p.grad is not None and torch.equal(p.grad, r.grad)
                freezing = epoch < freeze
                expect(EX63, case, kept, f"{name} lost (or changed) its gradient",
                       "only the head's last layer is frozen, and only while epoch < "
                       "freeze_last_layer_epochs; the backbone and the head's MLP keep "
                       "learning" if freezing else
                       "from epoch freeze_last_layer_epochs on, nothing is frozen any more")
    return len(cases)


def cancel_last_layer_gradients(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check Exercise 6.3: fn(model, epoch, freeze_last_layer_epochs) -> None (in place)."""
    return run_check(EX63, fn, reference_cancel, _cancel_trials)


# ------------------------------------------------------------------ Exercise 6.4
def _step_parts() -> Any:
    """Tiny DINO parts on the CPU: 2 steps per epoch, the last layer frozen in epoch 0, a clip
    threshold low enough to act, a fast-moving teacher and a peak lr of 8e-2 * 32 / 256 = 1e-2
    (batch 32), so that every mistake shows."""
    cfg = replace(fast_config(get_preset("cpu-demo")), depth=1, epochs=2, warmup_epochs=0,
                  lr=8e-2, min_lr=1e-3, weight_decay=0.1, weight_decay_end=0.2,
                  clip_grad=0.05, freeze_last_layer=1, teacher_momentum=0.9,
                  warmup_teacher_temp=0.03, teacher_temp=0.05, warmup_teacher_temp_epochs=1,
                  norm_last_layer=False, drop_path=0.0, n_local_crops=2)
    return build_parts(cfg, steps_per_epoch=2, device=torch.device("cpu"))


def _step_crops(step: int, B: int = 2) -> list[Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)] + \
        [torch.randn(B, 3, 16, 16, generator=g) for _ in range(2)]  # 2 global, 2 local crops


def _step_trials(fn: Callable[..., Any]) -> int:
    with torch.random.fork_rng():  # build_parts seeds the global generator
        mine, ref = _step_parts(), _step_parts()
    hint = ("in order: set lr and weight decay of this step (weight decay only on the first "
            "param group); teacher on the 2 global crops, student on all crops; loss with this "
            "step's teacher_temp; zero_grad, backward; clip the global grad norm; drop the "
            "last layer's grads while frozen; optimizer.step(); then the EMA update of the "
            "teacher with this step's teacher_momentum")
    for step in range(4):
        case = f"step {step} (epoch {step // 2}; the last layer is frozen in epoch 0)"
        crops = _step_crops(step)
        try:
            out = fn(mine, [c.clone() for c in crops], step)
        except NotImplementedError:
            raise
        except Exception as err:  # a wrong step often breaks a shape check further down
            fail(EX64, case, f"raised {type(err).__name__}: {err}",
                 "the teacher sees only the 2 global crops, crops[:2], so teacher_out is "
                 "(2 * B, K); the student sees every crop" if "crops" in str(err) else hint)
        want = reference_train_step(ref, crops, step)
        expect(EX64, case, isinstance(out, dict) and "loss" in out,
               f"expected a dict with 'loss', 'student_out', 'teacher_out', 'teacher_temp'; "
               f"got {type(out).__name__}")
        expect_close(EX64, f"{case}: loss", out["loss"], want["loss"],
                     "the loss uses this step's teacher_temp from parts.schedules, the teacher "
                     "output on crops[:2] and the student output on all crops", atol=1e-5)
        for key in ("student_out", "teacher_out"):
            expect_close(EX64, f"{case}: {key}", out.get(key), want[key],
                         f"return the {key} of this step (before the optimizer step)",
                         atol=1e-5)
        expect_close(EX64, f"{case}: the center", mine.loss_fn.center, ref.loss_fn.center,
                     "call parts.loss_fn once per step: it also moves the center", atol=1e-6)
        params = zip(mine.student.named_parameters(), ref.student.parameters(), strict=True)
        for (name, p), r in params:
            expect_close(EX64, f"{case}: student parameter {name}", p, r, hint, atol=1e-6,
                         rtol=1e-5)
        params = zip(mine.teacher.named_parameters(), ref.teacher.parameters(), strict=True)
        for (name, p), r in params:
            expect_close(EX64, f"{case}: teacher parameter {name}", p, r,
                         "after optimizer.step(), move the teacher towards the UPDATED student: "
                         "ema_update_(parts.teacher, parts.student, teacher_momentum[step]); "
                         "exactly once per step", atol=1e-6, rtol=1e-5)
    return 4


def train_step(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check Exercise 6.4: fn(parts, crops, step) -> dict, one DINO step like minidino's."""
    return run_check(EX64, fn, reference_train_step, _step_trials)
