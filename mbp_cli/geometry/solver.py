"""Minimal solver: Nistér's 5-point algorithm, batched (kornia's implementation).

Convention: ``x1^T E x0 = 0`` on normalized coordinates, so ``points0`` are the image-0 points.
"""

from __future__ import annotations

import torch
from kornia.geometry.epipolar import find_essential

MAX_ROOTS = 10
SAMPLE_SIZE = 5


def five_point(points0: torch.Tensor, points1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All real essential matrices through each 5-correspondence sample.

    Args:
        points0: (B, 5, 2) normalized points in image 0.
        points1: (B, 5, 2) normalized points in image 1.

    Returns:
        E: (B, 10, 3, 3) solutions with unit Frobenius norm, in the dtype of the input. Slots without a real
            root hold zeros (never the real part of a complex root, never another sample's model).
        valid: (B, 10) bool mask of the slots holding a real solution. A rank-deficient sample has none.
    """
    if points0.shape != points1.shape or points0.shape[-2:] != (SAMPLE_SIZE, 2):
        raise ValueError(
            f"five_point expects (B, 5, 2) point sets, got {tuple(points0.shape)} and {tuple(points1.shape)}"
        )
    # kornia's solver is written as x2^T E x1 = 0 with (points1, points2): the same orientation as ours.
    E = find_essential(points0.double(), points1.double())
    norm = E.flatten(-2).norm(dim=-1)
    valid = torch.isfinite(E).flatten(-2).all(-1) & (norm - 1.0).abs().lt(1e-6)
    E = torch.where(valid[..., None, None], E, torch.zeros_like(E))
    return E.to(points0.dtype), valid
