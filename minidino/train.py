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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
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
from minidino.data import DatasetSplit, load_dataset, subset_indices
from minidino.metrics import collapse_metrics
from minidino.step import build_parts, train_step


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


def crop_config(cfg: TrainConfig) -> MultiCropConfig:
    base = small_image_config(cfg.global_size, n_local_crops=cfg.n_local_crops)
    return MultiCropConfig(**{**base.__dict__, "global_size": cfg.global_size,
                              "local_size": cfg.local_size, "global_scale": cfg.global_scale,
                              "local_scale": cfg.local_scale, "blur_sigma": cfg.blur_sigma,
                              "jitter_p": cfg.jitter_p,
                              "solarize_p": (0.0, cfg.solarize_p, 0.0)})


def load_splits(cfg: TrainConfig) -> tuple[DatasetSplit, DatasetSplit]:
    """The training split and the held-out split used for kNN evaluation."""
    kwargs: dict[str, Any] = {"root": cfg.data_root, "image_size": cfg.image_size}
    if cfg.dataset == "shapes":
        kwargs["difficulty"] = cfg.difficulty
    if cfg.dataset == "folder":
        kwargs["path"] = cfg.data_path
    if cfg.dataset in ("folder", "imagenette") and cfg.data_mode == "device":
        kwargs["resident"] = True  # decode and resize every image once, keep them as uint8
    train = load_dataset(cfg.dataset, split="train", **kwargs)
    test = load_dataset(cfg.dataset, split="test", **kwargs)
    return train, test


def make_batches(cfg: TrainConfig, train: DatasetSplit, device: torch.device):
    crops = crop_config(cfg)
    chosen = subset_indices(len(train.labels), cfg.n_train, cfg.seed)  # (N,)
    images = train.images[chosen] if train.images is not None else None
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
        dataset = torch.utils.data.Subset(dataset, chosen.tolist())
    return LoaderBatches(dataset, cfg.batch_size, crops, cfg.seed, device, cfg.num_workers)


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True,
          train_split: DatasetSplit | None = None) -> dict[str, Any]:
    """Train a DINO student and its EMA teacher; return the models and the run folder.

    `train_split` may be passed when the caller has loaded it already (else it is loaded)."""
    device = pick_device(cfg.device)
    run_dir = Path(cfg.out_dir) / cfg.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    fields = "\n".join(f"  {k} = {v!r}" for k, v in cfg.__dict__.items())
    print(f"minidino: training on {device}; run folder {run_dir}; config:\n{fields}")

    if train_split is None:
        train_split, _ = load_splits(cfg)
    batches = make_batches(cfg, train_split, device)
    steps_per_epoch = batches.steps_per_epoch
    parts = build_parts(cfg, steps_per_epoch, device)
    student, teacher, loss_fn, optimizer = parts.student, parts.teacher, parts.loss_fn, \
        parts.optimizer
    sched = parts.schedules
    total_steps = cfg.epochs * steps_per_epoch
    last_step = min(total_steps, cfg.max_steps or total_steps)
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
        print(f"minidino: resumed from {resume} at step {start}")
    # a fresh run starts new logs; a resumed one drops what was logged after its checkpoint
    _truncate_jsonl(run_dir / "metrics.jsonl", "step", start)
    _truncate_jsonl(run_dir / "epochs.jsonl", "epoch", start // steps_per_epoch)

    log = (run_dir / "metrics.jsonl").open("a")
    bar = tqdm(total=last_step, initial=start, disable=not progress, desc="train", unit="step")
    pending: list[tuple[int, Tensor]] = []  # losses not yet read back from the device
    epoch_diags: list[dict[str, float]] = []  # collapse diagnostics of this epoch's log steps
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
                out = train_step(parts, crops, step)
                pending.append((step, out["loss"]))
                step += 1
                seen += crops[0].shape[0]
                if step % cfg.log_every == 0 or step == last_step:
                    diag = collapse_metrics(out["teacher_out"].float(),
                                            out["student_out"].float(), loss_fn.center,
                                            out["teacher_temp"], cfg.student_temp)
                    diag["images_per_s"] = seen / (time.perf_counter() - t0)
                    last_loss = float(pending[-1][1])
                    flush(diag)
                    epoch_diags.append(diag)
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
            if epoch_diags:
                _log_epoch(run_dir / "epochs.jsonl", epoch, epoch_diags, cfg.out_dim, bar)
                epoch_diags.clear()
    finally:
        stopper.__exit__()
        bar.close()
        log.close()
    elapsed = time.perf_counter() - t0
    return {"student": student, "teacher": teacher, "run_dir": run_dir, "steps": step,
            "seconds": elapsed, "images_per_s": seen / max(elapsed, 1e-9), "config": cfg}


def _log_epoch(path: Path, epoch: int, diags: list[dict[str, float]], out_dim: int,
               bar: Any) -> None:
    """Average this epoch's collapse diagnostics, append them to epochs.jsonl, print a line."""
    keys = ("teacher_entropy", "kl_teacher_student", "mean_entropy", "prototypes_used")
    record = {"epoch": epoch, **{k: sum(d[k] for d in diags) / len(diags) for k in keys}}
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    bar.write(f"epoch {epoch}: teacher entropy {record['teacher_entropy']:.2f} "
              f"(0 = one prototype, {math.log(out_dim):.2f} = uniform), "
              f"KL(teacher||student) {record['kl_teacher_student']:.3f}, "
              f"prototypes used {record['prototypes_used']:.0f} of {out_dim}")


def _truncate_jsonl(path: Path, key: str, first_dropped: int) -> None:
    """Drop the records whose `key` (step or epoch) is >= `first_dropped`."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)[key] < first_dropped]
    path.write_text("".join(line + "\n" for line in keep))
