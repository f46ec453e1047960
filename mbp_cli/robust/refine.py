"""Levenberg–Marquardt refinement of relative poses on the essential manifold (method.md §6).

The pose is parametrised by ``R in SO(3)`` (3-vector update ``R <- R exp([w]x)``) and ``t in S^2`` (2-vector
update in the tangent plane, then renormalised): 5 degrees of freedom. Residuals are signed Sampson
distances ``(x1^T E x0) / sqrt(D)`` in normalized coordinates, under a robust loss (Cauchy or truncated) with
the scale given in the same units. Batched over H poses sharing the correspondences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mbp_cli.geometry.essential import essential_from_pose, homogeneous, tangent_basis
from mbp_cli.geometry.rotation import skew

LOSSES = ("cauchy", "truncated", "huber")
# [e_k]x for k = 1..3: E [e_k]x is the derivative of E = [t]x R under R <- R exp([w]x) along w_k.
_ROTATION_GENERATORS = skew(torch.eye(3, dtype=torch.float64))
# step (w1, w2, w3, b1, b2) -> rotation axis-angle (w1, w2, w3) and translation-frame axis-angle (-b2, b1, 0).
_STEP_TO_AXES = torch.zeros(5, 6, dtype=torch.float64)
_STEP_TO_AXES[0, 0] = _STEP_TO_AXES[1, 1] = _STEP_TO_AXES[2, 2] = 1.0
_STEP_TO_AXES[4, 3] = -1.0
_STEP_TO_AXES[3, 4] = 1.0
_EYE3 = torch.eye(3, dtype=torch.float64)


@dataclass(frozen=True)
class RefineOptions:
    """Options of :func:`refine_pose`.

    Attributes:
        max_iterations: LM iterations at most.
        loss: robust loss, one of ``cauchy``, ``truncated`` (weights 0 beyond the scale), ``huber``.
        initial_lambda: initial damping relative to the diagonal of the normal equations.
        gradient_tol: stop when the largest gradient entry falls below this.
        step_tol: stop when the update's norm falls below this.
        cost_tol: stop when an accepted step lowers the cost by less than this fraction.
    """

    max_iterations: int = 25
    loss: str = "cauchy"
    initial_lambda: float = 1e-3
    gradient_tol: float = 1e-12
    step_tol: float = 1e-10
    cost_tol: float = 1e-6


# Relative localisation noise (sigma0, sigma1) of each correspondence's keypoints, each (N,): see keypoint_noise.
KeypointNoise = tuple[torch.Tensor, torch.Tensor]


def keypoint_noise(scale0: torch.Tensor, scale1: torch.Tensor) -> KeypointNoise:
    """Relative localisation noise of matched keypoints from their detection scales: ``sigma ∝ scale``.

    A detector localises a blob to a fraction of its scale, so a keypoint found at a coarse scale is less precise
    than a fine one. Both (N,) scales are divided by their joint median: a median-scale keypoint keeps unit noise,
    so residuals stay in pixels at the median and the robust scale keeps its meaning (and the scales' unit, which
    differs between SIFT backends, cancels).

    Returns:
        ``(sigma0, sigma1)``, each (N,), positive.
    """
    both = torch.cat([scale0, scale1])
    if both.numel() == 0:
        return scale0, scale1
    median = both.median().clamp_min(1e-12)
    floor = 1e-3  # a zero or negative scale (never from a detector) must not give an infinite weight
    return (scale0 / median).clamp_min(floor), (scale1 / median).clamp_min(floor)


def epipolar_design(x0: torch.Tensor, x1: torch.Tensor, noise: KeypointNoise | None = None) -> torch.Tensor:
    """The linear maps from ``vec(E)`` (row-major) to the five quantities of the Sampson distance.

    For each correspondence n, ``P[:, n] @ vec(E)`` gives ``(x1^T E x0, (E x0)_1, (E x0)_2, (E^T x1)_1,
    (E^T x1)_2)``; the signed Sampson residual is the first divided by the norm of the other four.
    Precomputing P turns every residual and Jacobian evaluation of the LM loop into one matrix product.

    With keypoint ``noise`` ``(sigma0, sigma1)``, the two derivatives with respect to image 1's point are scaled by
    ``sigma1`` and those with respect to image 0's by ``sigma0``, so the residual becomes the Sampson distance of
    heteroscedastic noise, ``x1^T E x0 / sqrt(sigma1^2 |(E x0)_12|^2 + sigma0^2 |(E^T x1)_12|^2)``: a first-order
    error in units of each correspondence's own noise.

    Args:
        x0, x1: (N, 2) normalized points.
        noise: optional ``(sigma0, sigma1)``, each (N,), from :func:`keypoint_noise`.

    Returns:
        (5, N, 9) design tensor, quantity-major so that each quantity is a contiguous (N, H) block.
    """
    X0 = homogeneous(x0)
    X1 = homogeneous(x1)
    N = X0.shape[0]
    P = X0.new_zeros(5, N, 3, 3)
    P[0] = X1[:, :, None] * X0[:, None, :]
    P[1, :, 0] = X0
    P[2, :, 1] = X0
    P[3, :, :, 0] = X1
    P[4, :, :, 1] = X1
    if noise is not None:
        sigma0, sigma1 = noise
        P[1:3] *= sigma1.to(P)[:, None, None]
        P[3:5] *= sigma0.to(P)[:, None, None]
    return P.reshape(5, N, 9)


def _frames(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(H, 3, 3) rotations and (H, 3) unit translations -> (H, 2, 3, 3) frames: R, and ``T = [b1, b2, t]``."""
    return torch.stack([R, torch.cat([tangent_basis(t), t[:, :, None]], 2)], 1)


