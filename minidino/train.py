"""The DINO training loop, written out step by step.

Each step: make the crops; the teacher sees the 2 global crops, the student sees every crop (one
backbone forward per resolution); the DINO loss compares them; AdamW updates the student
(learning rate and weight decay follow their schedules, gradients are clipped, the last layer is
frozen for the first epoch); the teacher follows the student by EMA and the center follows the
teacher's outputs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from minidino.augment import MultiCropConfig, small_image_config
from minidino.batches import DeviceBatches, LoaderBatches
from minidino.checkpoint import (
    GracefulStop,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from minidino.config import TrainConfig
from minidino.data import DatasetSplit, load_dataset
from minidino.head import DINOHead, MultiCropWrapper
from minidino.loss import DINOLoss, teacher_temp_schedule
from minidino.metrics import collapse_metrics
from minidino.teacher import (
    build_teacher,
    cancel_last_layer_gradients,
    cosine_schedule,
    ema_update_,
)
from minidino.vit import VIT_FACTORIES, VisionTransformer


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops instead of training on garbage."""


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for "auto"; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def build_backbone(cfg: TrainConfig) -> VisionTransformer:
    sizes = {k: v for k, v in (("embed_dim", cfg.embed_dim), ("depth", cfg.depth),
                               ("num_heads", cfg.num_heads)) if v is not None}
    return VIT_FACTORIES[cfg.arch](patch_size=cfg.patch_size, img_size=cfg.global_size,
                                   drop_path_rate=cfg.drop_path, n_registers=cfg.n_registers,
                                   **sizes)


def build_student(cfg: TrainConfig) -> MultiCropWrapper:
    backbone = build_backbone(cfg)
    head = DINOHead(backbone.embed_dim, cfg.out_dim, hidden_dim=cfg.hidden_dim,
                    bottleneck_dim=cfg.bottleneck_dim, norm_last_layer=cfg.norm_last_layer)
    return MultiCropWrapper(backbone, head)


def crop_config(cfg: TrainConfig) -> MultiCropConfig:
    base = small_image_config(cfg.global_size, n_local_crops=cfg.n_local_crops)
    return MultiCropConfig(**{**base.__dict__, "global_size": cfg.global_size,
                              "local_size": cfg.local_size, "global_scale": cfg.global_scale,
                              "local_scale": cfg.local_scale, "blur_sigma": cfg.blur_sigma})


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases and norm parameters (1-D) get none, as in DINO."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class Schedules:
    """Per-step values of everything that changes during training."""

    lr: Tensor  # (total_steps,)
    weight_decay: Tensor
    teacher_momentum: Tensor
    teacher_temp: Tensor

    @classmethod
    def build(cls, cfg: TrainConfig, steps_per_epoch: int) -> Schedules:
        total = cfg.epochs * steps_per_epoch
        peak_lr = cfg.lr * cfg.batch_size / 256  # the linear scaling rule
        return cls(
            lr=cosine_schedule(peak_lr, cfg.min_lr, total, cfg.warmup_epochs * steps_per_epoch),
            weight_decay=cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total),
            teacher_momentum=cosine_schedule(cfg.teacher_momentum, 1.0, total),
            teacher_temp=teacher_temp_schedule(cfg.warmup_teacher_temp, cfg.teacher_temp,
                                               cfg.warmup_teacher_temp_epochs * steps_per_epoch,
                                               total),
        )


def load_splits(cfg: TrainConfig) -> tuple[DatasetSplit, DatasetSplit]:
    """The training split and the held-out split used for kNN evaluation."""
    kwargs: dict[str, Any] = {"root": cfg.data_root, "image_size": cfg.image_size}
    if cfg.dataset == "shapes":
        kwargs["difficulty"] = cfg.difficulty
    if cfg.dataset == "folder":
        kwargs["path"] = cfg.data_path
    train = load_dataset(cfg.dataset, split="train", **kwargs)
    test = load_dataset(cfg.dataset, split="test", **kwargs)
    return train, test


