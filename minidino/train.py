"""The DINO training loop, written out step by step.

Each step: make the crops; the teacher sees the 2 global crops, the student sees every crop (one
backbone forward per resolution); the DINO loss compares them; AdamW updates the student
(learning rate and weight decay follow their schedules, gradients are clipped, the last layer is
frozen for the first epoch); the teacher follows the student by EMA and the center follows the
teacher's outputs. What the run records as it goes is in `minidino/training_log.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from minidino.batches import (
    DeviceBatches,
    LoaderBatches,
    make_batches,
)
from minidino.checkpoint import (
    CheckpointWriter,
    GracefulStop,
    resume_state,
    rng_state,
    set_rng_state,
)
from minidino.config import TrainConfig
from minidino.config_checks import check_world_size
from minidino.data import DatasetSplit, load_splits
from minidino.device import pick_device
from minidino.distributed import (
    any_rank,
    barrier,
    gather_objects,
    init_distributed,
    is_main,
    rank,
    shutdown,
    world_size,
)
from minidino.held_out import knn_top1
from minidino.step import DINOParts, build_parts, train_step
from minidino.training_log import TrainingLog


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True,
          train_split: DatasetSplit | None = None,
          test_split: DatasetSplit | None = None) -> dict[str, Any]:
    """Train a DINO student and its EMA teacher; return the models and the run folder.

    `resume`: None (a fresh run), a checkpoint file, or "auto": the newest valid checkpoint in
    the run folder (a fresh run when there is none yet; a damaged newest one is reported and the
    previous one used). SIGINT (Ctrl-C) or SIGTERM stops at the end of the current step, writes a
    checkpoint and raises KeyboardInterrupt. Under torchrun every process calls this and trains
    on its share of each global batch of `cfg.batch_size` images (see `minidino.distributed`).
    `train_split` and `test_split` may be passed when the caller has loaded them already (else
    they are loaded). With `cfg.knn_every` = N > 0, the teacher and the student are scored by
    weighted kNN on the held-out split after every N-th epoch and after the last one; the
    scores are printed and logged to epochs.jsonl, and the last ones returned ("knn")."""
    device, owns_group = init_distributed(pick_device(cfg.device))
    try:
        return _train(cfg, device, resume, progress, train_split, test_split)
    finally:
        if owns_group:
            shutdown()


def _train(cfg: TrainConfig, device: torch.device, resume: str | Path | None, progress: bool,
           train_split: DatasetSplit | None, test_split: DatasetSplit | None) -> dict[str, Any]:
    main, world = is_main(), world_size()
    check_world_size(cfg, world)
    run_dir = Path(cfg.out_dir) / cfg.run_name
    if main:
        _open_run_folder(cfg, run_dir, device, world)
    resume_from, state = resume_state(resume, run_dir, device)  # before the data: fail fast
    if train_split is None or (test_split is None and cfg.knn_every > 0):
        loaded_train, loaded_test = load_splits(cfg, progress)
        train_split, test_split = train_split or loaded_train, test_split or loaded_test
    batches = make_batches(cfg, train_split, device, progress)
    parts = build_parts(cfg, batches.steps_per_epoch, device)
    steps_per_epoch = parts.steps_per_epoch
    last_step = min(cfg.epochs * steps_per_epoch, cfg.max_steps or cfg.epochs * steps_per_epoch)
    if main:  # what a sweep or a plot needs to know about the run's length
        (run_dir / "run.json").write_text(json.dumps(
            {"steps_per_epoch": steps_per_epoch, "total_steps": cfg.epochs * steps_per_epoch,
             "last_step": last_step, "world_size": world, "device": str(device)}) + "\n")
    start, epoch_diags = _resume(parts, batches, resume_from, state, run_dir, world)

    def score() -> dict[str, float]:
        return knn_scores(parts, train_split, test_split, cfg, device)

    step, stopping = start, False
    with TrainingLog(parts, run_dir, start, last_step, epoch_diags, progress) as log, \
            GracefulStop() as stopper, \
            CheckpointWriter(background=device.type == "cuda") as writer:  # GPU: while it trains
        while step < last_step and not stopping:
            epoch, it = divmod(step, steps_per_epoch)
            for crops in batches.epoch(epoch, start=it):
                out = train_step(parts, crops, step)  # one step: the heart of it all
                step += 1
                log.after_step(step, out, images=crops[0].shape[0] * world)
                stopping = any_rank(stopper.requested is not None)  # every process stops together
                if stopping or step >= last_step:
                    break
            log.end_epoch(epoch, step, score)  # the epoch's line, kNN when it is due
            _checkpoint(parts, batches, step, log.epoch_diags, run_dir / "checkpoint.pt", writer,
                        final=stopping or step >= last_step)
            if stopping:
                raise KeyboardInterrupt(f"stopped by {stopper.requested or 'another process'} "
                                        f"at step {step}; checkpoint written to "
                                        f"{run_dir / 'checkpoint.pt'}; continue with --resume auto")
    seconds = log.training_seconds()  # without the time spent on kNN
    return {"student": parts.student, "teacher": parts.teacher, "run_dir": run_dir,
            "steps": step, "seconds": seconds, "images_per_s": log.seen / max(seconds, 1e-9),
            "config": cfg, "knn": log.knn}


# --------------------------------------------------------------------- the stages of a run
def _open_run_folder(cfg: TrainConfig, run_dir: Path, device: torch.device, world: int) -> None:
    """Create the run folder, save the config there and print it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    fields = "\n".join(f"  {k} = {v!r}" for k, v in cfg.__dict__.items())
    procs = f" x {world} processes" if world > 1 else ""
    print(f"minidino: training on {device}{procs}; run folder {run_dir}; config:\n{fields}")


