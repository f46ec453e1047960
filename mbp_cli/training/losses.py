"""Hypothesis-level training losses (method.md §7), differentiable with respect to the essential matrices.

Every function is batched over hypotheses and over the correspondences of a pair, with a validity mask for
padded correspondences. Conventions: ``x1 = R x0 + t`` (cam1_from_cam0), ``E = [t]x R``, normalized coordinates;
thresholds are in normalized units (pixels divided by the pair's mean focal length).
"""

from __future__ import annotations

import math

import torch

from mbp_cli.geometry.essential import cofactor, null_vector, sampson_squared
from mbp_cli.geometry.rotation import skew


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.cross(a, b, dim=-1)


def pose_from_essential_aligned(E: torch.Tensor, t_reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable (R, t) of essential matrices, without an SVD, on the branch nearest a reference translation.

    For ``E = [t]x R`` with ``||t|| = 1`` (so ``||E||_F = sqrt 2``): ``t`` spans the left null space of ``E``
    (every column of E is orthogonal to it) and ``R = [t]xᵀ E + cof(E)``, since ``[t]xᵀ[t]x = I − t tᵀ`` and
    ``cof(E) = t tᵀ R``. The sign of ``t`` is chosen along ``t_reference``; the rotation then follows from the
    sign of ``E`` (the four decompositions are the two signs of ``E`` and of ``t``). Used by the pose loss,
    where an SVD's backward would divide by the equal singular values of E.

    Args:
        E: (..., 3, 3) essential matrices of any scale (exact ones: the solver's roots).
        t_reference: (..., 3) or (3,) translation whose sign ``t`` takes (e.g. the ground truth).

    Returns:
        R: (..., 3, 3); t: (..., 3) unit.
    """
    E = E * (math.sqrt(2.0) / E.flatten(-2).norm(dim=-1).clamp_min(1e-12))[..., None, None]
    t = null_vector(E.transpose(-1, -2))  # the left null vector, through the best-conditioned column pair
    sign = torch.where((t * t_reference).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(t.dtype)
    t = t * sign
    return skew(t).transpose(-1, -2) @ E + cofactor(E), t


def _safe_angle(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """atan2 in degrees with a finite gradient at zero angle."""
    return torch.rad2deg(torch.atan2(sin, cos))


def pose_loss(E: torch.Tensor, R_gt: torch.Tensor, t_gt: torch.Tensor) -> torch.Tensor:
    """Rotation plus (unsigned) translation angle in degrees of each hypothesis against the ground truth.

    Args:
        E: (..., 3, 3) hypotheses; R_gt: (..., 3, 3); t_gt: (..., 3) unit (broadcast against E).

    Returns:
        (...) ``angle(R R_gtᵀ) + angle(t, ±t_gt)``.
    """
    R, t = pose_from_essential_aligned(E, t_gt)
    R_rel = R @ R_gt.transpose(-1, -2)
    cos_r = ((R_rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    vee = torch.stack(  # 2 sin(θ) times the rotation axis
        [R_rel[..., 2, 1] - R_rel[..., 1, 2], R_rel[..., 0, 2] - R_rel[..., 2, 0], R_rel[..., 1, 0] - R_rel[..., 0, 1]],
        -1,
    )
    sin_r = (0.25 * (vee * vee).sum(-1) + 1e-20).sqrt()
    cos_t = (t * t_gt).sum(-1)  # t is aligned with t_gt, so the angle is the unsigned one
    sin_t = (_cross(t, t_gt.expand_as(t)).square().sum(-1) + 1e-20).sqrt()
    return _safe_angle(cos_r, sin_r) + _safe_angle(cos_t, sin_t)


def _per_pair(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) per-pair value as (B or 1, 1, 1), to broadcast against (B, H, N)."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1, 1, 1)


def _sampson_batch(E: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """(B, H, N) squared Sampson distances of each pair's hypotheses to its own points."""
    return torch.stack([sampson_squared(E[b], x0[b], x1[b]) for b in range(E.shape[0])])


def epipolar_loss(
    E: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, gt_inliers: torch.Tensor, clamp: torch.Tensor | float
) -> torch.Tensor:
    """Mean clamped Sampson distance of each hypothesis over the ground-truth inliers (∇-RANSAC's best loss).

    Args:
        E: (B, H, 3, 3) hypotheses; x0, x1: (B, N, 2); gt_inliers: (B, N) bool (padded points False).
        clamp: the largest distance counted, normalized units (keeps one far point from dominating); a float or
            (B,) per pair.

    Returns:
        (B, H) losses in units of ``clamp`` (in [0, 1]).
    """
    r2 = _sampson_batch(E, x0, x1)
    c = _per_pair(clamp, r2)
    d = torch.minimum((r2 + 1e-30).sqrt(), c) / c
    weight = gt_inliers[:, None].to(d.dtype)
    return (d * weight).sum(-1) / weight.sum(-1).clamp_min(1.0)


def soft_inlier_score(
    E: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor, threshold: torch.Tensor | float
) -> torch.Tensor:
    """A differentiable consensus score of each hypothesis: ``Σᵢ max(0, 1 − d²ᵢ/τ²)`` (MSAC's, negated loss).

    Args:
        E: (B, H, 3, 3); x0, x1: (B, N, 2); mask: (B, N) real points; threshold: τ, a float or (B,) per pair.

    Returns:
        (B, H) higher is better.
    """
    r2 = _sampson_batch(E, x0, x1)
    return ((1.0 - r2 / _per_pair(threshold, r2) ** 2).clamp_min(0.0) * mask[:, None].to(r2.dtype)).sum(-1)


def expected_loss(losses: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, alpha: float) -> torch.Tensor:
    """DSAC's expectation of the loss under score-based hypothesis selection: ``Σⱼ softmax(α sⱼ) ℓⱼ``.

    Args:
        losses, scores: (B, H); valid: (B, H) bool (hypotheses without a real root take no part).
        alpha: inverse temperature of the selection.

    Returns:
        (B,) expected loss (0 for a pair without any valid hypothesis).
    """
    logits = (alpha * scores).masked_fill(~valid, float("-inf"))
    any_valid = valid.any(-1, keepdim=True)
    p = torch.softmax(torch.where(any_valid, logits, torch.zeros_like(logits)), -1)
    return (p * torch.where(valid, losses, torch.zeros_like(losses))).sum(-1) * any_valid[:, 0].to(losses.dtype)


def eigen_free_loss(
    weights: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    E_gt: torch.Tensor,
    alpha: float = 10.0,
    beta: float = 1e-3,
) -> torch.Tensor:
    """The eigendecomposition-free loss of Dang et al. on the weighted 8-point system (method.md §7).

    ``L = ẽᵀ Xᵀ W X ẽ + α exp(−β tr(X̄ᵀ W X̄))``, ``X̄ = X (I − ẽ ẽᵀ)``, with ``ẽ = vec(E_gt)/‖E_gt‖`` and X the
    rows ``vec(x1 x0ᵀ)`` in Hartley-normalised coordinates (each image's points centred and scaled to mean
    distance sqrt 2 from the origin, computed from the weighted points without gradient), ``E_gt`` mapped to them.

    Args:
        weights: (B, N) non-negative per-correspondence weights (0 at padding), e.g. ``sigmoid(logits)``.
        x0, x1: (B, N, 2) normalized points; E_gt: (B, 3, 3).

    Returns:
        (B,) losses.
    """

    def hartley(x: torch.Tensor) -> torch.Tensor:
        w = weights.detach()[..., None]
        centre = (w * x).sum(1) / w.sum(1).clamp_min(1e-12)
        spread = (w[..., 0] * (x - centre[:, None]).norm(dim=-1)).sum(1) / w[..., 0].sum(1).clamp_min(1e-12)
        s = math.sqrt(2.0) / spread.clamp_min(1e-12)
        T = torch.zeros(x.shape[0], 3, 3, dtype=x.dtype, device=x.device)
        T[:, 0, 0], T[:, 1, 1], T[:, 2, 2] = s, s, 1.0
        T[:, :2, 2] = -s[:, None] * centre
        return T

    T0, T1 = hartley(x0), hartley(x1)
    ones = torch.ones_like(x0[..., :1])
    X0 = torch.cat([x0, ones], -1) @ T0.transpose(1, 2)
    X1 = torch.cat([x1, ones], -1) @ T1.transpose(1, 2)
    rows = (X1[..., :, None] * X0[..., None, :]).flatten(-2)  # (B, N, 9)
    # x1ᵀ E x0 = X1ᵀ (T1⁻ᵀ E T0⁻¹) X0
    E_n = torch.linalg.solve(T1.transpose(1, 2), E_gt) @ torch.linalg.inv(T0)
    e = E_n.flatten(-2)
    e = e / e.norm(dim=-1, keepdim=True)
    WX = rows * weights[..., None]
    A = rows.transpose(1, 2) @ WX  # Xᵀ W X (B, 9, 9)
    data = (e[:, None] @ A @ e[..., None])[:, 0, 0]
    P = torch.eye(9, dtype=e.dtype, device=e.device) - e[..., :, None] * e[..., None, :]
    regulariser = alpha * torch.exp(-beta * (P @ A @ P).diagonal(dim1=-2, dim2=-1).sum(-1))
    return data + regulariser
