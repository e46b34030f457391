"""Checks for the course's exercises, one module per lesson.

Each check takes the learner's function, compares it with minidino's reference on seeded random
and edge cases, and returns the function the notebook should go on with (the reference while the
exercise is not done yet). See `minidino.checks._core` for the contract.

`checks.dino_loss(...)` imports only its own lesson's module, on first use: a lesson's first
cell (`from minidino import checks`) loads none of the other lessons' code.
"""

from __future__ import annotations

import importlib
from typing import Any

from minidino.checks._core import CheckFailed, run_check

# which lesson module holds each check (tests/test_course.py keeps it equal to their __all__)
LESSON_OF: dict[str, str] = {
    **dict.fromkeys(("patchify", "attention", "block_forward", "interpolate_pos_embed"),
                    "lesson01_vit"),
    **dict.fromkeys(("sample_crop_box", "resized_crop"), "lesson02_augment"),
    **dict.fromkeys(("softmax_with_temperature", "entropy", "cross_view_pairs", "dino_loss"),
                    "lesson03_loss"),
    **dict.fromkeys(("teacher_probs", "update_center"), "lesson04_centering"),
    **dict.fromkeys(("build_teacher", "ema_update", "momentum_schedule"), "lesson05_teacher"),
    **dict.fromkeys(("lr_schedule", "clip_gradients_", "cancel_last_layer_gradients",
                     "train_step"), "lesson06_loop"),
    **dict.fromkeys(("knn_predict", "nearest_neighbours"), "lesson07_eval"),
    **dict.fromkeys(("attention_mass_mask", "mask_iou"), "lesson08_attention"),
    **dict.fromkeys(("block_mask", "ibot_loss", "apply_mask_token"), "lesson09_ibot"),
    **dict.fromkeys(("koleo_loss", "sinkhorn_knopp", "split_tokens"), "lesson10_dinov2"),
    **dict.fromkeys(("frame_j_score", "propagate_step"), "lesson11_propagation"),
}

__all__ = ["CheckFailed", "run_check", *LESSON_OF]


def __getattr__(name: str) -> Any:
    if name not in LESSON_OF:
        raise AttributeError(f"minidino.checks has no check {name!r}; the checks are: "
                             f"{', '.join(LESSON_OF)}")
    check = getattr(importlib.import_module(f"minidino.checks.{LESSON_OF[name]}"), name)
    globals()[name] = check  # the next lookup finds it directly
    return check


def __dir__() -> list[str]:
    return sorted(__all__)
