"""Named starting points for a run: `python -m minidino train --preset cifar10`.

Each preset is a full `TrainConfig`; the command line overrides any field of it. The DINO presets
come first; `ibot-cifar10` adds iBOT's masked patch prediction to `cifar10`, and `dinov2-cifar10`
adds the rest of DINOv2's recipe on top (KoLeo, Sinkhorn-Knopp centering, LayerScale) and the
registers of its follow-up paper (Darcet et al., 2023). Import them from here:
`from minidino.presets import PRESETS, get_preset`.
"""

from __future__ import annotations

from dataclasses import replace

from minidino.config import TrainConfig

# One GPU: ViT-Tiny/4 on CIFAR-10 with 2x32 + 6x16 crops.
_CIFAR10 = TrainConfig(
    dataset="cifar10", arch="vit_tiny", patch_size=4, out_dim=4096, global_size=32,
    local_size=16, n_local_crops=6, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
    teacher_temp=0.04, epochs=100, batch_size=512, lr=5e-4,
    warmup_epochs=10, run_name="cifar10",
)

# Two CPU cores, about five minutes: a narrow ViT (D=64, 4 heads of 16) with few tokens and a
# small K. Three choices matter most (docs/benchmarks.md, measured over seeds): width 64
# instead of 96, which buys 14 epochs instead of 10 in about the same time; a peak learning
# rate of 2e-3; and a center that follows the last few batches (momentum 0.2, not 0.9), since
# with so few steps a slow center lets the teacher sit on a few prototypes per batch.
_CPU_DEMO = TrainConfig(
    dataset="shapes", arch="vit_nano", patch_size=8, embed_dim=64, num_heads=4,
    drop_path=0.0, out_dim=1024, hidden_dim=512, bottleneck_dim=128, global_size=32,
    local_size=16, n_local_crops=4, global_scale=(0.5, 1.0), local_scale=(0.2, 0.5),
    blur_sigma=(0.1, 0.5), teacher_temp=0.02, warmup_teacher_temp=0.02, center_momentum=0.2,
    teacher_momentum=0.97, epochs=14, batch_size=64, lr=8e-3, warmup_epochs=1, min_lr=1e-5,
    weight_decay_end=0.04, freeze_last_layer=0, run_name="cpu-demo", n_eval=1000,
    device="cpu",
)

PRESETS: dict[str, TrainConfig] = {
    "cpu-demo": _CPU_DEMO,
    # The built-in scenes on two CPU cores: `cpu-demo` on the plain style plus iBOT's patch loss
    # and KoLeo (without them grey scenes collapse, docs/benchmarks.md "Scenes"), trained longer:
    # the heads find the objects late in the schedule, and the patch tokens follow them through
    # the scene video only with the 90-epoch schedule (docs/benchmarks.md, "Scenes, round 4").
    # Its teacher ships as minidino/assets/cpu-scenes-teacher.pt.
    "cpu-scenes": replace(
        _CPU_DEMO, dataset="scenes", scene_style="plain", ibot=True, koleo_weight=0.1,
        epochs=90, knn_every=30, run_name="cpu-scenes",
    ),
    "cifar10": _CIFAR10,
    # One GPU: ViT-S/16 on ImageNette at 128 px.
    "imagenette": TrainConfig(
        dataset="imagenette", arch="vit_small", patch_size=16, image_size=144, out_dim=65536,
        global_size=128, local_size=64, n_local_crops=6, global_scale=(0.4, 1.0),
        local_scale=(0.05, 0.4), epochs=100, batch_size=128, warmup_epochs=10,
        run_name="imagenette",
    ),
    # iBOT on `cifar10`: half the images of each global crop get 10-50% of their 64 patches
    # masked in blocks; one head maps CLS and patch tokens (iBOT found sharing it works best).
    "ibot-cifar10": replace(
        _CIFAR10, ibot=True, mask_ratio=(0.1, 0.5), mask_prob=0.5, ibot_teacher_temp=0.04,
        ibot_center_momentum=0.9, ibot_loss_weight=1.0, run_name="ibot-cifar10",
    ),
    # DINOv2's recipe on `cifar10`: iBOT, KoLeo (0.1), Sinkhorn-Knopp targets for both losses,
    # LayerScale (1e-5) and 4 registers (Darcet et al.); teacher temperatures warm up 0.04 -> 0.07
    # as in DINOv2.
    "dinov2-cifar10": replace(
        _CIFAR10, ibot=True, mask_ratio=(0.1, 0.5), mask_prob=0.5, koleo_weight=0.1,
        centering="sinkhorn", n_registers=4, layerscale=1e-5, teacher_temp=0.07,
        ibot_teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=30,
        run_name="dinov2-cifar10",
    ),
}


def get_preset(name: str) -> TrainConfig:
    """The preset called `name`; an unknown name is refused with the list of available ones."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; available presets: {sorted(PRESETS)}")
    return PRESETS[name]
