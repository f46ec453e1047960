"""Gradients through the 5-point solver: implicit function theorem (MinBackProp), DDN, or plain autograd.

Every real root ``E`` of a sample ``x = (x0, x1)`` (5 correspondences, 20 numbers) satisfies the 16 equations
``F(E, x) = 0`` (method.md §5):

- rows 0-4: ``x1ᵢᵀ E x0ᵢ = 0``;  row 5: ``‖E‖²_F − 1 = 0``;
- rows 6-14: ``2 E Eᵀ E − tr(E Eᵀ) E = 0``;  row 15: ``det E = 0``.

``J_E = ∂F/∂E`` (16×9) has rank 9 at a regular root, so ``dE/dx = −J_E⁺ J_x`` (any consistent full-rank row set
gives the same derivative). Only the epipolar rows depend on ``x``, so the vector–Jacobian product needs the
first five entries of ``μ = (J_E⁺)ᵀ ḡ``: ``x̄0ᵢ = −μᵢ (Eᵀ x1ᵢ)₁,₂`` and ``x̄1ᵢ = −μᵢ (E x0ᵢ)₁,₂``. The IFT
mode gets those five from a 5×5 system on the tangent space that the 11 constraint rows leave free
(:func:`ift_vjp`), the same numbers as the 16×9 least squares (tested against :func:`equation_jacobians`) at a
fraction of its cost.

The DDN mode (Gould et al. 2022) treats E as the minimiser of ``f = mean_i (x1ᵢᵀ E x0ᵢ)²`` subject to the
norm and the nine **unsquared** trace equations and differentiates the KKT conditions. At an exact root the
multipliers vanish, which leaves the KKT system ``[[H, Aᵀ], [A, 0]]`` with ``H = ∂²f/∂E²`` (rank 5) and ``A``
the constraint Jacobian (rank 4 on the manifold); it has the same solution as the IFT, at a higher price.

Autograd differentiates a solver's own operations, as ∇-RANSAC did: it runs kornia's ``find_essential``
(Nistér's elimination, a companion-matrix eigendecomposition and Newton-polished roots) under autograd. Exact
where defined, but its backward has ``1/(λᵢ − λⱼ)`` terms that explode for close roots, and it costs the forward
of ~900 small operations again. (Our own solver's complete QR and complex eigenvectors have no usable autograd
derivative, which is one more reason for the implicit backward.)

Conventions: ``x1ᵀ E x0 = 0`` on normalized coordinates; ``vec(E)`` row-major.
"""

from __future__ import annotations

from typing import Any

import torch

from mbp_cli.geometry.essential import cofactor, homogeneous, null_vector, tangent_basis
from mbp_cli.geometry.solver import MAX_ROOTS, SAMPLE_SIZE, five_point

BACKPROP_MODES = ("ift", "ddn", "autograd")
NUM_EQUATIONS = 16


