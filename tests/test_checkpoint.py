"""Checkpoints: atomic writes survive a kill mid-write; corrupt files are reported clearly."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from minidino.checkpoint import (
    CheckpointWriter,
    load_backbone_weights,
    load_checkpoint,
    previous_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from minidino.vit import vit_nano

WRITER = """
import sys, torch
from minidino.checkpoint import save_checkpoint
print("writing", flush=True)
save_checkpoint({"step": 2, "big": torch.randn(150_000_000)}, sys.argv[1])  # about 600 MB
"""


def test_a_write_killed_halfway_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "weights": torch.arange(5.0)}, path)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    deadline = time.time() + 60
    while not list(tmp_path.glob("checkpoint.pt.*.tmp")) and time.time() < deadline:
        time.sleep(0.01)  # wait until the temporary file exists, i.e. the write has begun
    proc.kill()
    proc.wait()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.arange(5.0))


def test_a_truncated_checkpoint_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "weights": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip_reproduces_draws():
    state = rng_state()
    first = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def test_backbone_from_another_architecture_lists_the_mismatch():
    small, wide = vit_nano(depth=1), vit_nano(depth=2, embed_dim=192, num_heads=3)
    with pytest.raises(ValueError, match="blocks.1") as info:
        load_backbone_weights(small, wide.state_dict())
    assert "shape mismatches" in str(info.value)
    assert "blocks.0.attn.qkv.weight: checkpoint (576, 192) vs model (288, 96)" in str(info.value)
    # the student of a training checkpoint (backbone + head) loads into a bare backbone
    prefixed = {f"backbone.{k}": v for k, v in small.state_dict().items()}
    prefixed["head.mlp.0.weight"] = torch.zeros(1)
    other = vit_nano(depth=1)
    load_backbone_weights(other, prefixed)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(),
                                                  small.state_dict().values(), strict=True))


# ------------------------------------------------------------- writing in the background
def test_a_background_save_writes_the_state_as_it_was_when_saved(tmp_path):
    weights = torch.arange(6.0)
    state = {"step": 3, "model": {"w": weights}, "rng": (torch.tensor([1, 2]), [weights])}
    with CheckpointWriter(background=True) as writer:
        writer.save(state, tmp_path / "checkpoint.pt")
        weights.mul_(-1)  # training goes on changing the live tensors at once
        state["step"] = 4
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")  # on disk when the block ends
    assert loaded["step"] == 3
    assert torch.equal(loaded["model"]["w"], torch.arange(6.0))
    assert torch.equal(loaded["rng"][0], torch.tensor([1, 2]))
    assert torch.equal(loaded["rng"][1][0], torch.arange(6.0))


def test_background_saves_keep_their_order_and_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    writer = CheckpointWriter(background=True)
    for step in range(3):
        writer.save({"step": step, "w": torch.full((1000,), float(step))}, path,
                    keep_previous=True)
    writer.wait()
    assert load_checkpoint(path)["step"] == 2
    assert load_checkpoint(previous_path(path))["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-previous.pt",
                                                          "checkpoint.pt"]


def test_a_failed_background_write_is_raised_by_wait_and_the_writer_goes_on(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    writer = CheckpointWriter(background=True)
    writer.save({"step": 1}, tmp_path / "a_file" / "checkpoint.pt")
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # the error is raised once
    writer.save({"step": 2}, tmp_path / "checkpoint.pt")
    writer.wait()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
