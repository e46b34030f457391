"""Checks for lesson 10 (DINOv2's upgrades: KoLeo, Sinkhorn-Knopp, registers).

* Exercise 10.1 `koleo_loss`: -mean log of each unit feature's distance to its nearest other one.
* Exercise 10.2 `sinkhorn_knopp`: balanced teacher targets, rows summing to 1.
* Exercise 10.3 `split_tokens`: a ViT's token sequence cut into CLS, registers and patches.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from minidino import koleo, sinkhorn
from minidino.checks._core import expect, expect_close, fail, run_check
from minidino.vit import vit_nano

__all__ = ["koleo_loss", "sinkhorn_knopp", "split_tokens"]

KoLeo = Callable[..., Tensor]
Sinkhorn = Callable[..., Tensor]
SplitTokens = Callable[[Tensor, int], tuple[Tensor, Tensor, Tensor]]


def reference_split_tokens(tokens: Tensor, n_registers: int) -> tuple[Tensor, Tensor, Tensor]:
    """tokens (B, 1 + R + N, D) -> CLS (B, D), registers (B, R, D), patches (B, N, D).

    The layout is minidino's (and DINOv2's): [CLS, register_1 .. register_R, patch_1 .. patch_N].
    """
    cls = tokens[:, 0]  # (B, D)
    registers = tokens[:, 1 : 1 + n_registers]  # (B, R, D)
    patches = tokens[:, 1 + n_registers :]  # (B, N, D)
    return cls, registers, patches


def _scaled_rows(g: torch.Generator, B: int, D: int) -> Tensor:
    """Random features whose rows have very different lengths (0.1 to 10), (B, D)."""
    x = torch.randn(B, D, generator=g)  # (B, D)
    return x * torch.logspace(-1, 1, B)[torch.randperm(B, generator=g)].unsqueeze(1)  # (B, D)


def koleo_loss(fn: KoLeo) -> KoLeo:
    """Exercise 10.1: check `fn(features)` against `minidino.koleo.koleo_loss`."""
    exercise = "Exercise 10.1 (koleo_loss)"

    def trials(fn: KoLeo) -> int:
        g = torch.Generator().manual_seed(101)
        cases: list[tuple[str, Tensor]] = []
        for B, D in ((16, 8), (5, 3), (2, 4)):
            cases.append((f"B={B}, D={D}, rows of different lengths", _scaled_rows(g, B, D)))
        spread = torch.randn(12, 6, generator=g)  # (12, 6)
        cases.append(("B=12, D=6, unit-free Gaussian rows", spread))
        close = torch.randn(1, 6, generator=g) + 0.05 * torch.randn(10, 6, generator=g)
        cases.append(("B=10 points bunched together (small distances)", close))
        for case, features in cases:
            actual = fn(features.clone())
            expected = koleo.koleo_loss(features)  # scalar
            if isinstance(actual, Tensor) and actual.numel() == 1:
                actual = actual.reshape(())  # a (1,) tensor is fine too
                value, reference = float(actual.detach()), float(expected)
                expect(exercise, case, value < -math.log(1e-8) / 2,
                       f"the loss is {value:.3g}, near -log(eps): some distance is 0",
                       "a point is its own nearest neighbour (distance 0): leave the point "
                       "itself out, e.g. set the diagonal of the distance matrix to +inf (or "
                       "of the similarity matrix to -2) before taking the minimum (maximum)")
                expect(exercise, case, not math.isclose(value, 2 * reference, rel_tol=1e-3),
                       f"the loss is {value:.4g}, twice the reference {reference:.4g}: "
                       "-log of the SQUARED distance",
                       "KoLeo uses the distance ||x_i - x_j|| itself, not its square: take the "
                       "square root (or use torch.cdist / .norm(dim=-1))")
            expect_close(exercise, case, actual, expected,
                         "L = -mean_i log(d_i + eps), d_i = distance from x_i to its nearest "
                         "OTHER row, with every row first L2-normalised (F.normalize(features, "
                         "dim=1)), so that the length of a feature does not matter", atol=1e-4)
        return len(cases)

    return run_check(exercise, fn, koleo.koleo_loss, trials)


def sinkhorn_knopp(fn: Sinkhorn) -> Sinkhorn:
    """Exercise 10.2: check `fn(teacher_out, teacher_temp, n_iters)` against minidino's."""
    exercise = "Exercise 10.2 (sinkhorn_knopp)"

    def trials(fn: Sinkhorn) -> int:
        g = torch.Generator().manual_seed(102)
        cases: list[tuple[str, Tensor, float, int]] = []
        for B, K, temp, n_iters in ((8, 16, 0.1, 3), (12, 6, 0.5, 3), (6, 10, 1.0, 1),
                                    (16, 8, 0.05, 10)):
            teacher_out = torch.randn(B, K, generator=g)  # (B, K)
            cases.append((f"B={B}, K={K}, teacher_temp={temp}, n_iters={n_iters}",
                          teacher_out, temp, n_iters))
        favoured = torch.randn(16, 8, generator=g)  # (16, 8)
        favoured[:, 2] += 2.0  # every image prefers prototype 2
        cases.append(("one prototype favoured by every image, teacher_temp=0.2, n_iters=3",
                      favoured, 0.2, 3))
        for case, teacher_out, temp, n_iters in cases:
            actual = fn(teacher_out.clone(), temp, n_iters)
            expected = sinkhorn.sinkhorn_knopp(teacher_out, temp, n_iters)  # (B, K)
            if isinstance(actual, Tensor) and actual.shape == expected.shape:
                rows = actual.detach().double().sum(dim=1)  # (B,)
                expect(exercise, case, bool(torch.allclose(rows, torch.ones_like(rows),
                                                           atol=1e-4)),
                       f"the rows (images) sum to {rows.min():.3g}..{rows.max():.3g}, not 1",
                       "the LAST step of each iteration normalises the images (each image gets "
                       "mass 1/B), and the result is multiplied by B; in the (K, B) layout the "
                       "prototypes are the rows and the images the columns: are the two swapped?")
            elif isinstance(actual, Tensor) and actual.shape[::-1] == expected.shape:
                fail(exercise, case, f"shape {tuple(actual.shape)}, expected "
                     f"{tuple(expected.shape)}", "transpose back to (B, K) at the end")
            expect_close(exercise, case, actual, expected,
                         "Q = exp(teacher_out / teacher_temp).T (K, B); n_iters times: divide "
                         "each row (prototype) by its sum and by K, then each column (image) by "
                         "its sum and by B; return (B * Q).T. Both steps are needed in every "
                         "iteration, and the temperature divides the logits first", atol=1e-5)
        return len(cases)

    return run_check(exercise, fn, sinkhorn.sinkhorn_knopp, trials)


