"""The main job end to end in fast mode, and `eval` on the checkpoint it leaves."""

from __future__ import annotations

from dataclasses import replace

import torch

from minidino.__main__ import main
from minidino.config import fast_config
from minidino.demo import run_demo
from minidino.held_out import evaluate_checkpoint
from minidino.presets import get_preset
from minidino.pretrained import export_backbone, load_pretrained


def test_demo_trains_evaluates_and_draws(tmp_path, capsys):
    cfg = replace(fast_config(get_preset("cpu-demo")), out_dir=str(tmp_path))
    result = run_demo(cfg, progress=False)
    printed = capsys.readouterr().out
    assert "random initialisation" in printed and "trained teacher" in printed
    for which in ("trained", "random_init"):
        assert 0 <= result[which]["top1"] <= result[which]["top5"] <= 100
    assert result["gain"] == result["trained"]["top1"] - result["random_init"]["top1"]
    for name in ("curves.png", "attention.png", "metrics.jsonl", "config.json", "checkpoint.pt"):
        assert (result["run_dir"] / name).stat().st_size > 0

    # the checkpoint's teacher gives the same kNN numbers as the run reported
    again = evaluate_checkpoint(str(result["run_dir"] / "checkpoint.pt"))
    assert again["knn"] == result["trained"]

    # the exported backbone is the trained teacher's
    path = export_backbone(result["run_dir"] / "checkpoint.pt", tmp_path / "teacher.pt")
    backbone = load_pretrained(path)
    teacher = torch.load(result["run_dir"] / "checkpoint.pt", weights_only=False)["teacher"]
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, teacher[f"backbone.{name}"])
    assert not backbone.training


def test_cli_demo_and_eval_exit_cleanly(tmp_path):
    assert main(["demo", "--fast", "--no-progress", "--out-dir", str(tmp_path)]) == 0
    checkpoint = next(tmp_path.glob("*/checkpoint.pt"))
    assert main(["eval", str(checkpoint), "--linear"]) == 0
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2


def test_committed_pretrained_backbone_loads_and_beats_random_init():
    from minidino.data import load_dataset
    from minidino.evaluate import extract_features, knn_accuracy
    from minidino.step import build_backbone

    trained = load_pretrained()
    cfg = get_preset("cpu-demo")
    torch.manual_seed(cfg.seed)
    random_init = build_backbone(cfg).eval()
    bank = load_dataset("shapes", split="train", n_images=2000)
    queries = load_dataset("shapes", split="test", n_images=500)
    top1 = {}
    for name, backbone in (("trained", trained), ("random", random_init)):
        f_bank = extract_features(backbone, bank.images, progress=False)
        f_query = extract_features(backbone, queries.images, progress=False)
        top1[name] = knn_accuracy(f_bank, bank.labels, f_query, queries.labels, 10)["top1"]
    assert top1["trained"] > top1["random"] + 5, top1


def test_knn_top1_loads_image_datasets_quietly_when_asked(capsys):
    # a split whose images are not yet in memory (as for a folder dataset) is loaded on demand;
    # with progress=False that happens without a progress bar
    from minidino.data import DatasetSplit, TensorImageDataset
    from minidino.held_out import knn_top1

    cfg = replace(get_preset("cpu-demo"), n_eval=None)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)  # (N, 3, H, W)
    labels = torch.arange(8) % 2  # (N,)

    def split() -> DatasetSplit:
        return DatasetSplit(None, labels, ["a", "b"], TensorImageDataset(images, labels))

    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    quiet = knn_top1(backbone, split(), split(), cfg, torch.device("cpu"), k=3, progress=False)
    assert "loading images" not in capsys.readouterr().err
    loud = knn_top1(backbone, split(), split(), cfg, torch.device("cpu"), k=3)
    assert "loading images" in capsys.readouterr().err
    # every query is also in the bank, so its own image votes for the right class
    assert quiet == loud and quiet["top1"] > 50


def test_random_init_like_has_the_pretrained_architecture_and_the_demo_baseline_weights():
    from minidino.pretrained import random_init_like
    from minidino.step import build_backbone

    trained, random_init = load_pretrained(), random_init_like()
    assert not random_init.training
    trained_state, random_state = trained.state_dict(), random_init.state_dict()
    assert trained_state.keys() == random_state.keys()
    for name, value in trained_state.items():
        assert value.shape == random_state[name].shape, name
    assert not torch.equal(trained_state["blocks.0.attn.qkv.weight"],
                           random_state["blocks.0.attn.qkv.weight"])
    # seed 0 gives the very network that `run_demo` scores as its random initialisation
    torch.manual_seed(0)
    demo_baseline = build_backbone(get_preset("cpu-demo")).state_dict()
    for name, value in random_state.items():
        assert torch.equal(value, demo_baseline[name]), name