def _resume(parts: DINOParts, batches: DeviceBatches | LoaderBatches, resume_from: Path | None,
            state: dict[str, Any], run_dir: Path, world: int) -> tuple[int, list[dict]]:
    """Load a checkpoint's state into the run (nothing for a fresh run); return the step to
    start from and the collapse diagnostics of the epoch it stopped in. The logs lose the
    records after the checkpoint, so that no step is logged twice."""
    start, epoch_diags = 0, []
    if resume_from is not None:
        parts.student.load_state_dict(state["student"])
        parts.teacher.load_state_dict(state["teacher"])
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.loss_fn.load_state_dict(state["loss"])
        own = state["ranks"][rank()] if len(state.get("ranks", ())) == world else \
            (state if is_main() else None)  # another process count: ranks > 0 keep their seeds
        if own is not None:
            batches.load_state_dict(own["batches"])
            set_rng_state(own["rng"])
        start, epoch_diags = state["step"], state.get("epoch_diags", [])
        if is_main():
            print(f"minidino: resumed from {resume_from} at step {start}")
    if is_main():  # a fresh run starts new logs; a resumed one drops those after its checkpoint
        _truncate_jsonl(run_dir / "metrics.jsonl", "step", start)
        _truncate_jsonl(run_dir / "epochs.jsonl", "epoch", start // parts.steps_per_epoch)
    return start, epoch_diags


def _checkpoint(parts: DINOParts, batches: DeviceBatches | LoaderBatches, step: int,
                epoch_diags: list[dict], path: Path, writer: CheckpointWriter, final: bool
                ) -> None:
    """Write the run's state atomically (rank 0), with every process's data order and random
    state; every epoch, when max_steps ends the run, and when it is stopped. The `final` one
    (the run ends or stops) is on disk before any process goes on."""
    own = {"batches": batches.state_dict(), "rng": rng_state()}
    ranks = gather_objects(own)  # each process's own data order and random state
    if is_main():
        writer.save({"student": parts.student.state_dict(),
                     "teacher": parts.teacher.state_dict(),
                     "optimizer": parts.optimizer.state_dict(),
                     "loss": parts.loss_fn.state_dict(), **own, "step": step,
                     "config": parts.cfg.__dict__, "epoch_diags": epoch_diags,
                     **({"ranks": ranks} if len(ranks) > 1 else {})},
                    path, keep_previous=True)
        if final:
            writer.wait()
    barrier()  # every process is here: the checkpoint is written (final) or being written


def knn_scores(parts: DINOParts, train_split: DatasetSplit, test_split: DatasetSplit,
               cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Weighted kNN top-1 (k=20, T=0.07) of the teacher's and the student's backbones: the
    run's training images as the memory bank, `cfg.n_eval` held-out images as queries."""
    return {f"knn_{name}": knn_top1(model.backbone, train_split, test_split, cfg, device,
                                    progress=False)["top1"]
            for name, model in (("teacher", parts.teacher), ("student", parts.student))}


def _truncate_jsonl(path: Path, key: str, first_dropped: int) -> None:
    """Drop the records whose `key` (step or epoch) is >= `first_dropped`."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)[key] < first_dropped]
    path.write_text("".join(line + "\n" for line in keep))