def split_tokens(fn: SplitTokens) -> SplitTokens:
    """Exercise 10.3: check `fn(tokens, n_registers)` on random and real ViT tokens."""
    exercise = "Exercise 10.3 (split_tokens)"

    def trials(fn: SplitTokens) -> int:
        g = torch.Generator().manual_seed(103)
        cases: list[tuple[str, Tensor, int, Tensor | None]] = []
        for B, R, N, D in ((2, 4, 16, 8), (3, 0, 9, 5), (1, 1, 4, 6)):
            tokens = torch.randn(B, 1 + R + N, D, generator=g)  # (B, 1 + R + N, D)
            cases.append((f"B={B}, n_registers={R}, N={N} patches, D={D}", tokens, R, None))
        torch.manual_seed(103)
        model = vit_nano(patch_size=8, img_size=32, depth=1, n_registers=2).eval()
        images = torch.randn(2, 3, 32, 32, generator=g)  # (2, 3, 32, 32)
        with torch.no_grad():
            tokens = model.forward_features(images)  # (2, 1 + 2 + 16, 96)
            patches = model.get_patch_tokens(images)  # (2, 16, 96)
        cases.append(("a vit_nano with 2 registers: patches must equal get_patch_tokens",
                      tokens, 2, patches))
        for case, tokens, R, real_patches in cases:
            result = fn(tokens.clone(), R)
            if not (isinstance(result, tuple | list) and len(result) == 3):
                fail(exercise, case, "expected a tuple (cls, registers, patches)")
            cls, registers, patches = result
            expected = reference_split_tokens(tokens, R)
            n_patches = tokens.shape[1] - 1 - R
            if isinstance(patches, Tensor) and patches.ndim == 3 and R > 0:
                expect(exercise, case, patches.shape[1] != n_patches + R,
                       f"patches holds {patches.shape[1]} tokens: the {R} registers too",
                       "registers are not patches: they sit right after CLS, so the patches "
                       "start at index 1 + n_registers")
            expect_close(exercise, case + " (cls)", cls, expected[0],
                         "CLS is the first token: tokens[:, 0], shape (B, D)")
            expect_close(exercise, case + " (registers)", registers, expected[1],
                         "the registers come right after CLS: tokens[:, 1 : 1 + n_registers]")
            expect_close(exercise, case + " (patches)", patches, expected[2],
                         "the patches are everything after CLS and the registers")
            if real_patches is not None:
                expect_close(exercise, case, patches, real_patches,
                             "the patch tokens start at model.num_prefix_tokens = 1 + R")
        return len(cases)

    return run_check(exercise, fn, reference_split_tokens, trials)
