"""Essential-matrix geometry: construction, Sampson error, decomposition and cheirality.

Convention (whole package): a pair is (image 0, image 1); the relative pose maps camera-0 coordinates to
camera-1 coordinates, ``X1 = R X0 + t``; ``E = [t]x R`` so that ``x1^T E x0 = 0`` for normalized image
coordinates ``x = K^-1 [u, v, 1]^T`` (after undistortion). All functions are batched and keep the dtype and
device of their inputs; the robust estimator works in float64.
"""

from __future__ import annotations

import torch

from mbp_cli.geometry.rotation import rotation_angle, skew


def essential_from_pose(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``E = [t]x R``.

    Args:
        R: (..., 3, 3) rotations cam1_from_cam0.
        t: (..., 3) translations cam1_from_cam0 (any norm; E scales with it).

    Returns:
        (..., 3, 3) essential matrices.
    """
    return skew(t) @ R


def cofactor(E: torch.Tensor) -> torch.Tensor:
    """Cofactor matrices ``cof(E)`` (..., 3, 3), rows the cross products of the other two rows of E.

    ``cof(E) = ∂ det E / ∂E``, and for ``E = [t]x R`` with ``||t|| = 1``, ``cof(E) = t tᵀ R``.
    """
    r0, r1, r2 = E[..., 0, :], E[..., 1, :], E[..., 2, :]
    return torch.stack([torch.linalg.cross(r1, r2), torch.linalg.cross(r2, r0), torch.linalg.cross(r0, r1)], -2)


def null_vector(E: torch.Tensor) -> torch.Tensor:
    """Unit ``v`` with ``E v = 0`` for (..., 3, 3) rank-2 matrices (sign arbitrary); ``null_vector(Eᵀ)`` is the
    left one (``tᵀ E = 0``, the translation of an essential matrix).

    Every row of ``cof(E)`` is parallel to ``v``; the longest is the best conditioned. The choice carries no
    gradient, the chosen row does.
    """
    rows = cofactor(E)
    best = rows.detach().norm(dim=-1).argmax(-1)
    v = torch.gather(rows, -2, best[..., None, None].expand(*best.shape, 1, 3)).squeeze(-2)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def tangent_basis(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit vectors -> (..., 3, 2) orthonormal bases of the planes orthogonal to them."""
    # Cross with the coordinate axis least aligned with v, for a well-conditioned first basis vector.
    axis = torch.zeros_like(v).scatter_(-1, v.abs().argmin(-1, keepdim=True), 1.0)
    b1 = torch.linalg.cross(v, axis)
    b1 = b1 / b1.norm(dim=-1, keepdim=True)
    return torch.stack([b1, torch.linalg.cross(v, b1)], -1)


def homogeneous(x: torch.Tensor) -> torch.Tensor:
    """(..., 2) -> (..., 3) by appending ones."""
    return torch.cat([x, torch.ones_like(x[..., :1])], -1)


def sampson_squared(E: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Squared Sampson distances of correspondences to each essential matrix.

    ``d^2 = (x1^T E x0)^2 / ((E x0)_1^2 + (E x0)_2^2 + (E^T x1)_1^2 + (E^T x1)_2^2)``, in the squared units of
    the normalized coordinates (multiply by a focal length squared for pixels^2).

    Args:
        E: (H, 3, 3) hypotheses.
        x0: (N, 2) normalized points in image 0, or (H, N, 2) per-hypothesis points.
        x1: (N, 2) or (H, N, 2) normalized points in image 1.

    Returns:
        (H, N) squared distances. A zero denominator (a point at an epipole of a degenerate E) gives +inf
        rather than NaN, so that it counts as an outlier.
    """
    if x0.dim() == 2:
        # Shared points: two plain matmuls, and the 3-term reductions written out, which is several times
        # faster on CPU than einsum / sum over a middle axis of size 3.
        H = E.shape[0]
        Ex0 = (E.reshape(3 * H, 3) @ homogeneous(x0).T).view(H, 3, -1)
        Etx1 = (E.transpose(1, 2)[:, :2].reshape(2 * H, 3) @ homogeneous(x1).T).view(H, 2, -1)
        # contiguous rows broadcast over H with vectorised loops; strided columns of x1 do not
        u1, v1 = x1[:, 0].contiguous(), x1[:, 1].contiguous()
    else:
        Ex0 = torch.einsum("hij,hnj->hin", E, homogeneous(x0))
        Etx1 = torch.einsum("hji,hnj->hin", E, homogeneous(x1))[:, :2]
        u1, v1 = x1[..., 0], x1[..., 1]
    a, b, c = Ex0.unbind(1)
    d, e = Etx1.unbind(1)
    inf = float("inf")
    if torch.is_grad_enabled() and any(v.requires_grad for v in (E, x0, x1)):
        # Training: out-of-place, so that autograd keeps what its backward needs.
        return ((a * u1 + c + b * v1).square() / (a * a + b * b + d * d + e * e)).nan_to_num(nan=inf, posinf=inf)
    # In-place accumulation: two allocations instead of a dozen, which on CPU is most of the cost for the
    # (H, N) tensors of a RANSAC batch (each new large tensor is fresh, page-faulted memory).
    num = (a * u1).add_(c).addcmul_(b, v1)
    den = (a * a).addcmul_(b, b).addcmul_(d, d).addcmul_(e, e)
    # A zero denominator (a point at an epipole of a degenerate E) gives +inf, never NaN.
    return num.square_().div_(den).nan_to_num_(nan=inf, posinf=inf)


def decompose_essential(E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The four (R, t) factorisations of essential matrices.

    Args:
        E: (..., 3, 3) essential matrices (any scale and sign).

    Returns:
        R: (..., 4, 3, 3) rotations, ordered (Ra, Ra, Rb, Rb).
        t: (..., 4, 3) unit translations, ordered (+t, -t, +t, -t).
    """
    U, _, Vh = torch.linalg.svd(E)
    # Force proper rotations: flipping the sign of U or V only flips the sign of E, which leaves the
    # epipolar constraint unchanged.
    U = U * torch.sign(torch.det(U))[..., None, None]
    Vh = Vh * torch.sign(torch.det(Vh))[..., None, None]
    W = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=E.dtype, device=E.device)
    Ra = U @ W @ Vh
    Rb = U @ W.transpose(0, 1) @ Vh
    t = U[..., :, 2]
    R = torch.stack([Ra, Ra, Rb, Rb], -3)
    T = torch.stack([t, -t, t, -t], -2)
    return R, T


def triangulated_depths(
    R: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depths of the two-ray linear triangulation of each correspondence in both cameras.

    Solves ``d1 x1 = d0 R x0 + t`` in least squares for (d0, d1) per point (the two-ray closest-point
    equations), which is exact for noise-free data and well-behaved for noisy data.

    Args:
        R: (..., 3, 3), t: (..., 3) candidate poses.
        x0, x1: (N, 2) normalized points.

    Returns:
        depth0, depth1: (..., N) depths along the rays in camera 0 and camera 1.
    """
    X0 = homogeneous(x0)
    X1 = homogeneous(x1)
    a = torch.einsum("...ij,nj->...ni", R, X0)  # R x0, (..., N, 3)
    b = X1.expand(a.shape)
    # Normal equations of min |d0 a - d1 b + t|^2 over (d0, d1).
    aa = (a * a).sum(-1)
    bb = (b * b).sum(-1)
    ab = (a * b).sum(-1)
    at = (a * t.unsqueeze(-2)).sum(-1)
    bt = (b * t.unsqueeze(-2)).sum(-1)
    det = aa * bb - ab * ab
    det = torch.where(det.abs() > 1e-15, det, torch.full_like(det, 1e-15))
    d0 = (-bb * at + ab * bt) / det
    d1 = (aa * bt - ab * at) / det
    return d0, d1


def pose_from_essential(
    E: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    weights: torch.Tensor | None = None,
    max_voters: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose, for each E, the (R, t) factorisation that puts most points in front of both cameras.

    Args:
        E: (H, 3, 3) essential matrices.
        x0, x1: (N, 2) normalized points (typically the inliers of E).
        weights: optional (H, N) weights (e.g. an inlier mask) of the points that vote.
        max_voters: optional cap on the voting points, taken evenly spread among those with a positive weight.
            The right factorisation has (nearly) every inlier in front and the other three about half or none,
            so a hundred voters decide as well as a thousand, at a fraction of the triangulations.

    Returns:
        R: (H, 3, 3), t: (H, 3) with ``||t|| = 1``, and the (weighted) number of voters in front (H,).
    """
    if max_voters is not None and x0.shape[0] > max_voters:
        voting = torch.ones_like(x0[:, 0], dtype=torch.bool) if weights is None else (weights > 0).any(0)
        index = voting.nonzero().squeeze(1)
        if index.numel() > max_voters:
            index = index[torch.linspace(0, index.numel() - 1, max_voters, device=index.device).long()]
        x0, x1 = x0[index], x1[index]
        weights = None if weights is None else weights[:, index]
    Rc, tc = decompose_essential(E)  # (H, 4, 3, 3), (H, 4, 3)
    d0, d1 = triangulated_depths(Rc, tc, x0, x1)  # (H, 4, N)
    front = ((d0 > 0) & (d1 > 0)).to(E.dtype)
    if weights is not None:
        front = front * weights.unsqueeze(1)
    votes = front.sum(-1)  # (H, 4)
    best = votes.argmax(-1)
    idx = torch.arange(E.shape[0], device=E.device)
    return Rc[idx, best], tc[idx, best], votes[idx, best]


def rotation_error_deg(R_est: torch.Tensor, R_gt: torch.Tensor) -> torch.Tensor:
    """Angle in degrees of ``R_est R_gt^T`` (..., 3, 3) -> (...)."""
    return torch.rad2deg(rotation_angle(R_est @ R_gt.transpose(-1, -2)))


def translation_error_deg(t_est: torch.Tensor, t_gt: torch.Tensor) -> torch.Tensor:
    """Unsigned angle in degrees between translation directions, ``min(theta, 180 - theta)`` (..., 3) -> (...).

    Unsigned because E fixes t only up to sign before cheirality (evaluation protocol, method.md §8).
    """
    cos = (t_est * t_gt).sum(-1) / (t_est.norm(dim=-1) * t_gt.norm(dim=-1)).clamp_min(1e-300)
    theta = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
    return torch.minimum(theta, 180.0 - theta)
