"""What a training run records as it goes, and where.

`metrics.jsonl` gets one line per step (the loss and the schedules' values), `epochs.jsonl` one
per epoch (the collapse diagnostics of lesson 04, the kNN scores); the progress bar shows the
loss, the learning rate and the teacher's entropy; the collapse watchdog warns. The losses stay
on the device until a log step reads them back together, so the step never waits for the log.
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

from minidino.collapse import collapse_metrics
from minidino.distributed import all_reduce_mean, is_main
from minidino.step import DINOParts
from minidino.watchdog import CollapseWatchdog


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops instead of training on garbage."""


class TrainingLog:
    """What a run records as it goes: one line per step in metrics.jsonl, one per epoch in
    epochs.jsonl (collapse diagnostics, kNN scores), the progress bar and the collapse watchdog.

    The losses stay on the device until a log step reads them all at once, so the GPU is not
    made to wait at every step. Use it as a context manager: the file and the bar are closed
    however the run ends."""

    def __init__(self, parts: DINOParts, run_dir: Path, start: int, last_step: int,
                 epoch_diags: list[dict], progress: bool) -> None:
        self.parts, self.cfg, self.run_dir = parts, parts.cfg, run_dir
        self.last_step, self.epoch_diags, self.main = last_step, epoch_diags, is_main()
        self.pending: list[tuple[int, Tensor]] = []  # losses not yet read back from the device
        self.t0, self.eval_seconds, self.seen = time.perf_counter(), 0.0, 0
        self.knn: dict[str, float] = {}  # the last kNN scores
        self.file = (run_dir / "metrics.jsonl").open("a") if self.main else None
        self.bar = tqdm(total=last_step, initial=start, disable=not (progress and self.main),
                        desc="train", unit="step")
        # The diagnostics read the centred softmax; Sinkhorn-Knopp targets are balanced whatever
        # it says (a flat softmax is normal there), so the watchdog watches only the center.
        self.watchdog = CollapseWatchdog(
            self.cfg.out_dim, self.cfg.collapse_patience if self.cfg.centering == "center" else 0)
        if self.main and start > 0:  # a resumed run remembers its epochs, without re-warning
            self.watchdog.replay(run_dir / "epochs.jsonl")

    def __enter__(self) -> TrainingLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()

    def training_seconds(self) -> float:
        return time.perf_counter() - self.t0 - self.eval_seconds

    def after_step(self, step: int, out: dict[str, Any], images: int) -> None:
        """Record the step just done (`step` steps are done now); on a log step, read the
        losses back, add rank 0's collapse diagnostics and write the records."""
        self.pending.append((step - 1, out["loss"]))
        self.seen += images
        if step % self.cfg.log_every == 0 or step == self.last_step:
            diag = self._diagnostics(out) if self.main else None
            last_loss = self.flush(diag)
            if diag is not None:
                self.bar.set_postfix(loss=f"{last_loss:.3f}",
                                     lr=f"{self.parts.schedules.lr[step - 1]:.1e}",
                                     H_t=f"{diag['teacher_entropy']:.2f}")
        self.bar.update(1)

    def _diagnostics(self, out: dict[str, Any]) -> dict[str, float]:
        """Collapse diagnostics of rank 0's share of the batch, the loss terms, the speed."""
        diag = collapse_metrics(out["teacher_out"].float(), out["student_out"].float(),
                                self.parts.loss_fn.center, out["teacher_temp"],
                                self.cfg.student_temp)
        terms = [k for k in ("dino_loss", "ibot_loss", "koleo_loss") if k in out]
        if terms:  # read back together: one wait for the device, not one per term
            diag.update(zip(terms, torch.stack([out[k] for k in terms]).tolist(), strict=True))
        diag["images_per_s"] = self.seen / (time.perf_counter() - self.t0)
        self.epoch_diags.append(diag)
        return diag

    def flush(self, extra: dict[str, Any] | None = None) -> float:
        """Write the pending steps' records (the last one with `extra`); return its loss.
        Every process calls it (the losses are averaged over them); a NaN stops the run."""
        if not self.pending:
            return math.nan
        values = all_reduce_mean(torch.stack([loss for _, loss in self.pending])).tolist()
        sched, per_epoch = self.parts.schedules, self.parts.steps_per_epoch
        for (s, _), value in zip(self.pending, values, strict=True):
            if not math.isfinite(value):
                ckpt = self.run_dir / "checkpoint.pt"
                good = f"last good checkpoint: {ckpt}" if ckpt.exists() else \
                    "no checkpoint was written yet"
                raise NonFiniteLossError(f"loss is {value} at step {s}; stopping ({good}). "
                                         "Try a lower lr or a higher teacher_temp.")
            record = {"step": s, "epoch": s // per_epoch, "loss": value,
                      "time": self.training_seconds(),  # seconds of training, without kNN
                      "lr": float(sched.lr[s]), "weight_decay": float(sched.weight_decay[s]),
                      "teacher_momentum": float(sched.teacher_momentum[s]),
                      "teacher_temp": float(sched.teacher_temp[s])}
            if extra is not None and s == self.pending[-1][0]:
                record.update(extra)
            if self.file is not None:
                self.file.write(json.dumps(record) + "\n")
        if self.file is not None:
            self.file.flush()
        self.pending.clear()
        return values[-1]

    def end_epoch(self, epoch: int, step: int, score: Any) -> None:
        """After the last step of an epoch (or of the run): write what is pending, score kNN
        when it is due (`score()`, rank 0), write the epoch's record, feed the watchdog."""
        self.flush()
        per_epoch, cfg = self.parts.steps_per_epoch, self.cfg
        epoch_done = step % per_epoch == 0 or step >= self.last_step
        knn_now: dict[str, float] = {}
        if self.main and epoch_done and cfg.knn_every > 0 and (
                (epoch + 1) % cfg.knn_every == 0 or step >= self.last_step):
            t_eval = time.perf_counter()
            self.knn = knn_now = score()
            self.eval_seconds += time.perf_counter() - t_eval
            self.bar.write(f"epoch {epoch}: kNN top-1 (k=20) on held-out images: teacher "
                           f"{knn_now['knn_teacher']:.1f}%, student {knn_now['knn_student']:.1f}%")
        if self.main and epoch_done and (self.epoch_diags or knn_now):
            record = log_epoch(self.run_dir / "epochs.jsonl", epoch, self.epoch_diags,
                                cfg.out_dim, self.bar, knn_now)
            if self.epoch_diags:
                self.watchdog.update(epoch, record["teacher_entropy"], record["mean_entropy"])
        if step % per_epoch == 0:
            self.epoch_diags = []  # else the checkpoint carries them into the resumed epoch


def log_epoch(path: Path, epoch: int, diags: list[dict[str, float]], out_dim: int,
               bar: Any, extra: dict[str, Any] | None = None) -> dict[str, float]:
    """Average this epoch's collapse diagnostics (none when no step of the epoch was a log
    step), append them and `extra` (kNN scores) to epochs.jsonl, print a line."""
    keys = ("teacher_entropy", "kl_teacher_student", "mean_entropy", "prototypes_used")
    record = {"epoch": epoch, **{k: sum(d[k] for d in diags) / len(diags) for k in keys if diags},
              **(extra or {})}
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    if diags:
        bar.write(f"epoch {epoch}: teacher entropy {record['teacher_entropy']:.2f} "
                  f"(0 = one prototype, {math.log(out_dim):.2f} = uniform), "
                  f"KL(teacher||student) {record['kl_teacher_student']:.3f}, "
                  f"prototypes used {record['prototypes_used']:.0f} of {out_dim}")
    return record
