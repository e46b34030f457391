"""`--compile` (torch.compile of the forward passes) gives the same training as eager mode."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from minidino.config import fast_config
from minidino.presets import get_preset
from minidino.step import build_parts, train_step


def _losses(compile: bool, crops: list[torch.Tensor], n_steps: int) -> list[float]:
    cfg = replace(fast_config(get_preset("cpu-demo")), depth=1, compile=compile)
    parts = build_parts(cfg, steps_per_epoch=n_steps, device=torch.device("cpu"))
    return [float(train_step(parts, crops, step)["loss"]) for step in range(n_steps)]


@pytest.mark.filterwarnings("ignore")
def test_compiled_step_matches_eager() -> None:
    cfg = fast_config(get_preset("cpu-demo"))
    g = torch.Generator().manual_seed(0)
    crops = [torch.randn(8, 3, cfg.global_size, cfg.global_size, generator=g) for _ in range(2)]
    crops += [torch.randn(8, 3, cfg.local_size, cfg.local_size, generator=g)
              for _ in range(cfg.n_local_crops)]
    eager = _losses(False, crops, n_steps=3)
    torch._dynamo.reset()
    compiled = _losses(True, crops, n_steps=3)
    assert eager[0] != eager[-1]  # the steps change the model, so later losses test the update
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)
