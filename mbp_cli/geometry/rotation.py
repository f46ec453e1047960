"""Rotations: batched exponential map and angle between rotations."""

from __future__ import annotations

import torch

# skew(v) = sum_k v_k G_k with G_k = [e_k]x: one matrix product instead of a stack of nine entries, which
# matters in the refinement loop where skew runs on tiny tensors and op overhead dominates.
_GENERATORS = torch.tensor(
    [
        [[0, 0, 0], [0, 0, -1], [0, 1, 0]],
        [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
        [[0, -1, 0], [1, 0, 0], [0, 0, 0]],
    ],
    dtype=torch.float64,
).reshape(3, 9)


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices ``[v]x`` such that ``[v]x w = v x w``.

    Args:
        v: (..., 3) vectors.

    Returns:
        (..., 3, 3) skew-symmetric matrices, same dtype and device.
    """
    return (v @ _GENERATORS.to(v)).reshape(*v.shape[:-1], 3, 3)


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: the rotation by angle ``|omega|`` about axis ``omega / |omega|``.

    Args:
        omega: (..., 3) rotation vectors (radians).

    Returns:
        (..., 3, 3) rotation matrices. Small angles use the second-order Taylor expansion, so the map is
        smooth through zero.
    """
    theta2 = (omega * omega).sum(-1, keepdim=True).unsqueeze(-1)
    theta = theta2.sqrt()
    small = theta2 < 1e-12
    safe_theta = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(safe_theta) / safe_theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(safe_theta)) / (safe_theta * safe_theta))
    K = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(K)
    return eye + a * K + b * (K @ K)


def rotation_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation angle in radians of each matrix in ``R`` (..., 3, 3), robust near 0 and pi."""
    trace = R.diagonal(dim1=-2, dim2=-1).sum(-1)
    cos = ((trace - 1.0) / 2.0).clamp(-1.0, 1.0)
    # atan2 of (|sin|, cos) keeps precision for tiny angles where acos loses it.
    skew_part = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = skew_part.norm(dim=-1) / 2.0
    return torch.atan2(sin, cos)
