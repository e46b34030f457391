"""Multi-process training: two CPU processes (gloo) launched by torchrun through the CLI.

The run is stopped mid-epoch by a SIGTERM that only rank 1 receives, then resumed with
`--resume auto`. Checked: both ranks stop at the same step with one checkpoint, the resumed run
completes with every step logged once; DDP keeps both ranks' students and teachers identical;
the center is the mean over both ranks' teacher outputs; each rank trains on its own half of
every global batch; only rank 0 logs and writes checkpoints. A DataLoader worker of one rank
killed mid-epoch stops both ranks within seconds. The sharding rules are also checked without
processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_fault_tolerance import children, loader_workers, wait_for_steps  # same folder

from minidino.augment import small_image_config
from minidino.batches import DeviceBatches, _EpochSampler, epoch_permutation, rank_slice
from minidino.checkpoint import load_checkpoint
from minidino.distributed import init_distributed, per_rank_batch, world_size

# Run by every rank: the CLI, with train_step wrapped to check the center and the shards, to
# send SIGTERM to rank 1 alone during step STOP_AT, and to stall rank 1 before step HANG_AT.
RANK_SCRIPT = """
import os, signal, sys, time
import torch
import torch.distributed as dist
import minidino.train as train_module
from minidino.__main__ import main

out_dir, tag, rank = sys.argv[1], sys.argv[2], int(os.environ["RANK"])
stop_at = int(os.environ.get("STOP_AT", "-1"))
hang_at = int(os.environ.get("HANG_AT", "-1"))
real_step, seen = train_module.train_step, {"center_error": 0.0}

def checked_step(parts, crops, step):
    before = parts.loss_fn.center.clone()  # (1, K)
    if rank == 1 and step == stop_at:
        os.kill(os.getpid(), signal.SIGTERM)
    if rank == 1 and step == hang_at:
        time.sleep(8)  # stuck for longer than the collective timeout
    out = real_step(parts, crops, step)
    teacher_outs = [torch.empty_like(out["teacher_out"]) for _ in range(2)]
    dist.all_gather(teacher_outs, out["teacher_out"])  # each (2 * B/2, K)
    m = parts.cfg.center_momentum
    expected = m * before + (1 - m) * torch.cat(teacher_outs).mean(0, keepdim=True)  # (1, K)
    error = (parts.loss_fn.center - expected).abs().max().item()
    seen.update(center_error=max(seen["center_error"], error), parts=parts,
                local_batch=crops[0].shape[0], images=crops[0].sum().item())
    return out

train_module.train_step = checked_step
rc = main(["train", "--fast", "--no-progress", "--out-dir", out_dir, "--run-name", "ddp",
           "--n-train", "32", "--batch-size", "8", "--depth", "1", "--log-every", "1",
           *sys.argv[3:]])
parts = seen.pop("parts")
torch.save({"rc": rc, "student": parts.student.state_dict(),
            "teacher": parts.teacher.state_dict(), "center": parts.loss_fn.center, **seen},
           os.path.join(out_dir, f"{tag}{rank}.pt"))
