"""Baselines on the built-in scenes before any training: raw pixels, a random ViT, a centred blob.

    python -m tools.scene_baselines [--patch-size 4] [--scene-style plain] [--teacher CKPT]
                                    [--attention-size 64] [--n-clips 8]

Everything uses the `cpu-demo` preset (its ViT at its random initialisation, `initial_backbone`,
and its evaluation sizes: 10,000 training images as the kNN memory bank, 1,000 held-out queries)
on the built-in scenes and, for comparison, the built-in shapes it trains on today; with
--patch-size, that preset with another patch size (4: an 8 x 8 grid of patches at 32 px):

* kNN top-1 (k=20, T=0.07) of raw pixels (the normalised image as one vector) and of the random
  ViT's CLS feature;
* attention-mask IoU on 500 held-out images: per image, the best head's 60%-mass CLS attention
  mask (upsampled to pixels) against the object mask (any object), as `tools/compare.py`; a
  centred blob (the 60%-mass mask of a centred Gaussian with sigma a quarter of the side, on the
  same patch grid); the whole image (IoU = the object's share of the image); and the best mask
  made of whole patches (`attention.grid_iou_ceiling`), the ceiling of any head on this grid;
* propagation J through a 12-frame video of 96 px, frames 1-11: the random ViT's patch
  features; and "frame 0 held still" (every frame predicted as the first mask), on the
  moving-shapes video of `minidino.video` (DINO's settings) and on the scene video of
  `minidino.scene_video`, drawn at the training images' pixel scale (`scene_side`: objects and
  textures as many pixels wide as in the training scenes), then read enlarged 2x (a 24 x 24
  grid of 8-px patches) with a window of 3 patches (`SCENE_VIDEO_RADIUS`; DINO's 12 would
  span the whole grid, and the objects move about half a patch per frame); "J, N clips" is the
  mean over the videos of seeds 0..N-1 (`--n-clips`, 8 by default), the built-in one (seed 0)
  among them: one clip is too few to compare two networks by;
* a linear probe of the output patch tokens for object vs background (`minidino.patch_probe`:
  logistic regression fitted on the patches of half of the IoU images, balanced accuracy on the
  other half; 50% = no better than a constant answer);
* brightness (the mean of R, G, B) of object and background pixels over the held-out split: mean
  +- std of all pixels, and the mean over images of |object mean - background mean|.
Nothing is trained. Prints two markdown tables. With --teacher CHECKPOINT (a run on the scenes)
the random ViT is that run's network at its initialisation (same architecture, patch size,
registers and seed) and the first table gains a row for the run's teacher: its kNN, IoU, probe
and J on the same images.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from minidino.attention import attention_mass_mask, enlarge, grid_iou_ceiling, patch_mask_iou
from minidino.attention import best_head_iou as attention_iou
from minidino.augment_batched import normalize
from minidino.config_checks import SCENE_STYLES
from minidino.data import load_splits
from minidino.evaluate import knn_accuracy
from minidino.held_out import knn_top1
from minidino.patch_probe import object_probe
from minidino.presets import get_preset
from minidino.pretrained import backbone_from, initial_backbone
from minidino.propagation import evaluate_propagation, j_score
from minidino.scene_video import make_scene_video
from minidino.video import make_video


def pixel_knn(train_split, test_split, n_eval: int) -> float:
    """kNN top-1 of raw pixels: each image (normalised as the ViT's input) as one vector."""
    flat = lambda images: normalize(images).flatten(1)  # noqa: E731  (N, 3 H W)
    result = knn_accuracy(flat(train_split.images), train_split.labels,
                          flat(test_split.images[:n_eval]), test_split.labels[:n_eval],
                          n_classes=len(train_split.classes))
    return result["top1"]


def blob_iou(masks: torch.Tensor, grid: int, keep: float = 0.6) -> float:
    """IoU of a centred blob with masks (N, H, W): the `keep`-mass mask of a centred Gaussian
    (sigma = a quarter of the side) on a grid x grid patch map, upsampled to pixels."""
    centres = (torch.arange(grid) + 0.5) / grid - 0.5  # patch centres, side = 1
    r2 = centres[:, None] ** 2 + centres[None, :] ** 2  # (grid, grid)
    blob = attention_mass_mask(torch.exp(-r2 / (2 * 0.25 ** 2)).flatten(), keep)  # (grid^2,)
    blobs = blob.reshape(1, 1, grid, grid).expand(len(masks), 1, grid, grid)  # (N, 1, g, g)
    return float(patch_mask_iou(blobs, masks).mean())


def brightness(images: torch.Tensor, masks: torch.Tensor) -> list[str]:
    """Object and background brightness: images uint8 (N, 3, H, W), masks bool (N, H, W)."""
    grey, f = images.float().mean(1) / 255, masks.float()  # (N, H, W) each
    per_image = ((grey * f).sum((1, 2)) / f.sum((1, 2)).clamp(min=1)
                 - (grey * (1 - f)).sum((1, 2)) / (1 - f).sum((1, 2)).clamp(min=1))  # (N,)
    on, off = grey[masks], grey[~masks]
    return [f"{on.mean():.3f} +- {on.std():.3f}", f"{off.mean():.3f} +- {off.std():.3f}",
            f"{per_image.abs().mean():.3f}"]


SCENE_VIDEO_RADIUS = 3  # the propagation window on the enlarged scene video, in patches


def scene_clip(style: str, scene_side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The scene video at the training scale, enlarged 2x: frames uint8 (12, 3, 192, 192) and
    masks (12, 192, 192)."""
    video = make_scene_video(n_frames=12, seed=seed, style=style, scene_side=scene_side)
    return enlarge(video.frames, video.masks, 2 * video.frames.shape[-1])


def clip_j(backbone: torch.nn.Module, frames: torch.Tensor, masks: torch.Tensor,
           radius: int) -> float:
    """J of propagating masks[0] through frames (T, 3, H, W) with the backbone's patch features."""
    return evaluate_propagation(backbone, frames, masks, radius=radius)["J"]


def clip_js(backbone: torch.nn.Module, clips: list[tuple[torch.Tensor, torch.Tensor]],
            radius: int) -> tuple[str, str]:
    """`clip_j` on each clip (frames (T, 3, H, W), masks (T, H, W)), the built-in one first ->
    the table's two cells: J on the built-in clip, and the mean J over all the clips."""
    js = [clip_j(backbone, frames, masks, radius) for frames, masks in clips]
    return f"{js[0]:.3f}", f"{sum(js) / len(js):.3f}"


def still_j(masks: torch.Tensor) -> float:
    """J on frames 1.. of predicting every frame of masks (T, H, W) as the first one."""
    return j_score(masks[:1].expand_as(masks[1:]), masks[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-iou", type=int, default=500, help="held-out images for the IoU")
    parser.add_argument("--patch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--teacher", default=None, help="a training checkpoint to score too")
    parser.add_argument("--attention-size", type=int, default=None,
                        help="read attention on the IoU images enlarged to this side in px "
                        "(bilinear; masks to the nearest pixel), a finer grid of patches; "
                        "default: as they are")
    parser.add_argument("--scene-style", default="default", choices=SCENE_STYLES,
                        help="the style of the scenes and of the scene video")
    parser.add_argument("--n-clips", type=int, default=8,
                        help="videos (seeds 0..N-1) for the column of mean J")
    args = parser.parse_args()
    if args.n_clips < 1:
        parser.error(f"--n-clips {args.n_clips}: need at least 1 video")
    base = get_preset("cpu-demo")
    if args.teacher:
        teacher, base, _ = backbone_from(args.teacher, "teacher")
        teacher = teacher.eval()
        if args.patch_size not in (None, base.patch_size):
            parser.error(f"--patch-size {args.patch_size} differs from the teacher's patch "
                         f"size {base.patch_size}: leave it out with --teacher")
    base = replace(base, patch_size=args.patch_size or base.patch_size, n_train=None)
    backbone = initial_backbone(base).eval()  # the same weights for both datasets
    videos = {"shapes": [make_video(n_frames=12, seed=s)[:2] for s in range(args.n_clips)],
              "scenes": [scene_clip(args.scene_style, base.image_size, s)
                         for s in range(args.n_clips)]}  # 96 px and 192 px; seed 0 built in
    radius = {"shapes": 12, "scenes": SCENE_VIDEO_RADIUS}
    rows, colours = {}, {}
    for dataset in ("shapes", "scenes"):
        cfg = replace(base, dataset=dataset, scene_style=args.scene_style)
        train_split, test_split = load_splits(cfg)
        knn = knn_top1(backbone, train_split, test_split, cfg, torch.device("cpu"),
                       progress=False)
        images, masks = test_split.images[:args.n_iou], test_split.masks[:args.n_iou]
        side = args.attention_size or cfg.image_size
        big, big_masks = enlarge(images, masks, side)  # the attention columns read these
        video_masks = videos[dataset][0][1]  # the built-in clip's masks (T, H, W)
        rows[dataset] = [
            f"{pixel_knn(train_split, test_split, cfg.n_eval):.1f}%", f"{knn['top1']:.1f}%",
            f"{attention_iou(backbone, big, big_masks):.3f}",
            f"{blob_iou(big_masks, side // cfg.patch_size):.3f}",
            f"{masks.float().mean():.3f}",
            f"{grid_iou_ceiling(big_masks, cfg.patch_size).mean():.3f}",
            f"{object_probe(backbone, images, masks)['balanced']:.1f}%",
            *clip_js(backbone, videos[dataset], radius[dataset]),
            f"{still_j(video_masks):.3f}"]
        colours[dataset] = brightness(test_split.images, test_split.masks)
        if args.teacher and dataset == "scenes":
            knn = knn_top1(teacher, train_split, test_split, cfg, torch.device("cpu"),
                           progress=False)
            rows["scenes, trained teacher"] = [
                "-", f"{knn['top1']:.1f}%", f"{attention_iou(teacher, big, big_masks):.3f}",
                "-", "-", "-", f"{object_probe(teacher, images, masks)['balanced']:.1f}%",
                *clip_js(teacher, videos[dataset], SCENE_VIDEO_RADIUS), "-"]
    network = "the teacher's network" if args.teacher else "cpu-demo preset"
    print(f"{network} at random initialisation, patch {base.patch_size}, scene style "
          f"{args.scene_style}, attention read at {args.attention_size or base.image_size} px "
          "(the ViT columns are the random ViT's, except in the trained teacher's row)")
    print("| built-in | kNN pixels | kNN ViT | IoU ViT | IoU centred blob | "
          "IoU whole image | IoU best patch mask | probe ViT | J ViT | "
          f"J ViT, {args.n_clips} clips | J frame 0 held still |")
    print("| --- |" + " ---: |" * 10)
    for dataset, cells in rows.items():
        print(f"| {dataset} | " + " | ".join(cells) + " |")
    print("\n| built-in | object brightness | background brightness | per-image gap |")
    print("| --- |" + " ---: |" * 3)
    for dataset, cells in colours.items():
        print(f"| {dataset} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
