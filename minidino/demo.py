"""The main job: train a DINO ViT without labels, then show in numbers and pictures what it learned.

`python -m minidino demo` (or `make demo`) trains the `cpu-demo` preset on the built-in shapes
dataset, then measures kNN top-1 on held-out images for the trained teacher and for the very same
architecture at its random initialisation, and draws the training curves and attention maps.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from minidino.checkpoint import load_backbone_weights, load_checkpoint
from minidino.config import TrainConfig
from minidino.evaluate import eval_features, knn_accuracy, knn_top1, linear_probe
from minidino.step import build_backbone
from minidino.train import load_splits, pick_device, train
from minidino.viz import plot_attention_maps, plot_training_curves


def run_demo(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train `cfg`, evaluate trained vs random initialisation, write figures; return the numbers."""
    start = time.perf_counter()
    train_split, test_split = load_splits(cfg)
    result = train(cfg, progress=progress, train_split=train_split)
    device = pick_device(cfg.device)

    random_backbone = initial_backbone(cfg).to(device)
    teacher_backbone = result["teacher"].backbone
    trained = knn_top1(teacher_backbone, train_split, test_split, cfg, device, progress=progress)
    random_init = knn_top1(random_backbone, train_split, test_split, cfg, device,
                           progress=progress)

    run_dir = result["run_dir"]
    curves = plot_training_curves(run_dir / "metrics.jsonl", cfg.out_dim)
    curves.savefig(run_dir / "curves.png", dpi=120)
    images = test_split.images[:6]
    attention = plot_attention_maps(teacher_backbone, images)
    attention.savefig(run_dir / "attention.png", dpi=120)
    seconds = time.perf_counter() - start

    gain = trained["top1"] - random_init["top1"]
    print(f"\nminidino demo: {result['steps']} steps in {result['seconds']:.0f} s "
          f"({result['images_per_s']:.0f} images/s), {seconds:.0f} s in all")
    print(f"{'kNN on held-out images (k=20)':<36}{'top-1':>8}{'top-5':>8}")
    print(f"{'random initialisation':<36}{random_init['top1']:>7.1f}%{random_init['top5']:>7.1f}%")
    print(f"{'trained teacher':<36}{trained['top1']:>7.1f}%{trained['top5']:>7.1f}%")
    print(f"gain: {gain:+.1f} points of top-1")
    print(f"figures: {run_dir / 'curves.png'}, {run_dir / 'attention.png'}")
    return {"trained": trained, "random_init": random_init, "gain": gain, "seconds": seconds,
            "train_seconds": result["seconds"], "steps": result["steps"], "run_dir": run_dir}


def _backbone_from(path: str | Path, key: str) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """Rebuild the backbone stored under `key` of a file that also holds its config."""
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"])
    backbone = build_backbone(cfg)
    load_backbone_weights(backbone, state[key])
    return backbone, cfg, state


def evaluate_checkpoint(path: str, which: str = "teacher", linear: bool = False, k: int = 20
                        ) -> dict[str, dict[str, float]]:
    """kNN (and optionally a linear probe) of the backbone saved in a training checkpoint."""
    backbone, cfg, _ = _backbone_from(path, which)
    device = pick_device(cfg.device)
    backbone = backbone.to(device)
    train_split, test_split = load_splits(cfg)
    features = eval_features(backbone, train_split, test_split, cfg, device)  # computed once
    n_classes = len(train_split.classes)
    results = {"knn": knn_accuracy(*features, n_classes=n_classes, k=k)}
    if linear:
        results["linear"] = linear_probe(*features, n_classes=n_classes)
    for name, r in results.items():
        print(f"{which} {name}: top-1 {r['top1']:.1f}%, top-5 {r['top5']:.1f}%")
    return results


def export_backbone(checkpoint: str | Path, out: str | Path, which: str = "teacher") -> Path:
    """Save one backbone of a training checkpoint with its config: a small file to share."""
    backbone, _, state = _backbone_from(checkpoint, which)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": state["config"], "backbone": backbone.state_dict(), "which": which,
                "step": state["step"]}, out)
    return out


PRETRAINED = Path(__file__).parent / "assets" / "cpu-demo-teacher.pt"


def load_pretrained(path: str | Path = PRETRAINED) -> torch.nn.Module:
    """A backbone saved by `export_backbone`, in eval mode, on the CPU.

    The default is the teacher of a `cpu-demo` run that ships with the package (0.9 MB), so the
    lessons can show trained features and attention maps without training first.
    """
    return _backbone_from(path, "backbone")[0].eval()


def initial_backbone(cfg: TrainConfig) -> torch.nn.Module:
    """`cfg`'s backbone with the initial weights a run of `cfg` starts from: `train` seeds torch
    with `cfg.seed` and builds the backbone first, and so does this."""
    torch.manual_seed(cfg.seed)
    return build_backbone(cfg)


def random_init_like(path: str | Path = PRETRAINED, seed: int = 0) -> torch.nn.Module:
    """The architecture of the backbone saved at `path`, randomly initialised from `seed`, in
    eval mode on the CPU: the baseline the lessons compare a trained backbone with."""
    cfg = TrainConfig.from_dict(load_checkpoint(path)["config"])
    return initial_backbone(replace(cfg, seed=seed)).eval()
