"""Trained backbones as small files: export one from a run, load the ones shipped with the package.

A training checkpoint holds the student, the teacher, the optimizer and more; to share or to
study what a run learned, one backbone and its config are enough. `export_backbone` writes
them to a small file, `load_pretrained` reads one back (by default the teacher of a `cpu-demo`
run that ships in `minidino/assets/`), and `random_init_like` builds the same architecture at
its random initialisation, the baseline every trained number is compared with.

Three teachers ship with the package: `PRETRAINED`, the `cpu-demo` run on the built-in shapes
(`make demo`); `SCENES_TEACHER`, the `cpu-scenes` run on the built-in scenes (DINO + iBOT +
KoLeo), whose heads find the objects and whose patch tokens follow them through the scene video;
and `SCENES_DINO_TEACHER`, the same run without iBOT, for comparing patch tokens with and without
iBOT's loss. docs/benchmarks.md gives the commands that trained them and what they score.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from minidino.checkpoint import load_backbone_weights, load_checkpoint
from minidino.config import TrainConfig
from minidino.step import build_backbone

ASSETS = Path(__file__).parent / "assets"
PRETRAINED = ASSETS / "cpu-demo-teacher.pt"  # `cpu-demo`: the built-in shapes
SCENES_TEACHER = ASSETS / "cpu-scenes-teacher.pt"  # `cpu-scenes`: iBOT + KoLeo on the scenes
SCENES_DINO_TEACHER = ASSETS / "cpu-scenes-dino-teacher.pt"  # the same run without iBOT


def load_pretrained(path: str | Path = PRETRAINED) -> torch.nn.Module:
    """A backbone saved by `export_backbone`, in eval mode, on the CPU.

    The default is the teacher of a `cpu-demo` run that ships with the package (0.9 MB), so the
    lessons can show trained features and attention maps without training first.
    """
    return backbone_from(path, "backbone")[0].eval()


def random_init_like(path: str | Path = PRETRAINED, seed: int = 0) -> torch.nn.Module:
    """The architecture of the backbone saved at `path`, randomly initialised from `seed`, in
    eval mode on the CPU: the baseline the lessons compare a trained backbone with."""
    cfg = TrainConfig.from_dict(load_checkpoint(path)["config"])
    return initial_backbone(replace(cfg, seed=seed)).eval()


def initial_backbone(cfg: TrainConfig) -> torch.nn.Module:
    """`cfg`'s backbone with the initial weights a run of `cfg` starts from: `train` seeds torch
    with `cfg.seed` and builds the backbone first, and so does this."""
    torch.manual_seed(cfg.seed)
    return build_backbone(cfg)


def export_backbone(checkpoint: str | Path, out: str | Path, which: str = "teacher") -> Path:
    """Save one backbone of a training checkpoint with its config: a small file to share."""
    backbone, _, state = backbone_from(checkpoint, which)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": state["config"], "backbone": backbone.state_dict(), "which": which,
                "step": state["step"]}, out)
    return out


def backbone_from(path: str | Path, key: str) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """Rebuild the backbone stored under `key` of a file that also holds its config."""
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"])
    backbone = build_backbone(cfg)
    load_backbone_weights(backbone, state[key])
    return backbone, cfg, state
