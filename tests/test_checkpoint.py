"""Checkpoints: atomic writes survive a kill mid-write; corrupt files are reported clearly."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from minidino.checkpoint import (
    load_backbone_weights,
    load_checkpoint,
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
