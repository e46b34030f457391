"""Small helpers the lessons share: the device, the seed, and how big each experiment is.

Lessons read their sizes from here instead of branching on fast mode themselves: with
`MINIDINO_FAST=1` (or `CI=true`) every experiment shrinks so that a notebook runs in well under
a minute and a half on a laptop CPU; otherwise it runs at the size the lesson was written for.
"""

from __future__ import annotations

import platform
import random
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from minidino.config import TrainConfig, fast_config, fast_mode, get_preset
from minidino.train import pick_device


def setup(seed: int = 0, verbose: bool = True) -> torch.device:
    """Seed every generator, pick cuda, then mps, then cpu, and say what was found."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = pick_device("auto")
    if device.type == "cpu" and fast_mode():
        torch.set_num_threads(1)  # fast-mode models are tiny: splitting each op only costs time
    if verbose:
        name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor()
        print(f"torch {torch.__version__} | device: {device} ({name or 'cpu'}) | "
              f"fast mode: {'on' if fast_mode() else 'off'}")
    return device


def budget(full: int, fast: int) -> int:
    """How many steps (or images, or epochs) an experiment uses: `fast` in fast mode."""
    if full < 1 or fast < 1:
        raise ValueError(f"budget(full={full}, fast={fast}): both must be >= 1")
    return fast if fast_mode() else full


def lesson_config(preset: str = "cpu-demo", **overrides: Any) -> TrainConfig:
    """A preset, shrunk in fast mode, with `overrides` applied last."""
    cfg = get_preset(preset)
    if fast_mode():
        cfg = fast_config(cfg)
    return replace(cfg, **overrides)
