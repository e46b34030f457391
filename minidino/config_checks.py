"""What each training-config field allows, and the check that enforces it.

`TrainConfig` (minidino/config.py) calls `validate` when it is built, so a config that exists is
a config that can run. Each refusal is a `ConfigError` naming the field, its value and what is
allowed; the command line prints it as one line (docs/bad-input.md lists them all).
"""

from __future__ import annotations

import functools
import math
import typing
from typing import TYPE_CHECKING, Any

from minidino.loss import CENTERINGS  # DINO's running center, or DINOv2's Sinkhorn-Knopp
from minidino.vit import VIT_SIZES

if TYPE_CHECKING:
    from minidino.config import TrainConfig

ARCHS = tuple(VIT_SIZES)  # vit_nano, vit_tiny, vit_small, vit_base
DATASETS = ("shapes", "scenes", "cifar10", "cifar100", "imagenette", "folder")
DIFFICULTIES = ("easy", "medium", "hard")  # the built-in shapes' styles
SCENE_STYLES = ("default", "plain")  # the built-in scenes' styles (minidino.scenes.SCENES_STYLES)
DEVICES, DATA_PATHS = ("auto", "cpu", "cuda", "mps"), ("auto", "device", "loader")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the compile modes that use CUDA graphs


KIND_WORDS = {int: "an integer", float: "a finite number", str: "a string",
              bool: "true or false", tuple: "a pair of finite numbers (low, high)"}


@functools.cache
def field_types(config_class: type) -> dict[str, tuple[type, bool]]:
    """Each field of a config dataclass: (int, float, str, bool or tuple; whether None is allowed),
    read from its type hints."""
    types = {}
    for name, hint in typing.get_type_hints(config_class).items():
        args = typing.get_args(hint)
        kind = next(a for a in args if a is not type(None)) if type(None) in args else hint
        types[name] = (typing.get_origin(kind) or kind, type(None) in args)
    return types


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


def validate(c: TrainConfig) -> None:
    """Raise a `ConfigError` naming the first field of `c` whose value is not allowed."""
    def need(ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(name, getattr(c, name), allowed)

    types = field_types(type(c))
    for name, (kind, optional) in types.items():  # types first: the rest compares values
        need((optional and getattr(c, name) is None) or _has_type(getattr(c, name), kind), name,
             f"must be {KIND_WORDS[kind]}{' or None' if optional else ''}")
    for name, allowed in (("dataset", DATASETS), ("difficulty", DIFFICULTIES),
                          ("scene_style", SCENE_STYLES), ("arch", ARCHS),
                          ("device", DEVICES), ("data_mode", DATA_PATHS),
                          ("centering", CENTERINGS), ("compile_mode", COMPILE_MODES)):
        need(getattr(c, name) in allowed, name, f"one of {allowed}")
    for name in ("image_size", "patch_size", "out_dim", "hidden_dim", "bottleneck_dim",
                 "global_size", "local_size", "epochs", "batch_size", "log_every", "embed_dim",
                 "depth", "num_heads", "max_steps", "n_train", "n_eval", "ibot_out_dim"):
        need(getattr(c, name) is None or getattr(c, name) > 0, name, "must be a positive integer"
             + (" or None" if types[name][1] else ""))
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
    need(c.compile or c.compile_mode == "default", "compile_mode",
         "only compile=true reads it: set --compile true too, or leave it 'default'")
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
