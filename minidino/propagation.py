"""Video object segmentation by label propagation: the dense test of DINO's patch features.

Why: a backbone whose patch features mean something should find, for every patch of a new
frame, the patches of earlier frames that show the same part of the same object. If so, the
object masks can be carried from the first frame (given) to every later one with no training at
all (DINO, Sec. 4.2.2 and Table 5, DAVIS-2017: https://arxiv.org/abs/2104.14294).

How (as DINO's evaluation):
1. Every frame gives an h x w grid of L2-normalised patch features (T, h, w, D).
2. The first frame's mask becomes soft labels at patch resolution (C, h, w): the share of each
   patch's pixels in each of the C labels (background + objects).
3. For frame t, the context is the first frame plus the last `n_context` predicted frames. Each
   patch of frame t takes the `topk` most similar context patches (cosine similarity) that lie
   within `radius` patches of its own position (a square window), weights them by
   softmax(similarity / temperature), and averages their soft labels.
4. The soft labels are upsampled bilinearly to pixels, each label's map is stretched to [0, 1]
   over the frame (DINO's `norm_mask`: a small object whose share never beats the background's
   still wins where it is likeliest), and the arg max is the predicted mask.
Scores: `j_score` (region similarity, mean IoU) and `f_score` (contour accuracy).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from minidino.augment_batched import IMAGENET_MEAN, IMAGENET_STD, check_images, normalize


@torch.no_grad()
def patch_features(backbone: torch.nn.Module, frames: Tensor, batch_size: int = 8,
                   mean: tuple[float, ...] = IMAGENET_MEAN,
                   std: tuple[float, ...] = IMAGENET_STD, l2_normalize: bool = True) -> Tensor:
    """uint8 frames (T, 3, H, W) -> L2-normalised patch features (T, h, w, D) (the output
    patch tokens as they are with l2_normalize=False).

    h = H // p and w = W // p for the backbone's patch size p; frames whose sides are not a
    multiple of p are resized to (h p, w p) first. The backbone must have `get_patch_tokens`
    and `patch_size` (minidino's VisionTransformer has both); it runs in eval mode on its device.
    """
    check_images(frames, ranks=(4,), name="frames")
    p = backbone.patch_size
    T, _, H, W = frames.shape
    h, w = H // p, W // p
    if h < 1 or w < 1:
        raise ValueError(f"frames of {H} x {W} pixels are smaller than one {p}-pixel patch")
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    out = []
    for start in range(0, T, batch_size):
        x = normalize(frames[start:start + batch_size].to(device), mean, std)  # (b, 3, H, W)
        if (H, W) != (h * p, w * p):
            x = F.interpolate(x, size=(h * p, w * p), mode="bilinear", antialias=True,
                              align_corners=False)  # (b, 3, h p, w p)
        tokens = backbone.get_patch_tokens(x).float()  # (b, h w, D)
        if l2_normalize:
            tokens = F.normalize(tokens, dim=-1)  # (b, h w, D)
        out.append(tokens.reshape(-1, h, w, tokens.shape[-1]).cpu())
    backbone.train(was_training)
    return torch.cat(out)  # (T, h, w, D)


def mask_to_patches(mask: Tensor, n_labels: int, grid: tuple[int, int]) -> Tensor:
    """Mask int64 (H, W) with values in [0, n_labels) -> soft labels (n_labels, h, w): the share
    of each patch's area in each label (area interpolation, so every patch sums to 1)."""
    one_hot = F.one_hot(mask, n_labels).permute(2, 0, 1).float()  # (C, H, W)
    return F.interpolate(one_hot[None], size=grid, mode="area")[0]  # (C, h, w)


def _window(h: int, w: int, radius: int | None) -> Tensor | None:
    """bool (h w, h w): True where two patches are at most `radius` apart in rows and columns."""
    if radius is None:
        return None
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # (h, w)
    rows, cols = rows.reshape(-1), cols.reshape(-1)  # (h w,)
    return ((rows[:, None] - rows[None]).abs() <= radius) & (
        (cols[:, None] - cols[None]).abs() <= radius)  # (h w, h w)


def propagate_labels(features: Tensor, first_labels: Tensor, n_context: int = 7, topk: int = 5,
                     temperature: float = 0.1, radius: int | None = 12,
                     chunk: int = 1024) -> Tensor:
    """Carry soft labels from frame 0 to every frame, at patch resolution.

    features: (T, h, w, D), L2-normalised (as `patch_features` gives); first_labels: (C, h, w)
    soft labels of frame 0 -> (T, C, h, w), frame 0 being first_labels. radius None: no window.
    chunk bounds memory: the target patches are matched this many at a time.
    """
    if features.ndim != 4:
        raise ValueError(f"features of shape {tuple(features.shape)} must be (T, h, w, D)")
    T, h, w, D = features.shape
    if first_labels.ndim != 3 or first_labels.shape[1:] != (h, w):
        raise ValueError(f"first_labels of shape {tuple(first_labels.shape)} must be "
                         f"(C, {h}, {w}) to match features")
    if n_context < 0 or topk < 1 or temperature <= 0 or (radius is not None and radius < 0):
        raise ValueError(f"need n_context >= 0, topk >= 1, temperature > 0, radius >= 0 or None; "
                         f"got {n_context}, {topk}, {temperature}, {radius}")
    C, N = first_labels.shape[0], h * w
    feats = features.reshape(T, N, D).float()  # (T, N, D)
    window = _window(h, w, radius)  # (N, N) or None
    labels = [first_labels.reshape(C, N).T.float()]  # per frame (N, C)
    for t in range(1, T):
        ctx = [0] + list(range(max(1, t - n_context), t))  # first frame + last n_context frames
        M = len(ctx)
        keys = feats[ctx].reshape(M * N, D)  # (M N, D)
        values = torch.cat([labels[i] for i in ctx])  # (M N, C)
        k = min(topk, M * N)
        out = torch.empty(N, C)
        for s in range(0, N, chunk):
            q = feats[t, s:s + chunk]  # (n, D) target patches
            sim = (q @ keys.T).reshape(-1, M, N)  # (n, M, N) cosine similarity
            if window is not None:
                sim = sim.masked_fill(~window[s:s + chunk, None], float("-inf"))  # (n, M, N)
            best, idx = sim.reshape(len(q), M * N).topk(k, dim=1)  # (n, k)
            weights = torch.softmax(best / temperature, dim=1)  # (n, k); -inf ones get 0
            out[s:s + chunk] = (weights[..., None] * values[idx]).sum(1)  # (n, C)
        labels.append(out)
    return torch.stack(labels).permute(0, 2, 1).reshape(T, C, h, w)  # (T, C, h, w)


SPAN_EPS = 1e-5  # label maps that vary less than this over a frame count as constant


def stretch_labels(scores: Tensor) -> Tensor:
    """Label maps (T, C, H, W) -> each label's map of each frame min-max scaled to [0, 1], as
    DINO's `norm_mask` does before the arg max. A map that is constant over a frame (a label
    absent everywhere, or present everywhere), up to a rounding error below `SPAN_EPS`, is kept as
    it is: stretching it would blow the rounding error up to a full-scale label."""
    low = scores.amin((2, 3), keepdim=True)  # (T, C, 1, 1)
    span = scores.amax((2, 3), keepdim=True) - low  # (T, C, 1, 1)
    return torch.where(span > SPAN_EPS, (scores - low) / span.clamp(min=SPAN_EPS),
                       scores)  # (T, C, H, W)


def propagate_mask(features: Tensor, first_mask: Tensor, n_labels: int | None = None,
                   stretch: bool = True, **kwargs: float | int | None) -> Tensor:
    """Features (T, h, w, D) and the first frame's mask int64 (H, W) -> masks int64 (T, H, W).

    n_labels: number of labels including background (default: first_mask.max() + 1). stretch:
    `stretch_labels` before the arg max, as DINO; False takes the arg max of the soft labels
    themselves. Frame 0 of the result is first_mask itself. kwargs go to `propagate_labels`.
    """
    if first_mask.ndim != 2 or first_mask.dtype != torch.int64 or first_mask.min() < 0:
        raise ValueError(f"first_mask must be an int64 (H, W) map of ids >= 0, got "
                         f"{first_mask.dtype} {tuple(first_mask.shape)}")
    n_labels = int(first_mask.max()) + 1 if n_labels is None else n_labels
    soft = propagate_labels(features, mask_to_patches(first_mask, n_labels, features.shape[1:3]),
                            **kwargs)  # (T, C, h, w)
    up = F.interpolate(soft, size=first_mask.shape, mode="bilinear",
                       align_corners=False)  # (T, C, H, W)
    pred = (stretch_labels(up) if stretch else up).argmax(1)  # (T, H, W)
    pred[0] = first_mask
    return pred


def _check_pair(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    if pred.shape != gt.shape or pred.ndim not in (2, 3):
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be "
                         "(H, W) or (T, H, W) id maps of the same shape")
    return (pred[None], gt[None]) if pred.ndim == 2 else (pred, gt)


def _objects(pred: Tensor, gt: Tensor) -> Tensor:
    """Object ids 1..n (n the largest id in either) as one-hot masks: bool (2, n, T, H, W)."""
    ids = torch.arange(1, int(max(pred.max(), gt.max(), 0)) + 1)  # (n,)
    both = torch.stack([pred, gt])[:, None]  # (2, 1, T, H, W)
    return both == ids[None, :, None, None, None]  # (2, n, T, H, W)


def _mean_present(score: Tensor, present: Tensor) -> float:
    """score, present: (n, T). Mean over present objects in each frame, then over frames that
    have one; nan when no object appears anywhere."""
    per_frame = (score * present).sum(0) / present.sum(0).clamp(min=1)  # (T,)
    has = present.any(0)  # (T,)
    return per_frame[has].mean().item() if has.any() else math.nan


def j_score(pred: Tensor, gt: Tensor) -> float:
    """Region similarity J: per frame, the mean IoU over objects; then the mean over frames.

    pred, gt: id maps (T, H, W) or (H, W), 0 = background. Objects are the ids 1..n (n the largest
    id in either map); an object absent from both pred and gt in a frame is skipped there (an id
    found only in pred scores 0). nan if no object appears at all. The official DAVIS tool
    instead averages each object over frames, counting an absence from both as 1.
    """
    pred, gt = _check_pair(pred, gt)
    p, g = _objects(pred, gt)  # (n, T, H, W) each
    inter = (p & g).sum((2, 3)).float()  # (n, T)
    union = (p | g).sum((2, 3)).float()  # (n, T)
    return _mean_present(inter / union.clamp(min=1), union > 0)


def _boundary(masks: Tensor) -> Tensor:
    """bool (..., H, W) -> pixels of the mask with a 4-neighbour outside it (the image border is
    not an edge: outside pixels repeat the border)."""
    x = masks.float().reshape(-1, 1, *masks.shape[-2:])  # (b, 1, H, W)
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")  # (b, 1, H + 2, W + 2)
    inner = torch.minimum(torch.minimum(pad[..., :-2, 1:-1], pad[..., 2:, 1:-1]),
                          torch.minimum(pad[..., 1:-1, :-2], pad[..., 1:-1, 2:]))  # (b, 1, H, W)
    return (masks & (inner.reshape(masks.shape) == 0))


def f_score(pred: Tensor, gt: Tensor, tolerance: float = 0.008) -> float:
    """Contour accuracy F: the F-measure of object boundaries, averaged like `j_score`.

    A boundary pixel of pred counts as correct (precision) when a boundary pixel of gt lies within
    `tolerance` pixels of it in rows and columns (a square window; DAVIS uses a disk), and
    likewise for recall. tolerance < 1 is a fraction of the image diagonal, rounded up (DAVIS:
    0.008); >= 1 is in pixels. An object with no boundary in either map scores 1 (e.g. filling the
    frame in both); with a boundary in only one, 0.
    """
    pred, gt = _check_pair(pred, gt)
    H, W = pred.shape[-2:]
    r = int(tolerance if tolerance >= 1 else math.ceil(tolerance * math.hypot(H, W)))
    p, g = _objects(pred, gt)  # (n, T, H, W) each
    present = (p | g).any(-1).any(-1)  # (n, T)
    pb, gb = _boundary(p), _boundary(g)  # (n, T, H, W) each

    def near(b: Tensor) -> Tensor:  # within r pixels of a boundary pixel of b
        x = b.float().reshape(-1, 1, H, W)  # (b, 1, H, W)
        return (F.max_pool2d(x, 2 * r + 1, stride=1, padding=r) > 0).reshape(b.shape)

    n_pb, n_gb = pb.sum((2, 3)).float(), gb.sum((2, 3)).float()  # (n, T)
    precision = torch.where(n_pb > 0, (pb & near(gb)).sum((2, 3)) / n_pb.clamp(min=1),
                            (n_gb == 0).float())  # (n, T); no predicted edge: 1 if none in gt
    recall = torch.where(n_gb > 0, (gb & near(pb)).sum((2, 3)) / n_gb.clamp(min=1),
                         (n_pb == 0).float())  # (n, T)
    f = 2 * precision * recall / (precision + recall).clamp(min=1e-12)  # (n, T)
    return _mean_present(f, present)


def evaluate_propagation(backbone: torch.nn.Module, frames: Tensor, masks: Tensor,
                         n_context: int = 7, topk: int = 5, temperature: float = 0.1,
                         radius: int | None = 12, tolerance: float = 0.008,
                         stretch: bool = True) -> dict[str, float]:
    """Propagate masks[0] through frames (T, 3, H, W) with `backbone`'s patch features and score
    the prediction against masks (T, H, W) on frames 1..T-1 (frame 0 is given):
    {"J": region similarity, "F": contour accuracy, "J&F": their mean}. stretch: as in
    `propagate_mask`."""
    if masks.shape != (frames.shape[0], *frames.shape[2:]):
        raise ValueError(f"masks {tuple(masks.shape)} must be (T, H, W) to match frames "
                         f"{tuple(frames.shape)}")
    if frames.shape[0] < 2:
        raise ValueError("frames must hold at least 2 frames: the first one is given")
    features = patch_features(backbone, frames)  # (T, h, w, D)
    pred = propagate_mask(features, masks[0], n_labels=int(masks.max()) + 1, n_context=n_context,
                          stretch=stretch, topk=topk, temperature=temperature,
                          radius=radius)  # (T, H, W)
    J, F_ = j_score(pred[1:], masks[1:]), f_score(pred[1:], masks[1:], tolerance)
    return {"J": J, "F": F_, "J&F": (J + F_) / 2}