def _linearize(frames: torch.Tensor, design: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed Sampson residuals (N, H) and their Jacobian (N, H, 5) from **one** matrix product.

    ``frames`` (H, 2, 3, 3) holds R and the translation frame ``T = [b1, b2, t]``. ``E = [t]x R`` and its five
    derivatives (``E [e_k]x`` for the rotation, ``[b_j]x R`` for the translation) are stacked as (H, 6, 9) and
    mapped by the design tensor at once; the residual ``r = V0 / sqrt(D)`` with ``D = V1² + V2² + V3² + V4²`` then
    has ``dr = (dV0 − V0 / D · Σ_c V_c dV_c) / sqrt(D)``, where ``Σ_c V_c V_c = D`` comes out of the same sum. The
    loop of :func:`refine_pose` is bound by per-operation overhead, so this counts operations, not flops.
    """
    H = frames.shape[0]
    _, N, _ = design.shape
    R, T = frames[:, 0], frames[:, 1]
    # [v]x R for the three columns v = b1, b2, t of T, column by column: (H, 3 [v], 3, 3)
    vxR = torch.linalg.cross(T.transpose(1, 2)[..., None].expand(H, 3, 3, 3), R[:, None].expand(H, 3, 3, 3), dim=2)
    dE_rot = vxR[:, 2:] @ _ROTATION_GENERATORS.to(R)  # (H, 3, 3, 3): E [e_k]x
    stacked = torch.cat([vxR[:, 2:], dE_rot, vxR[:, :2]], 1).reshape(H * 6, 9)
    phi = (design.reshape(5 * N, 9) @ stacked.T).view(5, N, H, 6)
    VdV = (phi[1:, ..., :1] * phi[1:]).sum(0)  # (N, H, 6): Σ_c V_c (V_c, dV_c)
    D = VdV[..., :1].clamp_min(1e-30)
    inv_sqrt_D = D.rsqrt()
    V0 = phi[0, ..., :1]
    r = V0 * inv_sqrt_D
    J = (phi[0, ..., 1:] - (V0 / D) * VdV[..., 1:]) * inv_sqrt_D
    return r[..., 0], J


def sampson_residuals_and_jacobian(
    R: torch.Tensor, t: torch.Tensor, design: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed Sampson residuals and their Jacobian w.r.t. the 5 local pose parameters.

    Args:
        R: (H, 3, 3), t: (H, 3) unit.
        design: (5, N, 9) from :func:`epipolar_design`.

    Returns:
        r: (H, N) residuals; J: (H, N, 5) derivatives w.r.t. (w1, w2, w3, b1, b2) at zero update, where the
        rotation is updated as ``R exp([w]x)`` and the translation as ``t + b1 u1 + b2 u2`` (then normalised) in
        the tangent basis of :func:`~mbp_cli.geometry.essential.tangent_basis`.
    """
    r, J = _linearize(_frames(R, t), design)
    return r.T, J.transpose(0, 1)


def robust_cost_and_weights(r2: torch.Tensor, scale: float, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-residual robust cost rho(r^2) and IRLS weights rho'(r^2) for squared residuals ``r2``."""
    s2 = scale * scale
    if loss == "cauchy":
        return s2 * torch.log1p(r2 / s2), 1.0 / (1.0 + r2 / s2)
    if loss == "truncated":
        inside = r2 < s2
        return torch.where(inside, r2, torch.full_like(r2, s2)), inside.to(r2.dtype)
    if loss == "huber":
        r = r2.sqrt()
        inside = r <= scale
        cost = torch.where(inside, r2, 2.0 * scale * r - s2)
        return cost, torch.where(inside, torch.ones_like(r), scale / r.clamp_min(1e-300))
    raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")


# Floor of the Cauchy curvature factor in :func:`normal_weights`: keeps the normal equations positive definite when
# most residuals lie beyond the scale.
MIN_CURVATURE = 0.2


def normal_weights(
    r2: torch.Tensor, scale: float, loss: str, weights: torch.Tensor, min_curvature: float = MIN_CURVATURE
) -> torch.Tensor:
    """Per-residual weights of the LM's normal matrix ``J^T diag(.) J``, from the IRLS weights ``rho'``.

    The cost's Hessian (up to the residuals' own curvature) weighs each residual by ``rho' + 2 rho'' r^2``. For the
    Cauchy loss that is ``rho' (1 - u) / (1 + u)`` with ``u = r^2 / scale^2``: dropping the factor (plain IRLS)
    over-weights the residuals near the scale and makes the LM converge only linearly (26 evaluations to a 1e-6
    relative cost change on a KITTI pair at half a pixel, against 17 with it, to a lower final cost; 10 pairs: 126
    evaluations against 74). The factor is floored where the loss turns concave (``u > 1``), and
    :func:`refine_pose` only uses it once a step has been accepted. Huber and truncated losses have ``rho'' = 0`` where they
    weigh anything, so their IRLS weights are already the Hessian's. ``min_curvature=-math.inf`` leaves the factor
    unfloored: the cost's own curvature (:func:`pose_covariance`).
    """
    if loss != "cauchy":
        return weights
    u = r2 / (scale * scale)
    return weights * ((1.0 - u) / (1.0 + u)).clamp_min(min_curvature)


def _cayley(a: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) rotations by the Cayley map of ``[a / 2]x`` (differentiable everywhere)."""
    A = skew(a * 0.5)
    factor = 2.0 / (1.0 + (a * a).sum(-1) * 0.25)
    return _EYE3.to(a) + factor[..., None, None] * (A + A @ A)


def _frame_update(step: torch.Tensor) -> torch.Tensor:
    """(H, 5) LM steps -> (H, 2, 3, 3) right-multiplied updates of the rotation and of the translation frame.

    The rotation moves by the Cayley retraction of ``w = step[:3]``; the translation frame ``T`` (a rotation whose
    third column is t, first two a basis of t⊥) by the Cayley retraction of ``(-b2, b1, 0)``, which moves t by
    ``b1 T e1 + b2 T e2`` to first order. Cayley's map ``(I - A)^-1 (I + A) = I + 2 (A + A²) / (1 + |a|²)`` with
    ``A = [w / 2]x`` has the exponential map's derivative at 0, so the LM is the same, but takes a tenth of
    Rodrigues' small-tensor operations (the refinement loop is bound by per-operation overhead).
    """
    return _cayley((step @ _STEP_TO_AXES.to(step)).view(-1, 2, 3))


def perturb_pose(R: torch.Tensor, t: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pose (R, t) moved by each of K steps of the LM's 5 local parameters (see :func:`refine_pose`).

    Args:
        R: (3, 3), t: (3,) unit; steps: (K, 5) as ``(w1, w2, w3, b1, b2)`` in radians.

    Returns:
        R: (K, 3, 3), t: (K, 3) unit.
    """
    moved = _frames(R[None], t[None]) @ _frame_update(steps)
    return moved[:, 0], moved[:, 1, :, 2]


def normal_matrix(
    R: torch.Tensor,
    t: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    scale: float,
    loss: str = "cauchy",
    point_weights: torch.Tensor | None = None,
    noise: KeypointNoise | None = None,
) -> torch.Tensor:
    """The robust LM's IRLS normal matrix ``J^T diag(w rho') J`` (H, 5, 5) at poses R (H, 3, 3), t (H, 3).

    Its eigenvectors of small eigenvalues are the directions in which the fit is weakly constrained: with a narrow
    field of view, the rotation-translation (bas-relief) ambiguity. ``noise`` as in :func:`refine_pose`.
    """
    _, J, w = _weighted_linearization(R, t, x0, x1, scale, loss, point_weights, noise)
    return _gram(J, w)


def _weighted_linearization(
    R: torch.Tensor,
    t: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    scale: float,
    loss: str,
    point_weights: torch.Tensor | None,
    noise: KeypointNoise | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residuals (N, H), their Jacobian (N, H, 5) and the IRLS weights ``w rho'`` (N, H) at poses R, t (unit)."""
    r, J = _linearize(_frames(R, t), epipolar_design(x0, x1, noise))
    w = robust_cost_and_weights(r * r, scale, loss)[1]
    if point_weights is not None:
        w = w * point_weights.to(R.dtype).expand(R.shape[0], x0.shape[0]).T
    return r, J, w


def _gram(J: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_n weights[n] J[n]^T J[n]`` per pose: (N, H, 5) and (N, H) -> (H, 5, 5)."""
    return (J * weights[..., None]).permute(1, 2, 0) @ J.transpose(0, 1)


def pose_covariance(
    R: torch.Tensor,
    t: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    scale: float,
    loss: str = "cauchy",
    point_weights: torch.Tensor | None = None,
    noise: KeypointNoise | None = None,
) -> torch.Tensor:
    """Sandwich covariance (H, 5, 5) of the robust fit's optimum at poses R (H, 3, 3), t (H, 3) unit.

    The fit minimises ``sum_i w_i rho(r_i^2)``. Its M-estimator covariance is ``A^-1 B A^-1`` with ``A`` half the
    cost's Gauss–Newton Hessian (the normal matrix of :func:`refine_pose` with the Cauchy curvature unfloored) and
    ``B = sum_i (w_i rho'_i r_i)^2 J_i J_i^T`` the spread of the per-correspondence gradients (a quarter of their
    outer products' sum): the factors of 2 cancel. ``B`` is measured from the residuals themselves, so the noise
    level need not be known and heteroscedastic or mis-modelled noise is accounted for, as long as the
    correspondences are independent and the pose is the fit's optimum. Coordinates: the LM's local step
    ``(w1, w2, w3, b1, b2)`` of :func:`sampson_residuals_and_jacobian` (radians; ``b`` moves the unit translation in
    its tangent plane). Arguments as :func:`refine_pose`.
    """
    t = t / t.norm(dim=-1, keepdim=True)
    r, J, w = _weighted_linearization(R, t, x0, x1, scale, loss, point_weights, noise)
    curvature = normal_weights(r * r, scale, loss, w, min_curvature=-math.inf)  # the cost's own, unfloored
    B = _gram(J, (w * r).square())  # sum of the per-correspondence gradients' outer products (over 4)
    eigenvalues, eigenvectors = torch.linalg.eigh(_gram(J, curvature))
    # A direction the fit does not constrain at all (fewer than five matches, a degenerate configuration: curvature
    # below 1e-12 of the largest) has no gradient spread either, so the sandwich would give it zero variance. It is
    # undetermined: it gets the variance of an angle known to within pi radians.
    free = eigenvalues <= eigenvalues[..., -1:].clamp_min(1e-300) * 1e-12
    inverse = torch.where(free, 0.0, 1.0 / eigenvalues.clamp_min(1e-300))
    A_inv = (eigenvectors * inverse[..., None, :]) @ eigenvectors.transpose(-1, -2)
    unknown = (eigenvectors * (free * math.pi**2)[..., None, :]) @ eigenvectors.transpose(-1, -2)
    return A_inv @ B @ A_inv + unknown


def pose_sigma_deg(covariance: torch.Tensor) -> torch.Tensor:
    """(H, 2) root-mean-square rotation and translation-direction errors, degrees, from (H, 5, 5) covariances.

    With the local step ``(w, b)`` of :func:`pose_covariance`, the rotation error is ``|w|`` and the translation
    direction's is ``|b|`` (to first order), so their expected squares are the traces of the two diagonal blocks.
    """
    rotation = covariance[..., :3, :3].diagonal(dim1=-2, dim2=-1).sum(-1)
    translation = covariance[..., 3:, 3:].diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.rad2deg(torch.stack([rotation, translation], -1).clamp_min(0.0).sqrt())


def refine_pose(
    R: torch.Tensor,
    t: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    scale: float,
    options: RefineOptions = RefineOptions(),
    point_weights: torch.Tensor | None = None,
    noise: KeypointNoise | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Robust Levenberg–Marquardt on the essential manifold, batched over poses.

    Args:
        R: (H, 3, 3) rotations cam1_from_cam0; t: (H, 3) translations (normalised inside).
        x0, x1: (N, 2) normalized points of image 0 and image 1.
        scale: robust-loss scale in normalized units (a pixel threshold divided by the focal length).
        options: iteration count, loss and tolerances.
        point_weights: optional (H, N) or (N,) non-negative weights multiplying each point's cost (e.g. an
            inlier mask for local optimisation).
        noise: optional relative keypoint noise ``(sigma0, sigma1)``, each (N,) (:func:`keypoint_noise`): the
            residuals become the heteroscedastic Sampson distances of :func:`epipolar_design`.

    Returns:
        R: (H, 3, 3), t: (H, 3) unit, and the final robust cost (H,). A step is only taken where it lowers the
        cost, so the cost never increases.
    """
    t = t / t.norm(dim=-1, keepdim=True)
    H = R.shape[0]
    pw = None if point_weights is None else point_weights.to(R.dtype).expand(H, x0.shape[0]).T  # (N, H)
    design = epipolar_design(x0, x1, noise)
    # frames[:, 0] = R, frames[:, 1] = T = [b1, b2, t]: both updated by one batched product per step.
    frames = _frames(R, t)

    def evaluate(frames_: torch.Tensor) -> tuple[torch.Tensor, ...]:
        r, J = _linearize(frames_, design)
        r2 = r * r
        rho, w = robust_cost_and_weights(r2, scale, options.loss)
        if pw is not None:
            rho, w = rho * pw, w * pw
        # (2, N, H): the gradient's IRLS weights and the normal matrix's curvature-corrected ones
        return r, J, torch.stack([w, normal_weights(r2, scale, options.loss, w)]), rho.sum(0)

    r, J, w, cost = evaluate(frames)
    lam = torch.full((H,), options.initial_lambda, dtype=R.dtype, device=R.device)
    active = torch.ones(H, dtype=torch.bool, device=R.device)
    # From a far start the IRLS normal matrix takes the safer first step; the curvature-corrected one (normal_weights)
    # converges faster near the optimum but overshoots where most residuals lie beyond the scale. Each pose switches
    # to it after its first accepted step. `newton` is tracked as a tensor only while the poses disagree.
    newton: bool | torch.Tensor = False
    for _ in range(options.max_iterations):
        # The linearisation at the current point is reused from the last accepted evaluation. One batched product
        # gives the normal matrix A (rows 0-4) and minus the gradient (row 5): [J w_A | -r w_g]^T J.
        w_A = w[1] if newton is True else w[0] if newton is False else torch.where(newton, w[1], w[0])
        K = torch.cat([J * w_A[..., None], (r * w[0]).neg_()[..., None]], -1)  # (N, H, 6)
        M = K.permute(1, 2, 0) @ J.transpose(0, 1)  # (H, 6, 5)
        A, minus_g = M[:, :5], M[:, 5:].transpose(1, 2)
        active = active & (minus_g.abs().amax((1, 2)) > options.gradient_tol)
        if not bool(active.any()):
            break
        diagonal = A.diagonal(dim1=-2, dim2=-1)
        diagonal.add_(diagonal.clamp_min(1e-12) * lam[:, None])
        step = torch.linalg.solve_ex(A, minus_g)[0].squeeze(-1).nan_to_num_(0.0, 0.0, 0.0)
        frames_new = frames @ _frame_update(step)
        r_new, J_new, w_new, cost_new = evaluate(frames_new)
        better = active & (cost_new < cost)
        # A rejected step that would change the cost by less than the tolerance also ends the search: near the
        # optimum rounding makes such steps fail, and raising the damping until the step vanishes only costs time.
        done = ((cost - cost_new).abs() <= options.cost_tol * cost) | (step.norm(dim=-1) <= options.step_tol)
        # Most steps are accepted or rejected for every pose at once (always with one pose): no blending then.
        if bool(better.all()):
            frames, r, J, w, cost = frames_new, r_new, J_new, w_new, cost_new
            newton = True
        elif bool(better.any()):
            frames = torch.where(better[:, None, None, None], frames_new, frames)
            r = torch.where(better, r_new, r)
            J = torch.where(better[:, None], J_new, J)
            w = torch.where(better, w_new, w)
            cost = torch.where(better, cost_new, cost)
            newton = better if newton is False else True if newton is True else newton | better
        lam = (lam * torch.where(better, 0.1, 10.0)).clamp_(1e-10, 1e10)
        active = active & ~done
        if not bool(active.any()):
            break
    return frames[:, 0], frames[:, 1, :, 2], cost


def refine_pose_implicit(
    R: torch.Tensor,
    t: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    scale: float,
    point_weights: torch.Tensor,
    options: RefineOptions = RefineOptions(),
    noise: KeypointNoise | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted robust LM whose result carries the implicit-function-theorem derivative w.r.t. the weights.

    The LM of :func:`refine_pose` runs without autograd to the optimum ``p*(w)`` of
    ``C(p, w) = sum_n w_n rho(r_n(p)^2)``, where the gradient ``g(p, w) = dC/dp`` vanishes. The implicit function
    theorem gives ``dp*/dw = -H^-1 dg/dw`` with the Hessian ``H = dg/dp`` at the optimum. This returns the optimum
    moved by the Newton step ``delta(w) = -H^-1 g(p*, w)`` with ``H`` held constant: its value is ``p*`` (the step
    is zero at a converged optimum) and its derivative is exactly the IFT's, so the weights can be trained
    through the final fit with a loss on the refined pose (MinBackProp's idea applied to the LM instead of the
    minimal solver). ``H`` is the exact Hessian of the robust cost (autograd in the LM's own chart,
    :func:`perturb_pose`; at a critical point it does not depend on the chart), not the Gauss-Newton matrix.

    Args:
        R: (3, 3) rotation to start from; t: (3,) translation.
        x0, x1: (N, 2) normalized points.
        scale: robust-loss scale in normalized units.
        point_weights: (N,) non-negative weights, the tensor to differentiate with respect to.
        options: the LM's options (``loss`` must be smooth: ``cauchy`` or ``huber``).
        noise: optional relative keypoint noise, as in :func:`refine_pose` (the heteroscedastic Sampson distance).

    Returns:
        R: (3, 3), t: (3,) unit, differentiable with respect to ``point_weights``.
    """
    if options.loss == "truncated":
        raise ValueError("the truncated loss has no derivative at the threshold; use cauchy or huber")
    with torch.no_grad():
        R_opt, t_opt, _ = refine_pose(R[None], t[None], x0, x1, scale, options, point_weights.detach()[None], noise)
    R_opt, t_opt = R_opt[0].to(point_weights.device), t_opt[0].to(point_weights.device)
    design = epipolar_design(x0.to(R_opt), x1.to(R_opt), noise)
    weights = point_weights.to(R_opt.dtype)

    def cost(step: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        E = essential_from_pose(*perturb_pose(R_opt, t_opt, step[None]))[0]
        quantities = design @ E.reshape(9)  # (5, N): the algebraic residual and the four derivatives
        r2 = quantities[0] ** 2 / (quantities[1:] ** 2).sum(0).clamp_min(1e-30)
        return (robust_cost_and_weights(r2, scale, options.loss)[0] * w).sum()

    zero = torch.zeros(5, dtype=R_opt.dtype, device=R_opt.device)
    hessian = torch.autograd.functional.hessian(lambda s: cost(s, weights.detach()), zero)
    # The Hessian is held constant: only the gradient carries the weights' derivative.
    with torch.enable_grad():
        step_var = zero.clone().requires_grad_(True)
        gradient = torch.autograd.grad(cost(step_var, weights), step_var, create_graph=True)[0]
    eye = torch.eye(5, dtype=R_opt.dtype, device=R_opt.device)
    damping = 1e-12 * hessian.diagonal().abs().max().clamp_min(1e-30)
    step = -torch.linalg.solve(hessian + damping * eye, gradient)
    R_new, t_new = perturb_pose(R_opt, t_opt, step[None])
    return R_new[0], t_new[0]
