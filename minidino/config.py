"""Training configuration: one frozen dataclass and a few named presets.

Every knob of a DINO run lives in `TrainConfig`, so a run is fully described by the config saved
in its folder. Presets give sensible starting points (`cpu-demo`, `cifar10`, `imagenette`); the CLI
overrides any field (`--batch-size 128`, `--global-scale 0.4,1.0`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

ARCHS = ("vit_nano", "vit_tiny", "vit_small", "vit_base")
DEVICES = ("auto", "cpu", "cuda", "mps")
DATA_PATHS = ("auto", "device", "loader")


def fast_mode() -> bool:
    """True when `MINIDINO_FAST=1` or `CI=true`: every run shrinks to a few quick steps."""
    flag = os.environ.get("MINIDINO_FAST", "").strip().lower()
    ci = os.environ.get("CI", "").strip().lower()
    return flag in ("1", "true", "yes") or ci in ("1", "true", "yes")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a DINO training run needs. Defaults follow the official DINO recipe."""

    # data
    dataset: str = "shapes"  # shapes | cifar10 | cifar100 | imagenette | folder
    data_root: str = "data"
    data_path: str | None = None  # the image folder when dataset == "folder"
    difficulty: str = "easy"  # built-in shapes only
    n_train: int | None = None  # use only the first n_train training images
    image_size: int = 32  # images are held (or resized) at this size
    data_mode: str = "auto"  # device: resident uint8 tensors + batched crops; loader: DataLoader
    num_workers: int = 2
    # model
    arch: str = "vit_tiny"
    patch_size: int = 4
    embed_dim: int | None = None  # None: the factory's width
    depth: int | None = None
    num_heads: int | None = None
    drop_path: float = 0.1
    n_registers: int = 0
    out_dim: int = 65536  # K, the number of prototypes
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    # multi-crop
    global_size: int = 32
    local_size: int = 16
    n_local_crops: int = 6
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    jitter_p: float = 0.8  # probability of colour jitter per crop
    solarize_p: float = 0.2  # probability of solarization of the second global crop
    # DINO loss
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996  # cosine schedule from this to 1
    # optimisation
    epochs: int = 100
    batch_size: int = 256
    lr: float = 5e-4  # for a batch of 256; scaled linearly with batch_size
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # 0 disables clipping
    freeze_last_layer: int = 1  # epochs during which the last layer gets no update
    # running
    device: str = "auto"
    seed: int = 0
    out_dir: str = "runs"
    run_name: str = "run"
    log_every: int = 10
    knn_every: int = 0  # epochs between kNN evaluations during training (0: only at the end)
    n_eval: int | None = None  # held-out images for kNN (None: the whole test split)
    max_steps: int | None = None  # stop after this many steps (schedules still span all epochs)
    compile: bool = False

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def n_crops(self) -> int:
        return 2 + self.n_local_crops

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; allowed: {sorted(known)}")
        tuples = {f.name for f in fields(cls) if _base_type(f) is tuple}
        fixed = {k: tuple(v) if k in tuples and v is not None else v for k, v in values.items()}
        return cls(**fixed)


def _validate(c: TrainConfig) -> None:
    def need(ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise ValueError(f"{name}={getattr(c, name)!r} is not allowed: {allowed}")

    need(c.arch in ARCHS, "arch", f"one of {ARCHS}")
    need(c.device in DEVICES, "device", f"one of {DEVICES}")
    need(c.data_mode in DATA_PATHS, "data_mode", f"one of {DATA_PATHS}")
    for name in ("image_size", "patch_size", "out_dim", "hidden_dim", "bottleneck_dim",
                 "global_size", "local_size", "epochs", "batch_size", "log_every"):
        need(getattr(c, name) > 0, name, "must be a positive integer")
    need(c.out_dim >= 2, "out_dim", "K needs at least 2 prototypes")
    need(c.n_local_crops >= 0, "n_local_crops", "must be >= 0")
    need(c.local_size <= c.global_size, "local_size",
         f"a local crop cannot be larger than a global crop (global_size={c.global_size})")
    for name in ("global_size", "local_size"):
        need(getattr(c, name) % c.patch_size == 0, name,
             f"must be divisible by patch_size={c.patch_size}")
    for name in ("global_scale", "local_scale", "blur_sigma"):
        lo_hi = getattr(c, name)
        need(len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1], name, "a pair (low, high), low <= high")
    for name in ("global_scale", "local_scale"):
        need(0 < getattr(c, name)[0] and getattr(c, name)[1] <= 1, name, "within (0, 1]")
    for name in ("student_temp", "teacher_temp", "warmup_teacher_temp", "lr"):
        need(getattr(c, name) > 0 and math.isfinite(getattr(c, name)), name, "must be > 0")
    for name in ("center_momentum", "teacher_momentum"):
        need(0 <= getattr(c, name) <= 1, name, "a momentum must lie in [0, 1]")
    need(0 <= c.drop_path < 1, "drop_path", "must lie in [0, 1)")
    for name in ("jitter_p", "solarize_p"):
        need(0 <= getattr(c, name) <= 1, name, "a probability must lie in [0, 1]")
    for name in ("min_lr", "weight_decay", "weight_decay_end", "clip_grad"):
        need(getattr(c, name) >= 0, name, "must be >= 0")
    for name in ("warmup_epochs", "warmup_teacher_temp_epochs", "freeze_last_layer",
                 "n_registers", "knn_every", "num_workers"):
        need(getattr(c, name) >= 0, name, "must be >= 0")
    need(c.warmup_epochs <= c.epochs, "warmup_epochs", f"at most epochs={c.epochs}")
    need(c.max_steps is None or c.max_steps > 0, "max_steps", "None or a positive integer")
    need(c.n_train is None or c.n_train > 0, "n_train", "None or a positive integer")
    need(c.n_eval is None or c.n_eval > 0, "n_eval", "None or a positive integer")
    need(c.dataset != "folder" or c.data_path is not None, "data_path",
         "dataset='folder' needs --data-path pointing to one folder per class")