"""


def torchrun_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run `args` in 2 CPU processes under torchrun."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
             "2", *args], {**env, "OMP_NUM_THREADS": "1"})


def torchrun(out, tag, *args, stop_at=-1, hang_at=-1, **env_changes):
    command, env = torchrun_command(str(out / "rank_script.py"), str(out), tag, *args)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**env, "STOP_AT": str(stop_at), "HANG_AT": str(hang_at),
                               **env_changes})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(out / f"{tag}{r}.pt", weights_only=False) for r in (0, 1)]
    return ranks, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    (out / "rank_script.py").write_text(RANK_SCRIPT)
    stopped, first_output = torchrun(out, "stopped", stop_at=2)  # 4 steps per epoch, 8 in all
    ranks, output = torchrun(out, "rank", "--resume", "auto")
    return out / "ddp", stopped, ranks, first_output + output


def test_a_sigterm_on_one_rank_stops_both_at_the_same_step_and_resume_auto_continues(ddp_run):
    run_dir, stopped, ranks, output = ddp_run
    assert [r["rc"] for r in stopped] == [130, 130]  # both stopped on purpose
    assert "stopped by SIGTERM at step 3" in output  # rank 1, which got the signal
    assert "stopped by another process at step 3" in output  # rank 0 followed
    assert "resumed from" in output and "at step 3" in output
    for k, v in stopped[0]["teacher"].items():
        assert torch.equal(v, stopped[1]["teacher"][k])


def test_two_processes_complete_and_keep_identical_weights(ddp_run):
    run_dir, _, ranks, output = ddp_run
    assert [r["rc"] for r in ranks] == [0, 0]
    assert output.count("minidino: training on cpu x 2 processes") == 2  # rank 0, each launch
    for name in ("student", "teacher"):
        for k, v in ranks[0][name].items():
            assert torch.equal(v, ranks[1][name][k]), f"{name}.{k} differs between the ranks"
    assert torch.equal(ranks[0]["center"], ranks[1]["center"])
    # rank 0's checkpoint holds the weights every rank ended with, and each rank's random state
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["step"] == 8 and len(state["ranks"]) == 2
    for k, v in state["teacher"].items():
        assert torch.equal(v, ranks[0]["teacher"][k])


def test_center_is_the_mean_over_both_ranks_teacher_outputs(ddp_run):
    _, stopped, ranks, _ = ddp_run
    errors = [r["center_error"] for r in stopped + ranks]
    assert max(errors) < 1e-6, errors
    assert ranks[0]["center"].abs().sum() > 0  # the center did move


def test_each_rank_trains_on_its_own_half_of_the_batch_and_rank0_logs_alone(ddp_run):
    run_dir, _, ranks, _ = ddp_run
    assert [r["local_batch"] for r in ranks] == [4, 4]  # a global batch of 8 over 2 processes
    assert ranks[0]["images"] != ranks[1]["images"]  # different images (and crops) per rank
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == list(range(8))  # each step once: 32 images / 8 per step x 2 epochs
    assert not list(run_dir.glob("*.tmp"))


def test_a_killed_dataloader_worker_of_one_rank_stops_both_ranks_within_seconds(tmp_path):
    command, env = torchrun_command(
        "-m", "minidino", "train", "--fast", "--no-progress", "--out-dir", str(tmp_path),
        "--run-name", "ddp", "--n-train", "32", "--batch-size", "8", "--depth", "1",
        "--log-every", "1", "--epochs", "4", "--data-mode", "loader", "--num-workers", "2")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    wait_for_steps(proc, tmp_path / "ddp", 6)  # 4 steps per epoch: inside epoch 1
    ranks = children(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(loader_workers(ranks[-1])[0], signal.SIGKILL)  # one worker of one rank
    killed_at = time.time()
    _, stderr = proc.communicate(timeout=30)
    assert time.time() - killed_at < 30 and proc.returncode != 0, stderr[-3000:]
    assert not any(Path(f"/proc/{r}").exists() for r in ranks)  # both ranks have ended
    died = [line for line in stderr.splitlines()
            if line.startswith("minidino: error: a data-loading worker died or failed (")]
    assert len(died) == 1 and "--num-workers 0" in died[0], stderr[-3000:]
    assert load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["step"] in (4, 8, 12)


def test_a_rank_that_hangs_is_given_up_after_the_collective_timeout(tmp_path):
    (tmp_path / "rank_script.py").write_text(RANK_SCRIPT)
    t0 = time.time()
    ranks, output = torchrun(tmp_path, "hang", hang_at=6, MINIDINO_DIST_TIMEOUT="2")
    assert [r["rc"] for r in ranks] == [2, 2]  # both failed (and the script then saved)
    assert "Timed out waiting 2000ms" in output  # rank 0, waiting for rank 1 in step 6
    assert time.time() - t0 < 120
    assert load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["step"] == 4  # epoch 0's, kept


def test_global_batch_split_into_disjoint_shards_covering_the_single_process_batch():
    order = epoch_permutation(40, seed=3, epoch=1)  # (40,)
    for it in range(5):
        halves = [rank_slice(order, it, 8, r, 2) for r in (0, 1)]  # each (4,)
        assert torch.equal(torch.cat(halves), rank_slice(order, it, 8, 0, 1))
    samplers = [_EpochSampler(40, 3, 8, r, 2) for r in (0, 1)]
    for s in samplers:
        s.epoch = 1
    drawn = [list(s) for s in samplers]
    assert [len(d) for d in drawn] == [len(s) for s in samplers] == [20, 20]
    assert not set(drawn[0]) & set(drawn[1])
    assert sorted(drawn[0] + drawn[1]) == sorted(order.tolist())  # 5 full batches of 8


def test_a_batch_that_cannot_be_split_over_the_processes_is_refused():
    assert per_rank_batch(8, 2) == 4
    with pytest.raises(ValueError, match="smaller than the number of processes"):
        per_rank_batch(2, 4)
    with pytest.raises(ValueError, match="split evenly over 4 processes; try 8 or 12"):
        per_rank_batch(10, 4)
    images = torch.zeros(16, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="smaller than the number of processes"):
        DeviceBatches(images, 2, small_image_config(32, n_local_crops=2), 0,
                      torch.device("cpu"), rank=0, world=4)


def test_without_torchrun_nothing_is_initialised(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    device, created = init_distributed(torch.device("cpu"))
    assert device == torch.device("cpu") and not created and world_size() == 1


def test_a_two_process_checkpoint_resumes_in_one_process(ddp_run, tmp_path):
    from dataclasses import replace

    from minidino.config import fast_config
    from minidino.presets import get_preset
    from minidino.train import train

    run_dir, _, _, _ = ddp_run
    shutil.copytree(run_dir, tmp_path / "ddp")
    (tmp_path / "ddp" / "checkpoint.pt").unlink()  # keep the one of epoch 0, at step 4
    cfg = replace(fast_config(get_preset("cifar10")), n_train=32, batch_size=8, depth=1,
                  log_every=1, out_dir=str(tmp_path), run_name="ddp")
    result = train(cfg, resume="auto", progress=False)
    assert result["steps"] == 8
    steps = [json.loads(line)["step"] for line in (tmp_path / "ddp" / "metrics.jsonl").open()]
    assert steps == list(range(8))
