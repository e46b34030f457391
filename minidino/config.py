"""Training configuration: one frozen dataclass and a few named presets.

Every knob of a DINO run lives in `TrainConfig`, so a run is fully described by the config saved
in its folder. Presets (in `minidino/presets.py`) give sensible starting points; the CLI
overrides any field (`--batch-size 128`, `--global-scale 0.4,1.0`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from minidino.loss import CENTERINGS  # DINO's running center, or DINOv2's Sinkhorn-Knopp
from minidino.vit import VIT_SIZES

ARCHS = tuple(VIT_SIZES)  # vit_nano, vit_tiny, vit_small, vit_base
DATASETS = ("shapes", "scenes", "cifar10", "cifar100", "imagenette", "folder")
DIFFICULTIES = ("easy", "medium", "hard")  # the built-in shapes' styles
DEVICES, DATA_PATHS = ("auto", "cpu", "cuda", "mps"), ("auto", "device", "loader")


def fast_mode() -> bool:
    """True when `MINIDINO_FAST=1` or `CI=true`: every run shrinks to a few quick steps."""
    flags = (os.environ.get("MINIDINO_FAST", ""), os.environ.get("CI", ""))
    return any(flag.strip().lower() in ("1", "true", "yes") for flag in flags)


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
    data_mode: str = "auto"  # device: resident uint8 images + batched crops; loader: DataLoader;
    # auto: device when the images fit in a quarter of the free memory (RAM, and GPU on CUDA)
    num_workers: int | None = None  # DataLoader workers; None: one per CPU core, less one (<= 16)
    # model
    arch: str = "vit_tiny"
    patch_size: int = 4
    embed_dim: int | None = None  # None: the factory's width
    depth: int | None = None
    num_heads: int | None = None
    drop_path: float = 0.1
    n_registers: int = 0
    layerscale: float | None = None  # LayerScale's initial gain (DINOv2: 1e-5); None: no LayerScale
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
    blur_sigma: tuple[float, float] | None = None  # None: DINO's 0.1-2 px at 224 px, scaled
    blur: bool = True  # Gaussian blur with DINO's probabilities (1.0, 0.1, 0.5); False: none
    jitter_p: float = 0.8  # probability of colour jitter per crop
    solarize_p: float = 0.2  # probability of solarization of the second global crop
    # DINO loss
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    centering: str = "center"  # center | sinkhorn (see minidino/sinkhorn.py)
    teacher_momentum: float = 0.996  # cosine schedule from this to 1
    # iBOT: the student also predicts the teacher's patch tokens where its own input was masked
    ibot: bool = False
    ibot_separate_head: bool = False  # False: the CLS head maps the patch tokens too
    ibot_out_dim: int | None = None  # K of the patch head (None: out_dim); separate head only
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # share of patches masked, drawn per image
    mask_prob: float = 0.5  # share of the images that get a mask at all
    ibot_teacher_temp: float = 0.04  # warms up from warmup_teacher_temp, as teacher_temp does
    ibot_center_momentum: float = 0.9
    ibot_loss_weight: float = 1.0  # loss = CLS loss + ibot_loss_weight * patch loss
    koleo_weight: float = 0.0  # DINOv2's KoLeo on the student's global CLS features (0: off)
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
    knn_every: int = 0  # kNN of teacher and student every N epochs and at the end (0: never)
    n_eval: int | None = None  # held-out images for kNN (None: the whole test split)
    max_steps: int | None = None  # stop after this many steps (schedules still span all epochs)
    compile: bool = False
    collapse_patience: int = 3  # epochs of near-0 or near-log K teacher entropy before a warning

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def n_crops(self) -> int:
        return 2 + self.n_local_crops

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; allowed: {sorted(known)}")
        tuples = {name for name, (kind, _) in _FIELD_TYPES.items() if kind is tuple}
        fixed = {k: tuple(v) if k in tuples and isinstance(v, list) else v
                 for k, v in values.items()}
        return cls(**fixed)


_FIELD_TYPES: dict[str, tuple[type, bool]] = {}  # field: (int/float/str/bool/tuple, may be None)
for _name, _hint in typing.get_type_hints(TrainConfig).items():
    _args = typing.get_args(_hint)
    _kind = next(a for a in _args if a is not type(None)) if type(None) in _args else _hint
    _FIELD_TYPES[_name] = (typing.get_origin(_kind) or _kind, type(None) in _args)
_KIND_WORDS = {int: "an integer", float: "a finite number", str: "a string",
               bool: "true or false", tuple: "a pair of finite numbers (low, high)"}


class ConfigError(ValueError):
    """A config value that is not allowed; `field`, `value` and `allowed` say which, what, why."""

    def __init__(self, field: str, value: Any, allowed: str, context: str = "") -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{context}{field}={value!r} is not allowed: {allowed}")


def _has_type(value: Any, kind: type) -> bool:
    if kind is tuple:
        return isinstance(value, tuple) and all(_has_type(v, float) for v in value)
    if kind is float:
        return isinstance(value, int | float) and value is not True and value is not False \
            and math.isfinite(value)
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _validate(c: TrainConfig) -> None:
    def need(ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(name, getattr(c, name), allowed)

    for name, (kind, optional) in _FIELD_TYPES.items():  # types first: the rest compares values
        need((optional and getattr(c, name) is None) or _has_type(getattr(c, name), kind), name,
             f"must be {_KIND_WORDS[kind]}{' or None' if optional else ''}")
    for name, allowed in (("dataset", DATASETS), ("difficulty", DIFFICULTIES), ("arch", ARCHS),
                          ("device", DEVICES), ("data_mode", DATA_PATHS),
                          ("centering", CENTERINGS)):
        need(getattr(c, name) in allowed, name, f"one of {allowed}")
    for name in ("image_size", "patch_size", "out_dim", "hidden_dim", "bottleneck_dim",
                 "global_size", "local_size", "epochs", "batch_size", "log_every", "embed_dim",
                 "depth", "num_heads", "max_steps", "n_train", "n_eval", "ibot_out_dim"):
        need(getattr(c, name) is None or getattr(c, name) > 0, name, "must be a positive integer"
             + (" or None" if _FIELD_TYPES[name][1] else ""))
    width, _, heads = VIT_SIZES[c.arch]
    need((c.embed_dim or width) % (c.num_heads or heads) == 0, "num_heads",
         f"must divide embed_dim={c.embed_dim or width} ({c.arch}: {width} wide, {heads} heads)")
    for name in ("out_dim", "ibot_out_dim"):  # None (ibot_out_dim: out_dim) passes
        need((getattr(c, name) or 2) >= 2, name, "K needs at least 2 prototypes")
    need(c.local_size <= c.global_size, "local_size",
         f"a local crop cannot be larger than a global crop (global_size={c.global_size})")
    for name in ("global_size", "local_size"):
        need(getattr(c, name) % c.patch_size == 0, name,
             f"must be divisible by patch_size={c.patch_size}")
    for name, top in (("global_scale", 1), ("local_scale", 1), ("mask_ratio", 1),
                      ("blur_sigma", math.inf)):
        lo_hi = getattr(c, name)
        need(lo_hi is None or (len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= top), name,
             f"a pair (low, high) with 0 < low <= high <= {top}")
    smallest = c.local_size if c.n_local_crops else c.global_size
    need(c.blur_sigma is None or math.ceil(3 * c.blur_sigma[1]) < smallest, "blur_sigma",
         f"the blur kernel (+-3 sigma) must fit in a {smallest}-px crop: "
         f"high <= {(smallest - 1) / 3:g}, or None (scaled to global_size)")
    for name in ("student_temp", "teacher_temp", "warmup_teacher_temp", "ibot_teacher_temp", "lr"):
        need(getattr(c, name) > 0, name, "must be > 0")
    need(c.layerscale is None or c.layerscale > 0, "layerscale", "must be > 0 or None")
    for name in ("center_momentum", "teacher_momentum", "jitter_p", "solarize_p", "mask_prob",
                 "ibot_center_momentum"):
        need(0 <= getattr(c, name) <= 1, name, "must lie in [0, 1]")
    need(c.ibot_separate_head or c.ibot_out_dim in (None, c.out_dim), "ibot_out_dim",
         f"a shared head has out_dim={c.out_dim} prototypes: leave it None or set "
         "ibot_separate_head")
    need(0 <= c.drop_path < 1, "drop_path", "must lie in [0, 1)")
    for name in ("min_lr", "weight_decay", "weight_decay_end", "clip_grad", "n_local_crops",
                 "warmup_epochs", "warmup_teacher_temp_epochs", "freeze_last_layer",
                 "n_registers", "knn_every", "seed", "collapse_patience",
                 "ibot_loss_weight", "koleo_weight"):
        need(getattr(c, name) >= 0, name, "must be >= 0")
    need(c.num_workers is None or c.num_workers >= 0, "num_workers",
         "must be >= 0 (0: no worker processes), or None for one per CPU core")
    for name in ("warmup_epochs", "warmup_teacher_temp_epochs"):
        need(getattr(c, name) <= c.epochs, name, f"at most epochs={c.epochs}")
    need(c.n_train is None or c.n_train >= c.batch_size, "n_train",
         f"at least batch_size={c.batch_size} images, or None for all of them")
    need(c.dataset != "folder" or c.data_path is not None, "data_path",
         "dataset='folder' needs --data-path pointing to one folder per class")
    need(c.dataset == "folder" or c.data_path is None, "data_path",
         f"only dataset='folder' reads it (dataset={c.dataset!r}); leave it None")
    for name in ("data_root", "out_dir", "run_name"):
        need(getattr(c, name).strip() != "", name, "must not be empty")


def check_world_size(cfg: TrainConfig, world_size: int) -> None:
    """Refuse a global batch that cannot be split evenly over `world_size` processes."""
    if not _has_type(world_size, int) or world_size < 1:
        raise ConfigError("world_size", world_size, "must be a positive integer")
    lower = cfg.batch_size // world_size * world_size
    if lower != cfg.batch_size:
        raise ConfigError("batch_size", cfg.batch_size, f"the global batch must split evenly over "
                          f"{world_size} processes, at least one image each; try "
                          f"{lower or world_size}" + (f" or {lower + world_size}" if lower else ""))


def fast_config(cfg: TrainConfig) -> TrainConfig:
    """Shrink a config for fast mode: tiny model, built-in dataset, a few steps."""
    return replace(
        cfg, dataset="shapes", data_path=None, image_size=32, arch="vit_nano", patch_size=8,
        embed_dim=None, depth=2, num_heads=None, out_dim=128, hidden_dim=64, bottleneck_dim=32,
        global_size=32, local_size=16, n_local_crops=2, epochs=2, batch_size=32, n_train=128,
        n_eval=128, warmup_epochs=1, data_mode="device", device="cpu", max_steps=None,
        warmup_teacher_temp_epochs=min(cfg.warmup_teacher_temp_epochs, 1),
    )


def __getattr__(name: str) -> Any:  # `from minidino.config import PRESETS`, from presets.py
    if name != "PRESETS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from minidino.presets import PRESETS
    return PRESETS


def get_preset(name: str) -> TrainConfig:
    from minidino.presets import PRESETS
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; available presets: {sorted(PRESETS)}")
    return PRESETS[name]


# Command line: one `--field-name VALUE` option per config field, parsed from its type.
_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


def _parse_value(name: str, kind: type, text: str) -> Any:
    if text.lower() == "none":
        return None
    try:
        if kind is bool:
            return _BOOLS[text.lower()]
        return tuple(float(v) for v in text.split(",")) if kind is tuple else kind(text)
    except (KeyError, ValueError):
        how = " (write low,high)" if kind is tuple else ""
        raise ConfigError(name, text, f"must be {_KIND_WORDS[kind]}{how}",
                          context=f"--{name.replace('_', '-')} {text!r}: ") from None


def add_config_arguments(parser: Any) -> None:
    """Add one `--field-name` option per TrainConfig field to an argparse parser."""
    for f in fields(TrainConfig):
        kind = _FIELD_TYPES[f.name][0]
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, type=str,
                            metavar=kind.__name__.upper(), help="(default from the preset)")


def config_from_args(base: TrainConfig, args: Any) -> TrainConfig:
    """Apply the options given on the command line on top of `base`; a ConfigError names the
    option as typed, the field, the value and what is allowed."""
    texts = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    changes = {name: _parse_value(name, _FIELD_TYPES[name][0], text)
               for name, text in texts.items()}
    try:
        return replace(base, **changes)
    except ConfigError as err:
        option = f"--{err.field.replace('_', '-')}"
        if err.field in texts:
            raise ConfigError(err.field, err.value, err.allowed,
                              context=f"{option} {texts[err.field]!r}: ") from None
        raise ConfigError(err.field, err.value, f"{err.allowed} (the value comes from the "
                          f"preset; set another with {option})") from None
