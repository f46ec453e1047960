"""Ground-truth targets and the initialisation losses of the consensus network (method.md §7).

Convention: ``x1 = R x0 + t`` (cam1_from_cam0) on normalized coordinates; thresholds in pixels are divided by
the pair's mean focal length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mbp_cli.geometry.essential import essential_from_pose, sampson_squared, triangulated_depths


def gt_residuals(R: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """(N,) squared Sampson distances (normalized units) of the correspondences under the ground truth."""
    E = essential_from_pose(R[None], t[None] / t.norm())
    return sampson_squared(E, x0, x1)[0]


def gt_inlier_labels(
    R: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, threshold: float
) -> torch.Tensor:
    """(N,) bool: ground-truth inliers, with a Sampson distance below ``threshold`` **and** in front of both cameras.

    Args:
        R: (3, 3), t: (3,) ground-truth pose cam1_from_cam0, float64.
        x0, x1: (N, 2) normalized points, float64.
        threshold: on the Sampson distance, normalized units (pixels / focal).
    """
    d0, d1 = triangulated_depths(R, t / t.norm(), x0, x1)
    return (gt_residuals(R, t, x0, x1) < threshold * threshold) & (d0 > 0) & (d1 > 0)


def kl_target(residuals: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """NG-RANSAC's initialisation target ``p_i ∝ exp(-e_i / (2 scale^2))`` over the real correspondences.

    Args:
        residuals: (..., N) squared Sampson distances ``e_i`` under the ground truth, normalized units.
        scale: ``t`` of the recipe, normalized units.
        mask: (..., N) bool, real correspondences (None: all).

    Returns:
        (..., N) probabilities summing to 1 over the real correspondences, 0 at padded ones.
    """
    logits = -residuals / (2.0 * scale * scale)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1)


def kl_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``KL(target || softmax(logits))`` over the real correspondences.

    Args:
        logits: (B, N) network logits (``-inf`` or anything at padded positions).
        target: (B, N) from :func:`kl_target`.
        mask: (B, N) bool.
    """
    log_q = torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    terms = torch.where(target > 0, target * (torch.log(target.clamp(min=1e-30)) - log_q), 0.0)
    return terms.sum(-1).mean()


def bce_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the inlier logits against the ground-truth labels, over the real correspondences."""
    terms = F.binary_cross_entropy_with_logits(
        torch.where(mask, logits, 0.0), labels.to(logits.dtype), reduction="none"
    )
    return (terms * mask).sum() / mask.sum().clamp(min=1)
