"""Faults during training: SIGTERM and SIGINT mid-epoch, a truncated checkpoint, `--resume auto`,
a DataLoader worker killed mid-epoch.

Every interrupted run is resumed and compared with one uninterrupted run of the same config: the
metrics must hold each step once, with the same losses, and the final teacher the same weights.
(After a killed worker the augmentations of the DataLoader path are drawn anew, so there only
"each step once" is checked.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import minidino.train as train_module
from minidino.checkpoint import find_resume_checkpoint, load_checkpoint, save_checkpoint
from minidino.config import fast_config
from minidino.data import load_splits
from minidino.presets import get_preset
from minidino.train import train

# 64 images in batches of 8: 8 steps per epoch, 16 in all; a one-block model keeps steps quick
ARGS = ["--n-train", "64", "--batch-size", "8", "--depth", "1", "--epochs", "2",
        "--log-every", "1"]


def config(out_dir, run_name):
    return replace(fast_config(get_preset("cifar10")), n_train=64, batch_size=8, depth=1,
                   epochs=2, log_every=1, out_dir=str(out_dir), run_name=run_name)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def wait_for_steps(proc: subprocess.Popen, run_dir: Path, n: int, seconds: float = 240) -> None:
    """Wait until the running `proc` has logged `n` steps to run_dir/metrics.jsonl."""
    log, deadline = run_dir / "metrics.jsonl", time.time() + seconds
    while time.time() < deadline and proc.poll() is None and (
            not log.exists() or len(log.read_text().splitlines()) < n):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"


def children(pid: int) -> list[int]:
    """The child processes of process `pid`, read from /proc (Linux)."""
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def loader_workers(pid: int) -> list[int]:
    """The DataLoader workers of process `pid`: its children forked from it, which run the same
    command line (unlike, say, a multiprocessing resource tracker)."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [c for c in children(pid) if Path(f"/proc/{c}/cmdline").read_bytes() == command]


@pytest.fixture(scope="module")
def split():
    return load_splits(config("unused", "unused"))[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, split):
    """The uninterrupted run: its folder and its final teacher."""
    result = train(config(tmp_path_factory.mktemp("ref"), "ref"), progress=False,
                   train_split=split)
    return result["run_dir"], result["teacher"].state_dict()


def assert_continues_reference(run_dir, reference, result) -> None:
    ref_dir, ref_teacher = reference
    records = metrics(run_dir)
    assert [r["step"] for r in records] == list(range(16))  # no step lost or repeated
    assert [r["loss"] for r in records] == [r["loss"] for r in metrics(ref_dir)]
    assert result["steps"] == 16
    for k, v in result["teacher"].state_dict().items():
        assert torch.equal(v, ref_teacher[k]), k
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert epochs == [json.loads(line) for line in (ref_dir / "epochs.jsonl").open()]


def test_sigterm_mid_epoch_writes_a_checkpoint_and_resume_auto_loses_no_step(
        tmp_path, reference, split, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "minidino", "train", "--fast", "--no-progress", "--out-dir",
         str(tmp_path), "--run-name", "kill", *ARGS], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    wait_for_steps(proc, tmp_path / "kill", 2)  # the run is inside epoch 0
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr  # stopped on purpose, not crashed
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr
    stopped_at = load_checkpoint(tmp_path / "kill" / "checkpoint.pt")["step"]
    assert 2 <= stopped_at < 8  # mid-epoch 0: the checkpoint was written by the signal
    assert [r["step"] for r in metrics(tmp_path / "kill")] == list(range(stopped_at))

    result = train(config(tmp_path, "kill"), resume="auto", progress=False, train_split=split)
    assert f"at step {stopped_at}" in capsys.readouterr().out
    assert_continues_reference(tmp_path / "kill", reference, result)


def test_truncated_checkpoint_falls_back_to_the_previous_one_and_sigint_stops_cleanly(
        tmp_path, reference, split, monkeypatch, capsys):
    run_dir = tmp_path / "ref"
    shutil.copytree(reference[0], run_dir)  # finished: checkpoint.pt at 16, previous at 8
    data = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    real_step = train_module.train_step

    def ctrl_c_at_step_10(parts, crops, step):
        if step == 10:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the step still completes
        return real_step(parts, crops, step)

    monkeypatch.setattr(train_module, "train_step", ctrl_c_at_step_10)
    with pytest.raises(KeyboardInterrupt, match="stopped by SIGINT at step 11"):
        train(config(tmp_path, "ref"), resume="auto", progress=False, train_split=split)
    captured = capsys.readouterr()
    assert "checkpoint.pt' is corrupt or truncated" in captured.err
    assert "resumed from" in captured.out and "checkpoint-previous.pt at step 8" in captured.out
    assert (run_dir / "checkpoint.pt.damaged").exists()  # kept for a look, out of the way
    assert load_checkpoint(run_dir / "checkpoint-previous.pt")["step"] == 8  # still there
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 11

    monkeypatch.setattr(train_module, "train_step", real_step)
    result = train(config(tmp_path, "ref"), resume="auto", progress=False, train_split=split)
    assert_continues_reference(run_dir, reference, result)


