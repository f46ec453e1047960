"""Synthetic two-view scenes with known pose, for geometry and estimator tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mbp_cli.geometry.rotation import so3_exp


@dataclass
class TwoViewScene:
    """Normalized correspondences of a random scene: ``x1 ~ R x0 + t`` for the inliers."""

    R: torch.Tensor  # (3, 3)
    t: torch.Tensor  # (3,), unit
    x0: torch.Tensor  # (N, 2) normalized
    x1: torch.Tensor  # (N, 2)
    inlier: torch.Tensor  # (N,) bool
    focal: float


def make_scene(
    num_points: int = 400,
    outlier_ratio: float = 0.0,
    noise_px: float = 0.0,
    focal: float = 1000.0,
    seed: int = 0,
    rotation_deg: float = 15.0,
    dtype: torch.dtype = torch.float64,
) -> TwoViewScene:
    """A random relative pose and points 4-12 units in front of camera 0, seen by both cameras.

    Outliers get image-1 positions drawn uniformly over the field of view; noise is Gaussian in pixels.
    """
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(3, generator=g, dtype=dtype)
    R = so3_exp(axis / axis.norm() * torch.deg2rad(torch.tensor(rotation_deg, dtype=dtype)))
    t = torch.randn(3, generator=g, dtype=dtype)
    t = t / t.norm()
    depth = 4.0 + 8.0 * torch.rand(num_points, generator=g, dtype=dtype)
    xy = (torch.rand(num_points, 2, generator=g, dtype=dtype) - 0.5) * 0.8
    X0 = torch.cat([xy * depth[:, None], depth[:, None]], 1)
    X1 = X0 @ R.T + t
    x0 = X0[:, :2] / X0[:, 2:]
    x1 = X1[:, :2] / X1[:, 2:]
    if noise_px > 0:
        x0 = x0 + noise_px / focal * torch.randn(x0.shape, generator=g, dtype=dtype)
        x1 = x1 + noise_px / focal * torch.randn(x1.shape, generator=g, dtype=dtype)
    n_out = int(round(outlier_ratio * num_points))
    perm = torch.randperm(num_points, generator=g)
    inlier = torch.ones(num_points, dtype=torch.bool)
    inlier[perm[:n_out]] = False
    x1 = x1.clone()
    x1[~inlier] = (torch.rand(n_out, 2, generator=g, dtype=dtype) - 0.5) * 0.8
    return TwoViewScene(R, t, x0, x1, inlier, focal)
