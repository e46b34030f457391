"""What the patch tokens know: a linear probe of object vs background, patch by patch.

Why: DINO's loss reads only the CLS token; iBOT adds a loss at the patch tokens (lesson 09). A
fair way to compare the two is to ask the output patch tokens one dense question with labels the
training never saw: is this patch on an object? Every patch of a held-out image gets the label
"object" when most of its pixels lie inside an object mask, and a linear classifier (logistic
regression on the frozen, standardised tokens) is fitted on the patches of some images and scored
on the patches of others. Objects cover less than half of most images, so plain accuracy
flatters a classifier that always says "background"; the score is the **balanced accuracy**, the
mean of the recall on object patches and on background patches (50% = no better than a constant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from minidino.propagation import patch_features


def patch_labels(masks: Tensor, patch_size: int) -> Tensor:
    """Object masks (B, H, W) bool -> int64 (B, N): 1 where more than half a patch's pixels lie on
    an object, N = (H / p) (W / p) in row-major order like the ViT's patch tokens."""
    share = F.avg_pool2d(masks.float()[:, None], patch_size)[:, 0]  # (B, H/p, W/p)
    return (share > 0.5).flatten(1).long()  # (B, N)


def balanced_accuracy(pred: Tensor, target: Tensor) -> float:
    """Mean of the per-class recalls of 0/1 predictions (M,) against 0/1 targets (M,), in %; a
    class absent from target is left out of the mean."""
    recalls = [(pred[target == c] == c).float().mean() for c in (0, 1) if (target == c).any()]
    return 100 * float(torch.stack(recalls).mean())


def object_probe(backbone: torch.nn.Module, images: Tensor, masks: Tensor, n_fit: int | None = None,
                 steps: int = 300, weight_decay: float = 1e-3) -> dict[str, float]:
    """Fit a logistic regression for object vs background on the patch tokens of the first
    `n_fit` images (default: half) and score it on the rest.

    images uint8 (B, 3, H, W), masks bool (B, H, W). Returns {"balanced": balanced accuracy %,
    "accuracy": plain accuracy %, "majority": accuracy % of always answering the commoner label}.
    Full-batch L-BFGS on standardised features with an L2 penalty `weight_decay`: deterministic,
    and no learning rate to tune.
    """
    if images.shape[0] != masks.shape[0] or images.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} must be "
                         "(B, 3, H, W) and (B, H, W)")
    n_fit = images.shape[0] // 2 if n_fit is None else n_fit
    if not 1 <= n_fit < images.shape[0]:
        raise ValueError(f"n_fit={n_fit} must leave images on both sides: 1 <= n_fit < "
                         f"{images.shape[0]}")
    feats = patch_features(backbone, images, batch_size=256, l2_normalize=False)  # (B, h, w, D)
    feats = feats.flatten(1, 2)  # (B, N, D), row-major like the labels
    labels = patch_labels(masks, backbone.patch_size)  # (B, N)
    x_fit, y_fit = feats[:n_fit].flatten(0, 1), labels[:n_fit].flatten().float()  # (M, D), (M,)
    x_test, y_test = feats[n_fit:].flatten(0, 1), labels[n_fit:].flatten()  # (M', D), (M',)
    mu, sigma = x_fit.mean(0), x_fit.std(0) + 1e-6  # (D,) each
    x_fit, x_test = (x_fit - mu) / sigma, (x_test - mu) / sigma
    w = torch.zeros(x_fit.shape[1] + 1, requires_grad=True)  # (D + 1,) weights and bias
    lbfgs = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        lbfgs.zero_grad()
        logits = x_fit @ w[:-1] + w[-1]  # (M,)
        loss = F.binary_cross_entropy_with_logits(logits, y_fit)
        loss = loss + weight_decay * w[:-1].square().sum()
        loss.backward()
        return loss

    lbfgs.step(closure)
    with torch.no_grad():
        pred = ((x_test @ w[:-1] + w[-1]) > 0).long()  # (M',)
    share = float(y_test.float().mean())
    return {"balanced": balanced_accuracy(pred, y_test),
            "accuracy": 100 * float((pred == y_test).float().mean()),
            "majority": 100 * max(share, 1 - share)}
