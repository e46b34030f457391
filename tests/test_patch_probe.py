"""The object-vs-background patch probe against constructed cases with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from minidino.patch_probe import balanced_accuracy, object_probe, patch_labels


class PixelPatches(nn.Module):
    """A stand-in backbone whose patch tokens are known: each token is the patch's mean pixel
    value per channel (normalised input, so bright patches have large values), plus `noise`."""

    def __init__(self, patch_size: int, noise: float = 0.0, constant: bool = False) -> None:
        super().__init__()
        self.patch_size, self.noise, self.constant = patch_size, noise, constant
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the module a device

    def get_patch_tokens(self, x: Tensor) -> Tensor:
        pooled = nn.functional.avg_pool2d(x, self.patch_size)  # (B, 3, h, w)
        tokens = pooled.flatten(2).transpose(1, 2)  # (B, N, 3)
        if self.constant:
            return torch.ones_like(tokens)
        g = torch.Generator().manual_seed(0)
        return tokens + self.noise * torch.randn(tokens.shape, generator=g)


def _bright_squares(n: int, size: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
    """n grey images with one bright 8 x 8 square on a patch-aligned place (4 x 4 patches of 4
    pixels each): uint8 images (n, 3, size, size) and their masks (n, size, size)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.full((n, 3, size, size), 60, dtype=torch.uint8)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        r, c = (4 * torch.randint(0, 3, (2,), generator=g)).tolist()
        images[i, :, r:r + 8, c:c + 8] = 200
        masks[i, r:r + 8, c:c + 8] = True
    return images, masks


def test_patch_labels_take_the_majority_of_each_patch() -> None:
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True  # patch (0, 0) is all object
    masks[0, 0, 2:4] = True  # patch (0, 1) is half object: not more than half, so background
    masks[0, 2:4, 2] = True
    masks[0, 2, 3] = True  # patch (1, 1) has 3 of 4 pixels on the object
    assert patch_labels(masks, 2).tolist() == [[1, 0, 0, 1]]


def test_balanced_accuracy_is_the_mean_of_the_two_recalls() -> None:
    target = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    pred = torch.tensor([0, 0, 0, 0, 0, 1, 1, 0])  # recall 5/6 on 0, 1/2 on 1
    assert balanced_accuracy(pred, target) == pytest.approx(100 * (5 / 6 + 1 / 2) / 2)
    assert balanced_accuracy(torch.zeros(8, dtype=torch.long), target) == pytest.approx(50.0)


def test_tokens_that_hold_the_answer_give_a_perfect_probe() -> None:
    images, masks = _bright_squares(40)
    result = object_probe(PixelPatches(4), images, masks)
    assert result["balanced"] == pytest.approx(100.0)
    assert result["accuracy"] == pytest.approx(100.0)
    assert result["majority"] == pytest.approx(100 * 12 / 16)  # 4 of 16 patches are object


def test_tokens_that_say_nothing_score_chance() -> None:
    images, masks = _bright_squares(40)
    result = object_probe(PixelPatches(4, constant=True), images, masks)
    assert result["balanced"] == pytest.approx(50.0)  # one answer for every patch


def test_noisier_tokens_score_lower() -> None:
    images, masks = _bright_squares(60, seed=1)
    clean = object_probe(PixelPatches(4, noise=0.5), images, masks)["balanced"]
    noisy = object_probe(PixelPatches(4, noise=3.0), images, masks)["balanced"]
    assert 50.0 < noisy < clean


def test_bad_shapes_and_split_are_refused() -> None:
    images, masks = _bright_squares(4)
    with pytest.raises(ValueError, match="masks"):
        object_probe(PixelPatches(4), images, masks[:3])
    with pytest.raises(ValueError, match="n_fit=4"):
        object_probe(PixelPatches(4), images, masks, n_fit=4)