PRESETS: dict[str, TrainConfig] = {
    # Two CPU cores, about four minutes: a narrow ViT with few tokens and a small K.
    "cpu-demo": TrainConfig(
        dataset="shapes", arch="vit_nano", patch_size=8, drop_path=0.0, out_dim=1024,
        hidden_dim=512, bottleneck_dim=128, global_size=32, local_size=16, n_local_crops=4,
        global_scale=(0.5, 1.0), local_scale=(0.2, 0.5), blur_sigma=(0.1, 0.5),
        teacher_temp=0.02, warmup_teacher_temp=0.02, teacher_momentum=0.97, epochs=10,
        batch_size=64, lr=4e-3, warmup_epochs=1, min_lr=1e-5, weight_decay_end=0.04,
        freeze_last_layer=0, run_name="cpu-demo", n_eval=1000, device="cpu",
    ),
    # One GPU: ViT-Tiny/4 on CIFAR-10 with 2x32 + 6x16 crops.
    "cifar10": TrainConfig(
        dataset="cifar10", arch="vit_tiny", patch_size=4, out_dim=4096, global_size=32,
        local_size=16, n_local_crops=6, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
        blur_sigma=(0.1, 1.0), teacher_temp=0.04, epochs=100, batch_size=512, lr=5e-4,
        warmup_epochs=10, run_name="cifar10",
    ),
    # One GPU: ViT-S/16 on ImageNette at 128 px.
    "imagenette": TrainConfig(
        dataset="imagenette", arch="vit_small", patch_size=16, image_size=144, out_dim=65536,
        global_size=128, local_size=64, n_local_crops=6, global_scale=(0.4, 1.0),
        local_scale=(0.05, 0.4), epochs=100, batch_size=128, warmup_epochs=10,
        data_mode="loader", run_name="imagenette",
    ),
}


def fast_config(cfg: TrainConfig) -> TrainConfig:
    """Shrink a config for fast mode: tiny model, built-in dataset, a few steps."""
    return replace(
        cfg, dataset="shapes", data_path=None, image_size=32, arch="vit_nano", patch_size=8,
        embed_dim=None, depth=2, num_heads=None, out_dim=128, hidden_dim=64, bottleneck_dim=32,
        global_size=32, local_size=16, n_local_crops=2, epochs=2, batch_size=32, n_train=128,
        n_eval=128, warmup_epochs=1, data_mode="device", device="cpu", max_steps=None,
    )


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; available presets: {sorted(PRESETS)}")
    return PRESETS[name]


# ---------------------------------------------------------------------------------------------
# Command line: one `--field-name VALUE` option per config field, parsed from its type.
# ---------------------------------------------------------------------------------------------


def _base_type(f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(TrainConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    origin = typing.get_origin(hint)
    return origin if origin is not None else hint


def _parse_value(name: str, kind: type, text: str) -> Any:
    if text.lower() == "none":
        return None
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is tuple:
            return tuple(float(v) for v in text.split(","))
        return kind(text)
    except ValueError:
        raise ValueError(f"--{name.replace('_', '-')}={text!r} is not a valid {kind.__name__}"
                         + (" (write low,high)" if kind is tuple else "")) from None


def add_config_arguments(parser: Any) -> None:
    """Add one `--field-name` option per TrainConfig field to an argparse parser."""
    for f in fields(TrainConfig):
        kind = _base_type(f)
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, type=str,
                            metavar=kind.__name__.upper(), help="(default from the preset)")


def config_from_args(base: TrainConfig, args: Any) -> TrainConfig:
    """Apply the options given on the command line on top of `base`."""
    changes = {}
    for f in fields(TrainConfig):
        text = getattr(args, f.name, None)
        if text is not None:
            changes[f.name] = _parse_value(f.name, _base_type(f), text)
    return replace(base, **changes)
