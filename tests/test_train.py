"""The training loop: one full step, loss going down, exact resume, the NaN guard, the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

import minidino.train as train_module
from minidino import step as step_module
from minidino.augment import BatchedMultiCrop, small_image_config
from minidino.checkpoint import CheckpointWriter, load_checkpoint
from minidino.config import TrainConfig, fast_config
from minidino.head import DINOHead, MultiCropWrapper
from minidino.loss import DINOLoss
from minidino.presets import get_preset
from minidino.teacher import build_teacher, ema_update_
from minidino.train import train
from minidino.training_log import NonFiniteLossError
from minidino.vit import vit_nano


def tiny_config(tmp_path, **changes) -> TrainConfig:
    cfg = replace(fast_config(get_preset("cpu-demo")), out_dir=str(tmp_path), log_every=2)
    return replace(cfg, **changes)


def losses(run_dir) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def test_one_full_step_on_random_images():
    torch.manual_seed(0)
    crops_cfg = small_image_config(32, n_local_crops=2)
    student = MultiCropWrapper(vit_nano(depth=1), DINOHead(96, 64, hidden_dim=32,
                                                            bottleneck_dim=16))
    teacher = build_teacher(student)
    loss_fn = DINOLoss(out_dim=64, n_crops=crops_cfg.n_crops)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)

    crops = BatchedMultiCrop(crops_cfg)(images)
    assert [tuple(c.shape) for c in crops] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 2
    teacher_out = teacher(crops[:2])  # (2B, K)
    student_out = student(crops)  # (4B, K)
    assert teacher_out.shape == (16, 64) and student_out.shape == (32, 64)
    loss = loss_fn(student_out, teacher_out, teacher_temp=0.04)
    before_s = [p.detach().clone() for p in student.parameters()]
    before_t = [p.detach().clone() for p in teacher.parameters()]
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    changed = [not torch.equal(a, p) for a, p in zip(before_s, student.parameters(), strict=True)]
    assert sum(changed) > len(changed) // 2  # the optimizer moved the student
    assert all(torch.equal(a, p) for a, p in zip(before_t, teacher.parameters(), strict=True))
    ema_update_(teacher, student, momentum=0.9)
    for old, t, s in zip(before_t, teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * old + 0.1 * s)  # only the EMA moved the teacher


@pytest.mark.parametrize("data_mode", ["device", "loader"])
def test_one_epoch_of_cpu_demo_lowers_the_loss_against_a_fixed_teacher(tmp_path, data_mode):
    # The DINO loss chases moving targets (EMA teacher, center), so early in training it can rise
    # while the student learns. Freeze both (teacher_momentum=1, center_momentum=1): then the
    # loss measures only how well the student predicts the teacher, and an epoch must lower it,
    # whether the crops come from the device path or from a DataLoader running per-image crops.
    cfg = replace(get_preset("cpu-demo"), out_dir=str(tmp_path), n_train=1280, epochs=1,
                  warmup_epochs=0, teacher_momentum=1.0, center_momentum=1.0, log_every=5,
                  data_mode=data_mode, num_workers=0)
    result = train(cfg, progress=False)
    values = list(losses(result["run_dir"]).values())
    assert len(values) == 20
    assert sum(values[-5:]) / 5 < sum(values[:5]) / 5 - 0.1
    for a, b in zip(result["teacher"].parameters(), build_student_like(cfg).parameters(),
                    strict=True):
        assert torch.equal(a, b)  # the teacher really stayed at its initial weights


def build_student_like(cfg: TrainConfig):
    from minidino.step import build_student

    torch.manual_seed(cfg.seed)
    return build_student(cfg)


@pytest.mark.parametrize("stop_at", [4, 6])  # the end of epoch 1, and mid-epoch 2
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, stop_at):
    cfg = tiny_config(tmp_path / "full", epochs=3, drop_path=0.1)
    full = losses(train(cfg, progress=False)["run_dir"])
    assert len(full) == 12
    cut = replace(cfg, out_dir=str(tmp_path / "cut"), max_steps=stop_at)
    run_dir = train(cut, progress=False)["run_dir"]
    resumed = train(replace(cut, max_steps=None), resume=run_dir / "checkpoint.pt",
                    progress=False)
    assert resumed["steps"] == 12
    assert losses(run_dir) == full  # same steps, same losses, none lost or repeated


def test_a_non_finite_loss_stops_the_run_and_names_the_step(tmp_path, monkeypatch):
    class BreaksAtStep3(DINOLoss):
        calls = 0

        def forward(self, student_out, teacher_out, teacher_temp):
            BreaksAtStep3.calls += 1
            loss = super().forward(student_out, teacher_out, teacher_temp)
            return loss * float("nan") if BreaksAtStep3.calls == 4 else loss

    monkeypatch.setattr(step_module, "DINOLoss", BreaksAtStep3)
    cfg = tiny_config(tmp_path, epochs=2)  # 4 steps per epoch: step 3 is in epoch 0
    with pytest.raises(NonFiniteLossError, match="at step 3.*no checkpoint was written yet"):
        train(cfg, progress=False)
    BreaksAtStep3.calls = -4  # now it breaks at step 7, after epoch 0's checkpoint
    with pytest.raises(NonFiniteLossError, match="at step 7.*last good checkpoint"):
        train(cfg, progress=False)


def test_cli_train_writes_config_metrics_and_checkpoint(tmp_path):
    from minidino.__main__ import main

    assert main(["train", "--fast", "--no-progress", "--out-dir", str(tmp_path),
                 "--run-name", "cli", "--epochs", "1"]) == 0
    run_dir = tmp_path / "cli"
    assert TrainConfig.load(run_dir / "config.json").epochs == 1
    assert (run_dir / "checkpoint.pt").exists() and losses(run_dir)
    n_steps = len(losses(run_dir))
    assert main(["train", "--fast", "--no-progress", "--out-dir", str(tmp_path),
                 "--run-name", "cli", "--epochs", "1"]) == 0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == n_steps  # a fresh log
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0]
    assert 0 <= epochs[0]["teacher_entropy"] <= math.log(TrainConfig.load(
        run_dir / "config.json").out_dim) + 1e-4
    assert main(["train", "--fast", "--teacher-temp", "-1"]) == 2  # a clear error, no traceback


def test_checkpoints_written_in_the_background_equal_those_written_in_place(tmp_path,
                                                                             monkeypatch):
    """On a GPU, training writes its checkpoints from a thread (minidino.checkpoint
    .CheckpointWriter); here the CPU is made to do the same, and the files must not differ."""
    cfg = tiny_config(tmp_path / "in_place", epochs=3)
    in_place = train(cfg, progress=False)["run_dir"]
    saved = []

    class InTheBackground(CheckpointWriter):
        def __init__(self, background: bool) -> None:
            super().__init__(background=True)

        def save(self, state, path, keep_previous=False) -> None:
            saved.append(state["step"])
            super().save(state, path, keep_previous)

    monkeypatch.setattr(train_module, "CheckpointWriter", InTheBackground)
    background = train(replace(cfg, out_dir=str(tmp_path / "background")),
                       progress=False)["run_dir"]
    assert saved == [4, 8, 12]  # one per epoch, all of them from the thread
    assert losses(background) == losses(in_place)
    for name in ("checkpoint.pt", "checkpoint-previous.pt"):
        a, b = load_checkpoint(in_place / name), load_checkpoint(background / name)
        assert a["step"] == b["step"] and a["epoch_diags"] == b["epoch_diags"]
        for key in ("student", "teacher"):
            assert a[key].keys() == b[key].keys()
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (name, key)
        assert torch.equal(a["loss"]["center"], b["loss"]["center"])
