"""Training configuration: one frozen dataclass, every knob of a run with its reason.

Every knob of a DINO run lives in `TrainConfig`, so a run is fully described by the config saved
in its folder. Each field carries the reason for its value as its help text, which is what
`python -m minidino train --help` prints. Named starting points live in `minidino/presets.py`;
the CLI (`minidino/config_cli.py`) overrides any field (`--batch-size 128`,
`--global-scale 0.4,1.0`); `minidino/config_checks.py` says what each field allows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from minidino.config_checks import field_types, validate


def fast_mode() -> bool:
    """True when `MINIDINO_FAST=1` or `CI=true`: every run shrinks to a few quick steps."""
    flags = (os.environ.get("MINIDINO_FAST", ""), os.environ.get("CI", ""))
    return any(flag.strip().lower() in ("1", "true", "yes") for flag in flags)


def opt(default: Any, help: str) -> Any:
    """A TrainConfig field: its default, and the reason for it as the help of its option."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a DINO training run needs. Defaults follow the official DINO recipe; each
    field's help says why (`python -m minidino train --help` prints it)."""

    # data
    dataset: str = opt("shapes", "the training images: shapes or scenes (built in, no "
                       "download), cifar10, cifar100, imagenette (downloaded), or folder (your "
                       "own, in --data-path)")
    data_root: str = opt("data", "where datasets are downloaded to and read from")
    data_path: str | None = opt(None, "the image folder (one subfolder per class) when dataset "
                                "is folder; None for every other dataset")
    difficulty: str = opt("easy", "style of the built-in shapes: easy is learned in minutes on a "
                          "CPU; medium adds a faint tint and smaller shapes; hard, saturated "
                          "colours and busy backgrounds")
    scene_style: str = opt("default", "style of the built-in scenes: default has clutter made of "
                           "the objects' textures and a tinted palette per image; plain, grey "
                           "scenes of 1-3 objects with coarser textures and no clutter")
    n_train: int | None = opt(None, "train on a seeded random subset of this many images (every "
                              "class kept; shorter epochs); None: all of them")
    image_size: int = opt(32, "side in px at which the images are held (resized, centre-"
                          "cropped); the crops are cut from these")
    data_mode: str = opt("auto", "device: the images stay in memory as uint8 and the crops are "
                         "made for a whole batch at once where training runs (fast); loader: a "
                         "DataLoader crops image by image; auto: device when the images fit in a "
                         "quarter of the free memory (RAM, and GPU on CUDA)")
    num_workers: int | None = opt(None, "DataLoader worker processes; 0: none, the training "
                                  "process loads; None: one per CPU core, less one (at most 16)")
    # model
    arch: str = opt("vit_tiny", "the ViT size (width D, depth, heads h): vit_nano (96, 4, 3; "
                    "CPU-sized), vit_tiny (192, 12, 3), vit_small (384, 12, 6; DINO's ViT-S), "
                    "vit_base (768, 12, 12)")
    patch_size: int = opt(4, "side in px of a patch token: smaller patches give more tokens N, "
                          "better features and more compute (DINO: 16 at 224 px; CIFAR: 4)")
    embed_dim: int | None = opt(None, "width D of the ViT; None: the arch's")
    depth: int | None = opt(None, "number of transformer blocks; None: the arch's")
    num_heads: int | None = opt(None, "attention heads h, a divisor of D; None: the arch's")
    drop_path: float = opt(0.1, "stochastic depth of the student: the chance that a block skips "
                           "its residual branch, rising linearly to this in the last block; a "
                           "regulariser (DINO: 0.1)")
    n_registers: int = opt(0, "extra learned tokens beside CLS, dropped at the output: scratch "
                           "space, so the ViT stops hijacking background patches for it "
                           "(Darcet et al.: 4)")
    layerscale: float | None = opt(None, "initial gain of LayerScale on every residual branch, "
                                   "so a deep ViT starts near the identity (DINOv2: 1e-5); "
                                   "None: no LayerScale")
    out_dim: int = opt(65536, "K, the number of prototypes the head scores each image against: "
                       "large for large, varied data (DINO: 65536); a smaller K converges faster "
                       "on small data (CIFAR: 1024-16384)")
    hidden_dim: int = opt(2048, "width of the head's hidden MLP layers (DINO: 2048)")
    bottleneck_dim: int = opt(256, "width of the L2-normalised feature the head compares with "
                              "the K prototypes (DINO: 256)")
    norm_last_layer: bool = opt(True, "fix every prototype's length to 1 (weight-normalised last "
                                "layer): the logits are cosine similarities and training is more "
                                "stable; false can score higher but may diverge (DINO: true, "
                                "false for its ViT-S)")
    # multi-crop
    global_size: int = opt(32, "side in px of the 2 global_crops, seen by student and teacher "
                           "(DINO: 224; CIFAR: 32)")
    local_size: int = opt(16, "side in px of the local_crops, seen by the student only: cheap, "
                          "and a part must give the teacher's output for the whole (DINO: 96; "
                          "CIFAR: 16)")
    n_local_crops: int = opt(6, "local_crops per image: more pairs for little compute (DINO: 8; "
                             "CIFAR: 6-8); 0: no multi-crop, then widen global_scale (e.g. "
                             "0.14,1)")
    global_scale: tuple[float, float] = opt((0.4, 1.0), "area of a global crop as a fraction of "
                                            "the image (low,high): most of the object (DINO: "
                                            "0.4,1)")
    local_scale: tuple[float, float] = opt((0.05, 0.4), "area of a local crop as a fraction of "
                                           "the image (low,high): a part of the object (DINO: "
                                           "0.05,0.4)")
    blur_sigma: tuple[float, float] | None = opt(None, "Gaussian blur sigma range in px "
                                                 "(low,high); None: DINO's 0.1-2 px at 224 px, "
                                                 "scaled to global_size")
    blur: bool = opt(True, "Gaussian blur with DINO's probabilities (global crops 1.0 and 0.1, "
                     "local_crops 0.5), so sharpness cannot tell views apart; false: no blur")
    jitter_p: float = opt(0.8, "probability of colour jitter per crop, so colour cannot tell "
                          "views apart (DINO: 0.8)")
    solarize_p: float = opt(0.2, "probability of solarization of the second global crop, the "
                            "only one it applies to (DINO: 0.2)")
    # DINO loss
    student_temp: float = opt(0.1, "softmax temperature of the student's outputs; above "
                              "teacher_temp, so the targets are sharper than the predictions "
                              "(DINO: 0.1)")
    teacher_temp: float = opt(0.04, "softmax temperature of the teacher's targets after the "
                              "warm-up; low = sharp, which offsets the center's pull towards a "
                              "uniform output; above ~0.07 most runs are unstable (DINO: 0.04)")
    warmup_teacher_temp: float = opt(0.04, "teacher temperature at step 0, going linearly "
                                     "to teacher_temp over warmup_teacher_temp_epochs: a soft "
                                     "teacher early makes training unstable (DINO: 0.04)")
    warmup_teacher_temp_epochs: int = opt(0, "epochs of the teacher temperature warm-up; 0: "
                                          "teacher_temp from the start (DINO: 30 when it warms "
                                          "0.04 -> 0.07 in long runs)")
    center_momentum: float = opt(0.9, "EMA rate of the center, a running mean of the teacher's "
                                 "outputs subtracted before sharpening so no prototype wins "
                                 "every image; higher = slower center (DINO: 0.9)")
    centering: str = opt("center", "how the teacher's targets stay balanced: center (DINO's "
                         "running center) or sinkhorn (DINOv2: Sinkhorn-Knopp gives every "
                         "prototype an equal share of the batch; minidino/sinkhorn.py)")
    teacher_momentum: float = opt(0.996, "EMA rate of the teacher's weights at step 0, raised to "
                                  "1 by a cosine: a slow teacher averages many students, so "
                                  "its targets are stable; higher for small batches (DINO: "
                                  "0.996)")
    # iBOT: the student also predicts the teacher's patch tokens where its own input was masked
    ibot: bool = opt(False, "add iBOT's patch loss: the student sees its global crops with "
                     "patches masked and predicts the teacher's output (unmasked view) at each "
                     "masked patch, so the patch tokens learn too, not just CLS")
    ibot_separate_head: bool = opt(False, "a head of its own for the patch tokens; false: the "
                                   "CLS head maps them too (iBOT found sharing works best)")
    ibot_out_dim: int | None = opt(None, "K of the separate patch head; None: out_dim (a shared "
                                   "head always has out_dim)")
    mask_ratio: tuple[float, float] = opt((0.1, 0.5), "share of an image's patches masked, in "
                                          "blocks, drawn per image from (low,high) (iBOT, "
                                          "DINOv2: 0.1,0.5)")
    mask_prob: float = opt(0.5, "share of the images that get a mask at all; the rest keep "
                           "every patch (iBOT, DINOv2: 0.5)")
    ibot_teacher_temp: float = opt(0.04, "teacher temperature of the patch targets; warms up "
                                   "from warmup_teacher_temp, as teacher_temp does (DINOv2: "
                                   "0.07)")
    ibot_center_momentum: float = opt(0.9, "EMA rate of the patch tokens' own center, kept "
                                      "apart from the CLS center (iBOT: 0.9)")
    ibot_loss_weight: float = opt(1.0, "loss = CLS loss + ibot_loss_weight * patch loss "
                                  "(iBOT, DINOv2: 1)")
    koleo_weight: float = opt(0.0, "weight of DINOv2's KoLeo term on the student's global CLS "
                              "features: it pushes each away from its nearest neighbour in the "
                              "batch, spreading them over the sphere (DINOv2: 0.1; 0: off)")
    # optimisation
    epochs: int = opt(100, "passes over the training images; the lr, weight decay, teacher "
                      "momentum and teacher temperature schedules span them (DINO: 100-800)")
    batch_size: int = opt(256, "images per step over all processes (the global batch); the lr "
                          "scales with it (DINO: 1024)")
    lr: float = opt(5e-4, "peak AdamW learning rate for a batch of 256, reached after "
                    "warmup_epochs; the run uses lr * batch_size / 256, the linear scaling rule "
                    "(DINO: 5e-4)")
    min_lr: float = opt(1e-6, "learning rate at the end of the cosine decay (DINO: 1e-6)")
    warmup_epochs: int = opt(10, "epochs of linear learning-rate warm-up from 0 to the peak, "
                             "so the first large updates do not derail a fresh ViT (DINO: 10)")
    weight_decay: float = opt(0.04, "AdamW weight decay at step 0, raised by a cosine to "
                              "weight_decay_end: a small value early works well for ViTs "
                              "(DINO: 0.04)")
    weight_decay_end: float = opt(0.4, "weight decay at the end; a larger decay late in "
                                  "training improves ViTs (DINO: 0.4)")
    clip_grad: float = opt(3.0, "largest norm of the student's gradient (all its parameters "
                           "together): stops rare huge updates (DINO: 3.0); 0: no clipping")
    freeze_last_layer: int = opt(1, "epochs at the start in which the head's last layer (the K "
                                 "prototypes) gets no update: this helps training start; "
                                 "raise it if the loss does not fall (DINO: 1)")
    # running
    device: str = opt("auto", "where to train; auto: cuda, then mps, then cpu")
    seed: int = opt(0, "seeds the initialisation, the crops and the image subsets, so a run can "
                    "be repeated")
    out_dir: str = opt("runs", "the folder that holds the run folders")
    run_name: str = opt("run", "the run's folder in out_dir: config, logs, checkpoints")
    log_every: int = opt(10, "write a line to metrics.jsonl every N steps (the losses are read "
                         "back from the GPU only then, so steps need not wait)")
    knn_every: int = opt(0, "kNN accuracy (k=20) of teacher and student every N epochs and at "
                         "the end, as DINO scores its features (0: never)")
    n_eval: int | None = opt(None, "held-out images used as kNN queries, a seeded random subset; "
                             "None: the whole test split")
    max_steps: int | None = opt(None, "stop after this many steps while the schedules still "
                                "span all epochs (a first look at a long run); None: all")
    compile: bool = opt(False, "torch.compile the forward pass: a slow first step, then faster "
                        "steps on a GPU")
    compile_mode: str = opt("default", "torch.compile's mode when compile is true: default; "
                            "reduce-overhead (CUDA graphs: each step's forward and backward "
                            "replayed with one launch, for small models whose steps wait on "
                            "kernel launches; needs the same crop shapes every step, as the "
                            "device path gives); max-autotune (CUDA graphs, and the fastest "
                            "matmul kernels searched at the first step: a slower start); "
                            "max-autotune-no-cudagraphs; a CPU has no CUDA graphs, there "
                            "reduce-overhead compiles as default")
    collapse_patience: int = opt(3, "warn after this many epochs in a row of teacher entropy "
                                 "near 0 (one prototype) or near log K (uniform), DINO's two "
                                 "collapses (centering center only; 0: never)")

    def __post_init__(self) -> None:
        validate(self)  # minidino/config_checks.py: what each field allows

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
        tuples = {name for name, (kind, _) in field_types(cls).items() if kind is tuple}
        fixed = {k: tuple(v) if k in tuples and isinstance(v, list) else v
                 for k, v in values.items()}
        return cls(**fixed)


def fast_config(cfg: TrainConfig) -> TrainConfig:
    """Shrink a config for fast mode: tiny model, built-in dataset, a few steps."""
    return replace(
        cfg, dataset="shapes", data_path=None, image_size=32, arch="vit_nano", patch_size=8,
        embed_dim=None, depth=2, num_heads=None, out_dim=128, hidden_dim=64, bottleneck_dim=32,
        global_size=32, local_size=16, n_local_crops=2, epochs=2, batch_size=32, n_train=128,
        n_eval=128, warmup_epochs=1, data_mode="device", device="cpu", max_steps=None,
        warmup_teacher_temp_epochs=min(cfg.warmup_teacher_temp_epochs, 1),
    )