def test_resume_auto_without_a_checkpoint_starts_fresh(tmp_path, split, capsys):
    cfg = replace(config(tmp_path, "new"), max_steps=1)
    assert train(cfg, resume="auto", progress=False, train_split=split)["steps"] == 1
    assert "no checkpoint in" in capsys.readouterr().out
    assert [r["step"] for r in metrics(tmp_path / "new")] == [0]


def test_find_resume_checkpoint_skips_damaged_files_and_refuses_when_none_is_left(tmp_path):
    good = {"student": {}, "teacher": {}, "optimizer": {}, "loss": {}, "batches": {}, "rng": {},
            "step": 4, "config": {}}
    save_checkpoint(good, tmp_path / "checkpoint.pt")
    save_checkpoint({**good, "step": 8}, tmp_path / "checkpoint.pt", keep_previous=True)
    assert load_checkpoint(tmp_path / "checkpoint-previous.pt")["step"] == 4
    (tmp_path / "checkpoint.pt.123.tmp").write_bytes(b"half")  # a write cut short by a kill
    path, state = find_resume_checkpoint(tmp_path)
    assert path == tmp_path / "checkpoint.pt" and state["step"] == 8
    assert not list(tmp_path.glob("*.tmp"))

    save_checkpoint({"step": 9}, tmp_path / "checkpoint.pt")  # loads, but not a training one
    path, state = find_resume_checkpoint(tmp_path)
    assert path == tmp_path / "checkpoint-previous.pt" and state["step"] == 4

    (tmp_path / "checkpoint-previous.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="no usable checkpoint.*Delete the"):
        find_resume_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="earlier attempt"):  # no silent fresh start later
        find_resume_checkpoint(tmp_path)
    assert find_resume_checkpoint(tmp_path / "empty") == (None, {})


def test_cli_resume_auto_and_a_missing_checkpoint(tmp_path):
    from minidino.__main__ import main

    assert main(["train", "--fast", "--no-progress", "--out-dir", str(tmp_path),
                 "--resume", str(tmp_path / "nothing.pt")]) == 2


def test_a_killed_dataloader_worker_stops_the_run_in_one_line_and_resume_auto_finishes(
        tmp_path, split, one_thread):
    """As the kernel's out-of-memory killer would: SIGKILL to a worker in the middle of epoch 1.
    The run ends within seconds, with one line, keeping the checkpoint of epoch 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    loader = ["--data-mode", "loader", "--num-workers", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "minidino", "train", "--fast", "--no-progress", "--out-dir",
         str(tmp_path), "--run-name", "worker", *ARGS, "--epochs", "4", *loader], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "worker"
    wait_for_steps(proc, run_dir, 10)  # 8 steps per epoch: inside epoch 1
    workers = loader_workers(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)
    killed_at = time.time()
    _, stderr = proc.communicate(timeout=30)
    assert time.time() - killed_at < 30 and proc.returncode == 2, stderr
    assert len(stderr.splitlines()) == 1, stderr  # one line, no traceback
    assert stderr.startswith("minidino: error: a data-loading worker died or failed (")
    for advice in ("memory", "/dev/shm", "--num-workers 0", "--data-mode device", "--resume auto"):
        assert advice in stderr
    state = load_checkpoint(run_dir / "checkpoint.pt")  # of the last completed epoch
    logged = [r["step"] for r in metrics(run_dir)]
    assert state["step"] in (8, 16, 24) and state["step"] <= len(logged) < 32, logged
    assert logged == list(range(len(logged)))

    cfg = replace(config(tmp_path, "worker"), epochs=4, data_mode="loader", num_workers=0)
    result = train(cfg, resume="auto", progress=False, train_split=split)  # as the line says
    assert result["steps"] == 32
    assert [r["step"] for r in metrics(run_dir)] == list(range(32))  # each step once
