"""The DINO projection head, and the wrapper that runs a backbone + head on many crops.

Why a head? The backbone gives one feature vector per image (the CLS token, width D). DINO does
not compare these features directly: it maps them to K "prototype" scores and trains the student
to match the teacher's softmax over those K scores. The head is thrown away after training; the
backbone feature is what we keep.

How (as in the official DINO code, so its checkpoints load):

    x (B, D) -> MLP (Linear-GELU-Linear-GELU-Linear) -> (B, bottleneck_dim)
             -> L2-normalise each row
             -> weight-normalised Linear without bias -> (B, K) logits

Weight normalisation writes each prototype (a row of the last weight) as ``g * v / ||v||``: a
direction ``v`` and a length ``g``. With ``norm_last_layer=True`` the length is fixed to 1, so
the logits are cosine similarities between the bottleneck feature and the K prototypes. This
keeps training stable (DINO's default).

The ``MultiCropWrapper`` feeds all crops of a batch through the backbone, grouping crops of the
same resolution into one forward pass (2 global crops together, all local crops together), then
runs the head once on every CLS feature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


class WeightNormLinear(nn.Module):
    """A bias-free Linear layer whose weight is ``g * v / ||v||`` (one norm per output row).

    Parameters are named ``weight_g`` (K, 1) and ``weight_v`` (K, in_dim), the names that
    ``torch.nn.utils.weight_norm`` used and that the official DINO checkpoints store.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))  # (K, 1)
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))  # (K, in_dim)
        # Same start as the nn.Linear that DINO wraps in weight_norm (its default init).
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))

    @property
    def weight(self) -> Tensor:
        """The effective weight (K, in_dim): every row has Euclidean norm g."""
        v_norm = self.weight_v.norm(dim=1, keepdim=True)  # (K, 1)
        return self.weight_g * self.weight_v / v_norm  # (K, in_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, K)."""
        return F.linear(x, self.weight)  # (B, K)


class DINOHead(nn.Module):
    """MLP + L2 normalisation + weight-normalised prototypes: (B, in_dim) -> (B, out_dim).

    Args:
        in_dim: width D of the backbone feature.
        out_dim: number of prototypes K (DINO: 65536; a few thousand for small data).
        hidden_dim: width of the hidden MLP layers.
        bottleneck_dim: width of the L2-normalised feature fed to the prototypes.
        n_layers: number of Linear layers in the MLP (GELU between them).
        norm_last_layer: fix every prototype's length g to 1 (g is not trained).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        _check_positive_int("in_dim", in_dim)
        _check_positive_int("out_dim", out_dim, minimum=2)
        _check_positive_int("hidden_dim", hidden_dim)
        _check_positive_int("bottleneck_dim", bottleneck_dim)
        _check_positive_int("n_layers", n_layers)
        self.in_dim = in_dim
        self.out_dim = out_dim

        if n_layers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(n_layers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)  # keys mlp.0, mlp.2, mlp.4 for n_layers=3
        self.mlp.apply(self._init_weights)

        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def flops(self) -> float:
        """Matrix-multiply FLOPs of the head for one feature vector (the MLP and the prototypes)."""
        linears = [m for m in self.modules() if isinstance(m, nn.Linear)]
        return 2 * (sum(m.in_features * m.out_features for m in linears)
                    + self.last_layer.weight_v.shape[1] * self.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) features -> (B, K) logits."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; DINOHead expects (B, in_dim={self.in_dim})"
            )
        x = self.mlp(x)  # (B, bottleneck_dim)
        x = F.normalize(x, dim=-1, p=2)  # (B, bottleneck_dim), unit rows
        return self.last_layer(x)  # (B, K)


class MultiCropWrapper(nn.Module):
    """Backbone + head on a list of crops, one backbone pass per run of same-sized crops.

    ``backbone`` maps images (B, 3, S, S) to CLS features (B, D) for any crop size S;
    ``head`` maps (B, D) to (B, K).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[Tensor] | Tensor) -> Tensor:
        """crops: list of (B, 3, S_i, S_i) -> logits (sum_i B, K), rows in crop order.

        Consecutive crops with the same size are concatenated along the batch and go through the
        backbone together (e.g. [global, global, local x 6] -> 2 backbone calls).
        """
        if isinstance(crops, Tensor):
            crops = [crops]
        if len(crops) == 0:
            raise ValueError("crops is an empty list; pass at least one (B, 3, S, S) tensor")
        for i, crop in enumerate(crops):
            if crop.ndim != 4:
                raise ValueError(f"crops[{i}] has shape {tuple(crop.shape)}; expected (B, 3, S, S)")

        features = []
        start = 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            out = self.backbone(torch.cat(crops[start:end]))  # (n_same * B, D)
            if isinstance(out, tuple):  # a backbone may return (cls, extras)
                out = out[0]
            if out.ndim != 2:
                raise ValueError(
                    f"backbone returned shape {tuple(out.shape)}; MultiCropWrapper expects "
                    "one CLS feature per image, (B, D)"
                )
            features.append(out)
            start = end
        return self.head(torch.cat(features))  # (sum_i B, K)


def cancel_last_layer_gradients(
    model: nn.Module, epoch: int, freeze_last_layer_epochs: int
) -> None:
    """Drop the gradients of the head's ``last_layer`` while epoch < freeze_last_layer_epochs.

    Why: at the start the prototypes are random and the backbone's features move fast; DINO
    keeps the prototypes (the weight-normalised last layer) fixed during the first epoch, which
    it found stabilises training.

    Call between ``loss.backward()`` and ``optimizer.step()``: parameters whose grad is None are
    skipped by the optimizer, so the prototypes stay where they started.
    """
    if epoch >= freeze_last_layer_epochs:
        return
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None
