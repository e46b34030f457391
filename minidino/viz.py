"""Figures: training and collapse curves, and the attention maps of the CLS token per head."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch.nn.functional as F
from torch import Tensor

from minidino.attention import cls_attention_maps
from minidino.vit import VisionTransformer


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_training_curves(metrics_path: str | Path, out_dim: int) -> plt.Figure:
    """Loss, teacher entropy (against its bounds 0 and log K) and KL(teacher || student); and,
    when the run scored kNN during training (`knn_every`), the teacher's and the student's kNN
    top-1 per epoch, read from epochs.jsonl beside `metrics_path`."""
    records = read_jsonl(metrics_path)
    diag = [r for r in records if "teacher_entropy" in r]
    knn = knn_records(Path(metrics_path).parent)
    fig, axes = plt.subplots(1, 4 if knn else 3, figsize=(17 if knn else 13, 3.4))
    axes[0].plot([r["step"] for r in records], [r["loss"] for r in records], lw=0.8)
    axes[0].set(title="DINO loss", xlabel="step", ylabel="cross-entropy (nats)")
    steps = [r["step"] for r in diag]
    axes[1].plot(steps, [r["teacher_entropy"] for r in diag], label="H(teacher)")
    axes[1].axhline(math.log(out_dim), ls="--", c="gray", label="log K (uniform)")
    axes[1].axhline(0, ls=":", c="gray", label="0 (one prototype)")
    axes[1].set(title="teacher entropy", xlabel="step", ylabel="nats")
    axes[1].legend(fontsize=8)
    axes[2].plot(steps, [r["kl_teacher_student"] for r in diag])
    axes[2].set(title="KL(teacher || student)", xlabel="step", ylabel="nats")
    if knn:
        draw_knn_curves(axes[3], knn)
    fig.suptitle("Training curves: the loss; the teacher's entropy (0 = one prototype, log K = "
                 "uniform); KL(teacher || student)" + ("; kNN accuracy" if knn else ""))
    fig.tight_layout()
    return fig


def knn_records(run_dir: str | Path) -> list[dict]:
    """The epochs of a run that were scored by kNN (`knn_every`), from its epochs.jsonl."""
    path = Path(run_dir) / "epochs.jsonl"
    return [r for r in read_jsonl(path) if "knn_teacher" in r] if path.exists() else []


def draw_knn_curves(ax: plt.Axes, knn: list[dict]) -> None:
    """The teacher's and the student's kNN top-1 against the epochs trained (DINO Fig. 6, left)."""
    epochs = [r["epoch"] + 1 for r in knn]  # scored after that many epochs
    for who, style in (("teacher", "o-"), ("student", "s--")):
        ax.plot(epochs, [r[f"knn_{who}"] for r in knn], style, label=who)
    ax.set(title="kNN top-1 on held-out images", xlabel="epochs trained", ylabel="% correct")
    ax.legend(fontsize=8)


def plot_attention_maps(backbone: VisionTransformer, images: Tensor, n_images: int = 6
                        ) -> plt.Figure:
    """One row per image: the image, then the CLS attention map of each head (upsampled)."""
    images = images[:n_images]
    maps = cls_attention_maps(backbone, images)  # (B, h, gh, gw)
    maps = F.interpolate(maps, size=images.shape[-2:], mode="nearest")  # (B, h, H, W)
    B, h = maps.shape[:2]
    fig, axes = plt.subplots(B, h + 1, figsize=(1.6 * (h + 1), 1.6 * B), squeeze=False)
    for i in range(B):
        axes[i, 0].imshow(images[i].permute(1, 2, 0).cpu().numpy())
        for j in range(h):
            axes[i, j + 1].imshow(maps[i, j].numpy(), cmap="inferno")
        if i == 0:
            axes[0, 0].set_title("image", fontsize=9)
            for j in range(h):
                axes[0, j + 1].set_title(f"head {j}", fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle("Last-layer attention of the CLS token, per head", fontsize=10)
    fig.tight_layout()
    return fig