def essential_equations(E: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The 16 equations ``F(E, x)`` that every real root of the 5-point problem satisfies.

    Args:
        E: (..., 3, 3) essential matrices; x0, x1: (..., 5, 2) the sample's normalized points.

    Returns:
        (..., 16): 5 epipolar, 1 norm, 9 trace (row-major), 1 determinant.
    """
    X0, X1 = homogeneous(x0), homogeneous(x1)
    epipolar = torch.einsum("...ni,...ij,...nj->...n", X1, E, X0)
    norm = (E * E).sum((-2, -1)).unsqueeze(-1) - 1.0
    EEt = E @ E.transpose(-1, -2)
    trace = 2.0 * EEt @ E - EEt.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None] * E
    return torch.cat([epipolar, norm, trace.flatten(-2), torch.linalg.det(E).unsqueeze(-1)], -1)


def equation_jacobians(
    E: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Jacobians of :func:`essential_equations`.

    Args:
        E: (M, 3, 3); x0, x1: (M, 5, 2).

    Returns:
        J_E: (M, 16, 9) ``∂F/∂vec(E)``.
        dx0: (M, 5, 2) ``∂F_i/∂x0_i`` of epipolar row i, i.e. ``(Eᵀ x1ᵢ)₁,₂`` (the other rows do not depend on x).
        dx1: (M, 5, 2) ``∂F_i/∂x1_i`` = ``(E x0ᵢ)₁,₂``.
    """
    M = E.shape[0]
    X0, X1 = homogeneous(x0), homogeneous(x1)
    epipolar = (X1.unsqueeze(-1) * X0.unsqueeze(-2)).reshape(M, SAMPLE_SIZE, 9)
    norm = 2.0 * E.reshape(M, 1, 9)
    # T = 2 E Eᵀ E − tr(E Eᵀ) E;  ∂(E Eᵀ E)_ab / ∂E_cd = δ_ac (EᵀE)_db + E_ad E_cb + δ_bd (E Eᵀ)_ac,
    # ∂(tr(E Eᵀ) E)_ab / ∂E_cd = 2 E_cd E_ab + tr(E Eᵀ) δ_ac δ_bd. As 9×9 blocks (rows ab, columns cd):
    # I ⊗ EᵀE, a "swap" term, E Eᵀ ⊗ I, the outer product of vec(E) and tr(E Eᵀ) I₉.
    EtE = E.transpose(-1, -2) @ E
    EEt = E @ E.transpose(-1, -2)
    trace = EEt.diagonal(dim1=-2, dim2=-1).sum(-1)
    e = E.reshape(M, 9)
    outer = e[:, :, None] * e[:, None, :]  # [(a, d), (c, b)] = E_ad E_cb
    cubic = outer.view(M, 3, 3, 3, 3).permute(0, 1, 4, 3, 2).reshape(M, 9, 9)  # the swap term
    blocks = cubic.view(M, 3, 3, 3, 3)  # [a, b, c, d]
    for i in range(3):
        blocks[:, i, :, i, :] += EtE  # δ_ac (EᵀE)_bd
        blocks[:, :, i, :, i] += EEt  # (E Eᵀ)_ac δ_bd
    trace_rows = 2.0 * (cubic - outer)
    trace_rows.diagonal(dim1=-2, dim2=-1).sub_(trace[:, None])
    det = cofactor(E).reshape(M, 1, 9)
    J_E = torch.cat([epipolar, norm, trace_rows, det], 1)
    dx0 = (X1 @ E)[..., :2]  # (Eᵀ x1)ᵀ = x1ᵀ E
    dx1 = (X0 @ E.transpose(-1, -2))[..., :2]
    return J_E, dx0, dx1


def ift_vjp(
    E: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, grad_E: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x̄ = −J_xᵀ (J_E⁺)ᵀ ḡ`` for M roots, batched, by a 5×5 solve on the essential manifold's tangent space.

    The 16×9 system ``J_E dE = −J_x dx`` is consistent at a regular root, so its least-squares solution is its
    exact solution. Its 11 constraint rows (norm, trace, det) do not depend on x and span the normal space of
    the unit-norm essential manifold (rank 4); their null space, the tangent space, is spanned by
    ``[eₖ]ₓE`` (k = 1, 2, 3) and ``E[bⱼ]ₓ`` (``b₁, b₂ ⊥ v``, ``E v = 0``), the columns of ``G`` (9×5). With
    ``dE = G a`` the epipolar rows give ``(Q G) a = −J_x dx`` (``Q`` the 5 epipolar rows of ``J_E``), hence
    ``μ = (J_E⁺)ᵀ ḡ`` restricted to the epipolar rows solves ``(Q G)ᵀ μ = Gᵀ ḡ``: the same numbers as the
    16-equation least squares (tested against it) for a 5×5 LU instead of 16×9 normal equations. Every entry
    is a scalar triple product: ``(Q G)ᵢₖ = eₖ · (E x0ᵢ × x1ᵢ)``, ``(Q G)ᵢ,₃₊ⱼ = bⱼ · (x0ᵢ × Eᵀx1ᵢ)``,
    ``(Gᵀḡ)ₖ = eₖ · Σ_c E_{:c} × ḡ_{:c}``, ``(Gᵀḡ)₃₊ⱼ = bⱼ · Σ_r ḡ_{r:} × E_{r:}``.

    A root whose ``Q G`` is singular to working precision (a degenerate sample: LU pivots spanning more than
    1e8, or a failed factorisation) gets a zero gradient and ``regular = False`` instead of a non-finite one.

    Args:
        E: (M, 3, 3) roots (any scale; essential); x0, x1: (M, 5, 2) their samples; grad_E: (M, 3, 3) upstream
            gradients.

    Returns:
        grad_x0, grad_x1: (M, 5, 2); regular: (M,) bool.
    """
    X0, X1 = homogeneous(x0), homogeneous(x1)
    Ex0 = X0 @ E.transpose(1, 2)  # (M, 5, 3) rows E x0ᵢ
    Etx1 = X1 @ E  # rows Eᵀ x1ᵢ
    B = tangent_basis(null_vector(E))  # (M, 3, 2) orthonormal basis of v⊥, E v = 0
    QG = torch.cat([torch.linalg.cross(Ex0, X1), torch.linalg.cross(X0, Etx1) @ B], -1)  # (M, 5, 5)
    left = torch.linalg.cross(E, grad_E, dim=1).sum(-1)  # Σ_c E_{:c} × ḡ_{:c}
    right = torch.linalg.cross(grad_E, E, dim=2).sum(1)  # Σ_r ḡ_{r:} × E_{r:}
    Gt_g = torch.cat([left, (B * right[:, :, None]).sum(1)], -1)
    LU, pivots, info = torch.linalg.lu_factor_ex(QG.transpose(1, 2))
    u = LU.diagonal(dim1=1, dim2=2).abs()
    regular = (info == 0) & torch.isfinite(u).all(-1) & (u.amin(-1) > 1e-8 * u.amax(-1))
    LU = torch.where(regular[:, None, None], LU, torch.eye(SAMPLE_SIZE, dtype=E.dtype, device=E.device))
    mu = torch.linalg.lu_solve(LU, pivots, Gt_g[..., None])[..., 0]
    mu = torch.where(regular[:, None], mu, torch.zeros_like(mu))
    # x̄0ᵢ = −μᵢ ∂(x1ᵢᵀ E x0ᵢ)/∂x0ᵢ = −μᵢ (Eᵀ x1ᵢ)₁,₂ and likewise for x1ᵢ
    return -mu[..., None] * Etx1[..., :2], -mu[..., None] * Ex0[..., :2], regular


def ddn_vjp(
    E: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, grad_E: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DDN vector–Jacobian product from the KKT system of the constrained least-squares problem.

    ``f(x, E) = mean_i (x1ᵢᵀ E x0ᵢ)²``, ``h(E) = [‖E‖² − 1, 2EEᵀE − tr(EEᵀ)E] = 0`` (10 rows, rank 4). Solves
    ``[[H, Aᵀ], [A, 0]] [u; v] = [ḡ; 0]`` (minimum-norm least squares: the redundant rows of A make the
    multiplier block singular) and returns ``x̄ = −Bᵀ u`` with ``B = ∂²f/∂E∂x``.

    Args and returns as :func:`ift_vjp`.
    """
    M = E.shape[0]
    J_E, dx0, dx1 = equation_jacobians(E, x0, x1)
    q = J_E[:, :SAMPLE_SIZE]  # (M, 5, 9) gradients of the epipolar residuals
    H = (2.0 / SAMPLE_SIZE) * q.transpose(1, 2) @ q
    A = J_E[:, SAMPLE_SIZE : SAMPLE_SIZE + 10]
    zeros = torch.zeros(M, 10, 10, dtype=E.dtype, device=E.device)
    K = torch.cat([torch.cat([H, A.transpose(1, 2)], 2), torch.cat([A, zeros], 2)], 1)  # (M, 19, 19)
    rhs = torch.cat([grad_E.reshape(M, 9), torch.zeros(M, 10, dtype=E.dtype, device=E.device)], 1)
    driver = "gelsd" if E.device.type == "cpu" else None
    u = torch.linalg.lstsq(K, rhs.unsqueeze(-1), driver=driver).solution[:, :9, 0]
    regular = torch.isfinite(u).all(-1)
    u = torch.where(regular[:, None], u, torch.zeros_like(u))
    # B dx = (2/5) Σ_i q_i (∂r_i/∂x · dx): the epipolar residuals vanish at an exact root.
    s = (2.0 / SAMPLE_SIZE) * (q @ u.unsqueeze(-1)).squeeze(-1)  # (M, 5)
    return -s[..., None] * dx0, -s[..., None] * dx1, regular


_VJPS = {"ift": ift_vjp, "ddn": ddn_vjp}


class _FivePointImplicit(torch.autograd.Function):
    """Forward: :func:`five_point`. Backward: the IFT or DDN vector–Jacobian product per valid root."""

    @staticmethod
    def forward(points0: torch.Tensor, points1: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        return five_point(points0.detach(), points1.detach())

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        points0, points1, mode = inputs
        E, valid = output
        ctx.mode = mode
        ctx.save_for_backward(points0, points1, E, valid)
        ctx.mark_non_differentiable(valid)

    @staticmethod
    def backward(ctx: Any, grad_E: torch.Tensor, _grad_valid: Any) -> tuple[torch.Tensor, torch.Tensor, None]:
        points0, points1, E, valid = ctx.saved_tensors
        B = points0.shape[0]
        # Only roots that receive a gradient cost anything (training selects one root per sample). Gradients
        # are computed in float64 whatever the input dtype: J_E is cubic in E and squares badly.
        sample, root = (valid & grad_E.flatten(-2).ne(0).any(-1)).nonzero(as_tuple=True)
        x0 = points0.detach().double()[sample]
        x1 = points1.detach().double()[sample]
        g0, g1, _ = _VJPS[ctx.mode](E.double()[sample, root], x0, x1, grad_E.double()[sample, root])
        grad0 = torch.zeros(B, SAMPLE_SIZE, 2, dtype=torch.float64, device=points0.device).index_add_(0, sample, g0)
        grad1 = torch.zeros(B, SAMPLE_SIZE, 2, dtype=torch.float64, device=points0.device).index_add_(0, sample, g1)
        return grad0.to(points0.dtype), grad1.to(points1.dtype), None


def five_point_differentiable(
    points0: torch.Tensor, points1: torch.Tensor, backprop: str = "ift"
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`five_point` with gradients to the points by ``backprop`` (``ift``, ``ddn`` or ``autograd``).

    Args:
        points0, points1: (B, 5, 2) normalized points (may require grad).
        backprop: gradient method; see the module docstring.

    Returns:
        E: (B, 10, 3, 3) unit-norm roots (zeros where invalid); valid: (B, 10) bool. Invalid slots carry no
        gradient. A root whose J_E is singular (a degenerate sample) gets a zero gradient rather than a
        non-finite one in the ``ift`` and ``ddn`` modes.
    """
    if backprop not in BACKPROP_MODES:
        raise ValueError(f"unknown backprop mode {backprop!r}; choose one of {', '.join(BACKPROP_MODES)}")
    if backprop == "autograd":
        return _kornia_five_point(points0, points1)
    return _FivePointImplicit.apply(points0, points1, backprop)


def _kornia_five_point(points0: torch.Tensor, points1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """kornia's 5-point solver under autograd, with its NaN slots masked to zeros (no gradient through them)."""
    from kornia.geometry.epipolar import find_essential

    E = find_essential(points0.double(), points1.double())
    norm = E.detach().flatten(-2).norm(dim=-1)
    valid = torch.isfinite(E.detach()).flatten(-2).all(-1) & (norm - 1.0).abs().lt(1e-6)
    E = torch.where(valid[..., None, None], E.nan_to_num(), torch.zeros_like(E))
    return E.to(points0.dtype), valid


def select_root(E: torch.Tensor, valid: torch.Tensor, E_gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the root closest to the ground truth, up to sign and scale, flipped to its sign.

    ``Ê = E_gt / ‖E_gt‖``, ``j* = argmin_j min(‖E_j − Ê‖, ‖E_j + Ê‖)``, then ``E_j*`` takes the sign of ``Ê``
    (method.md §4).

    Args:
        E: (B, 10, 3, 3) roots; valid: (B, 10); E_gt: (B, 3, 3) or (3, 3), any scale and sign.

    Returns:
        E_best: (B, 3, 3) (zeros where a sample has no valid root); has_root: (B,) bool.
    """
    E_gt = E_gt.expand(E.shape[0], 3, 3)
    E_hat = E_gt / E_gt.flatten(-2).norm(dim=-1).clamp_min(1e-300)[..., None, None]
    plus = (E - E_hat[:, None]).flatten(-2).norm(dim=-1)
    minus = (E + E_hat[:, None]).flatten(-2).norm(dim=-1)
    distance = torch.minimum(plus, minus).masked_fill(~valid, float("inf"))
    j = distance.argmin(-1)
    rows = torch.arange(E.shape[0], device=E.device)
    sign = torch.where(minus[rows, j] < plus[rows, j], -1.0, 1.0).to(E.dtype)
    has_root = valid.any(-1)
    E_best = E[rows, j] * (sign * has_root.to(E.dtype))[:, None, None]
    return E_best, has_root


__all__ = [
    "BACKPROP_MODES",
    "MAX_ROOTS",
    "NUM_EQUATIONS",
    "ddn_vjp",
    "equation_jacobians",
    "essential_equations",
    "five_point_differentiable",
    "ift_vjp",
    "select_root",
]
