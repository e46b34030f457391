"""KoLeo: a regulariser that spreads features out over the sphere (DINOv2, Sec. 4).

Why: self-distillation only asks the student to agree with the teacher. Nothing in that loss
stops the features of different images from bunching into a few tight clumps, which wastes the
space and hurts nearest-neighbour retrieval. The Kozachenko-Leonenko estimator of differential
entropy says how spread a sample is from one number per point: the distance d_i to its nearest
neighbour. Up to constants that do not depend on the features, the entropy estimate is the mean of
log d_i, so minimising

    L = -1/B sum_i log(d_i + eps),  d_i = min_{j != i} ||x_i - x_j||,  x_i = f_i / ||f_i||

raises it: every point is pushed away from its closest neighbour, and in the limit the batch
covers the sphere evenly. DINOv2 adds it (weight 0.1) to the loss on the student's CLS features,
computed within the batch of each global crop separately.
See DINOv2, https://arxiv.org/abs/2304.07193, and Sablayrolles et al., "Spreading vectors for
similarity search", https://arxiv.org/abs/1806.03198.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """The KoLeo loss of one batch of features: (B, D) -> a scalar.

    Rows are L2-normalised first, so the loss does not change when a feature is scaled. Each row's
    nearest neighbour is another row (never itself): on the unit sphere the closest point is the
    one with the largest dot product, so the diagonal of the similarity matrix is set below any
    possible value (-2) before taking the arg max. The distance is then recomputed from the two
    vectors, so the gradient flows through it. Runs in at least float32 (the log of a small
    distance is too coarse in half precision). B must be at least 2: a single point has no
    neighbour. Identical rows give distance 0, a loss term of -log(eps) and a zero gradient.
    """
    if not isinstance(features, Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be a 2-D tensor (B, D), got {shape}")
    if features.shape[0] < 2:
        raise ValueError(f"features has B={features.shape[0]} rows: KoLeo needs B >= 2 "
                         "(each row's nearest neighbour is another row)")
    if not features.is_floating_point():
        raise ValueError(f"features has dtype {features.dtype}: a float tensor is needed")
    if not eps > 0:
        raise ValueError(f"eps={eps} must be > 0")
    dtype = torch.promote_types(features.dtype, torch.float32)
    x = F.normalize(features.to(dtype), dim=1)  # (B, D), unit rows
    with torch.no_grad():
        sim = x @ x.T  # (B, B) cosine similarities
        sim.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
        nearest = sim.argmax(dim=1)  # (B,)
    distances = (x - x[nearest]).norm(dim=1)  # (B,)
    return -torch.log(distances + eps).mean()
