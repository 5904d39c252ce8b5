"""Batched random affine augmentation: one `affine_grid` + `grid_sample` for the whole batch.

Why nearest-neighbour sampling and continuous shifts, with the accuracies measured: reports/augmentation.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# How `affine` samples the input image: "nearest", as torchvision's RandomAffine does by default, rather
# than "bilinear", which blurs every training image, as the sharp test images never are. The choice, made
# on validation accuracy: reports/augmentation.md (benchmarks/augmentation_sampling.py compares the two).
SAMPLING = "nearest"


def affine(images: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Rotate by `angle` degrees (counter-clockwise as displayed), scale, then shift by `shift` pixels.

    images: (N, C, H, W) float with background 0; angle, scale: (N,); shift: (N, 2) as (dx, dy),
    dx to the right, dy downwards. Each output pixel takes the nearest input pixel; pixels that
    come from outside the image are 0.
    """
    n, _, h, w = images.shape
    rad = angle * (math.pi / 180)
    cos, sin = (torch.cos(rad) / scale).view(n, 1, 1), (torch.sin(rad) / scale).view(n, 1, 1)
    # The sampling grid maps each output pixel to the input point it comes from, in [-1, 1]
    # (pixel centres, as affine_grid with align_corners=False): so this is the inverse
    # transform: undo the shift, rotate back by the angle, divide by the scale. Written out
    # rather than through affine_grid, whose batched 3x2 matmul costs more than the sampling.
    x = ((torch.arange(w, device=images.device, dtype=images.dtype) * 2 + 1) / w - 1).view(1, 1, w)
    y = ((torch.arange(h, device=images.device, dtype=images.dtype) * 2 + 1) / h - 1).view(1, h, 1)
    x = x - (2 * shift[:, 0] / w).view(n, 1, 1)
    y = y - (2 * shift[:, 1] / h).view(n, 1, 1)
    grid = torch.stack([cos * x - sin * y, sin * x + cos * y], dim=-1)  # (N, H, W, 2)
    return F.grid_sample(images, grid.to(images.dtype), mode=SAMPLING, padding_mode="zeros", align_corners=False)


def affine_draws(n: int, generator: torch.Generator) -> torch.Tensor:
    """The uniform draws of `n` images' random affines, (n, 4) on the CPU: one row per image.

    Drawn in one call or batch by batch, the rows are the same: the CPU generator fills them in
    order (tests/test_augment.py), so an epoch's draws can be made at its start, once.
    """
    return torch.rand(n, 4, generator=generator)


def random_affine(
    images: torch.Tensor,
    draws: torch.Tensor,
    max_angle: float = 10.0,
    max_shift: float = 2.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
) -> torch.Tensor:
    """A different random rotation, shift and scale for every image, made from its row of `draws` (`affine_draws`)."""
    angle = (2 * draws[:, 0] - 1) * max_angle
    shift = (2 * draws[:, 1:3] - 1) * max_shift
    lo, hi = scale_range
    scale = lo + (hi - lo) * draws[:, 3]
    return affine(images, angle, shift, scale)