def make_batches(cfg: TrainConfig, train: DatasetSplit, device: torch.device):
    crops = crop_config(cfg)
    images = train.images[: cfg.n_train] if train.images is not None else None
    mode = cfg.data_mode
    if mode == "auto":
        mode = "device" if images is not None else "loader"
    if mode == "device":
        if images is None:
            raise ValueError(f"data_mode='device' needs a dataset held in memory; "
                             f"dataset={cfg.dataset!r} is read from disk, use data_mode='loader'")
        return DeviceBatches(images, cfg.batch_size, crops, cfg.seed, device)
    dataset = train.dataset
    if cfg.n_train is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(cfg.n_train, len(dataset))))
    return LoaderBatches(dataset, cfg.batch_size, crops, cfg.seed, device, cfg.num_workers)


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True
          ) -> dict[str, Any]:
    """Train a DINO student and its EMA teacher; return the models and the run folder."""
    device = pick_device(cfg.device)
    run_dir = Path(cfg.out_dir) / cfg.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    print(f"minidino: training on {device}; run folder {run_dir}\n{cfg.to_json()}")

    torch.manual_seed(cfg.seed)
    student = build_student(cfg).to(device)
    teacher = build_teacher(student)
    train_split, _ = load_splits(cfg)
    batches = make_batches(cfg, train_split, device)
    steps_per_epoch = batches.steps_per_epoch
    sched = Schedules.build(cfg, steps_per_epoch)
    total_steps = cfg.epochs * steps_per_epoch
    last_step = min(total_steps, cfg.max_steps or total_steps)

    loss_fn = DINOLoss(cfg.out_dim, cfg.n_crops, cfg.student_temp,
                       cfg.center_momentum).to(device)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(student), lr=0.0, fused=fused)
    step_fn = _compiled_forward(cfg, student, teacher)
    ckpt_path = run_dir / "checkpoint.pt"

    start = 0
    if resume is not None:
        state = load_checkpoint(resume, map_location=device)
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        loss_fn.load_state_dict(state["loss"])
        batches.load_state_dict(state["batches"])
        set_rng_state(state["rng"])
        start = state["step"]
        _truncate_jsonl(run_dir / "metrics.jsonl", start)
        print(f"minidino: resumed from {resume} at step {start}")

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    log = (run_dir / "metrics.jsonl").open("a")
    bar = tqdm(total=last_step, initial=start, disable=not progress, desc="train", unit="step")
    pending: list[tuple[int, Tensor]] = []  # losses not yet read back from the device
    step, t0, seen = start, time.perf_counter(), 0
    stopper = GracefulStop().__enter__()

    def checkpoint() -> None:
        save_checkpoint({"student": student.state_dict(), "teacher": teacher.state_dict(),
                         "optimizer": optimizer.state_dict(), "loss": loss_fn.state_dict(),
                         "batches": batches.state_dict(), "rng": rng_state(), "step": step,
                         "config": cfg.__dict__}, ckpt_path)

    def flush(extra: dict[str, Any] | None = None) -> None:
        for s, loss in pending:
            value = float(loss)
            if not math.isfinite(value):
                good = f"last good checkpoint: {ckpt_path}" if ckpt_path.exists() else \
                    "no checkpoint was written yet"
                raise NonFiniteLossError(f"loss is {value} at step {s}; stopping ({good}). "
                                         "Try a lower lr or a higher teacher_temp.")
            record = {"step": s, "epoch": s // steps_per_epoch, "loss": value,
                      "lr": float(sched.lr[s]), "weight_decay": float(sched.weight_decay[s]),
                      "teacher_momentum": float(sched.teacher_momentum[s]),
                      "teacher_temp": float(sched.teacher_temp[s])}
            if extra is not None and s == pending[-1][0]:
                record.update(extra)
            log.write(json.dumps(record) + "\n")
        log.flush()
        pending.clear()

    try:
        while step < last_step:
            epoch, it = divmod(step, steps_per_epoch)
            for crops in batches.epoch(epoch, start=it):
                for i, group in enumerate(optimizer.param_groups):
                    group["lr"] = float(sched.lr[step])
                    if i == 0:
                        group["weight_decay"] = float(sched.weight_decay[step])
                teacher_temp = float(sched.teacher_temp[step])
                with autocast:
                    student_out, teacher_out = step_fn(crops)  # (n_crops*B, K), (2*B, K)
                loss = loss_fn(student_out.float(), teacher_out.float(), teacher_temp)

                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad > 0:
                    nn.utils.clip_grad_norm_(student.parameters(), cfg.clip_grad)
                cancel_last_layer_gradients(student, epoch, cfg.freeze_last_layer)
                optimizer.step()
                ema_update_(teacher, student, float(sched.teacher_momentum[step]))

                pending.append((step, loss.detach()))
                step += 1
                seen += crops[0].shape[0]
                if step % cfg.log_every == 0 or step == last_step:
                    diag = collapse_metrics(teacher_out.float(), student_out.float(),
                                            loss_fn.center, teacher_temp, cfg.student_temp)
                    diag["images_per_s"] = seen / (time.perf_counter() - t0)
                    last_loss = float(pending[-1][1])
                    flush(diag)
                    bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{sched.lr[step - 1]:.1e}",
                                    H_t=f"{diag['teacher_entropy']:.2f}")
                bar.update(1)
                if stopper.requested or step >= last_step:
                    break
            if stopper.requested:
                flush()
                checkpoint()
                raise KeyboardInterrupt(f"stopped by {stopper.requested} at step {step}; "
                                        f"checkpoint written to {ckpt_path}; continue with "
                                        f"--resume {ckpt_path}")
            flush()
            checkpoint()  # every epoch, and when max_steps ends the run
    finally:
        stopper.__exit__()
        bar.close()
        log.close()
    elapsed = time.perf_counter() - t0
    return {"student": student, "teacher": teacher, "run_dir": run_dir, "steps": step,
            "seconds": elapsed, "images_per_s": seen / max(elapsed, 1e-9), "config": cfg}


def _compiled_forward(cfg: TrainConfig, student: nn.Module, teacher: nn.Module):
    """The two forwards of a step; compiled with torch.compile when cfg.compile is set."""

    def forward(crops: list[Tensor]) -> tuple[Tensor, Tensor]:
        teacher_out = teacher(crops[:2])  # (2*B, K): the teacher sees only the global crops
        student_out = student(crops)  # (n_crops*B, K)
        return student_out, teacher_out

    return torch.compile(forward) if cfg.compile else forward


def _truncate_jsonl(path: Path, step: int) -> None:
    """Drop records of steps >= `step` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] < step]
    path.write_text("".join(line + "\n" for line in keep))
