"""Minimal solver: the 5-point essential-matrix problem, batched, as a Gröbner-basis action matrix.

Stewénius, Engels & Nistér (2006), written as a few batched tensor operations instead of kornia's ~900 small
ones (its ``find_essential`` stays the test oracle):

1. The five epipolar constraints ``x1ᵢᵀ E x0ᵢ = 0`` are linear in ``vec(E)``; their null space gives
   ``E = x·N₀ + y·N₁ + z·N₂ + N₃`` (QR of the 9×5 constraint matrix).
2. ``det E = 0`` and the nine trace constraints ``2 E Eᵀ E − tr(E Eᵀ) E = 0`` are cubic in ``(x, y, z)``:
   a 10×20 coefficient matrix over the 20 monomials of degree ≤ 3, built with two matrix products and fixed
   0/1 monomial maps.
3. Eliminating the 10 cubic monomials leaves the quotient basis ``b = [x², xy, xz, y², yz, z², x, y, z, 1]``;
   multiplication by ``x`` acts on it as a 10×10 matrix whose eigenvectors are ``b`` at the 10 (complex)
   solutions. Real eigenvalues give the real essential matrices.

Convention: ``x1ᵀ E x0 = 0`` on normalized coordinates, so ``points0`` are the image-0 points.
"""

from __future__ import annotations

import itertools

import torch

MAX_ROOTS = 10
SAMPLE_SIZE = 5

# Exponents (of x, y, z) of the monomials of degree <= 3: the 10 cubic ones first (eliminated), then the
# quotient basis. The basis is closed under multiplication by x except for its quadratic part, whose products
# are cubic monomials, which the elimination expresses in the basis.
_CUBIC = ((3, 0, 0), (2, 1, 0), (2, 0, 1), (1, 2, 0), (1, 1, 1), (1, 0, 2), (0, 3, 0), (0, 2, 1), (0, 1, 2), (0, 0, 3))
_BASIS = ((2, 0, 0), (1, 1, 0), (1, 0, 1), (0, 2, 0), (0, 1, 1), (0, 0, 2), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0))
_MONOMIALS = _CUBIC + _BASIS
_LINEAR = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0))  # the coefficients x, y, z, 1 of N₀..N₃


def _add(*exponents: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sum(e[a] for e in exponents) for a in range(3))


def _monomial_maps() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed 0/1 matrices that collect products of the linear terms into monomials.

    Returns:
        to_quadratic: (144, 90) ordered pairs ``(m, i), (n, k)`` of ``G = rows·rowsᵀ`` -> ``(E Eᵀ)ᵢₖ`` per
            quadratic monomial (the basis order, ``_BASIS``).
        to_cubic: (40, 20) (quadratic monomial, linear term) -> monomial of ``_MONOMIALS``.
        triple_to_cubic: (64, 20) ordered triples of linear terms -> monomial.
        action_unit: (4, 10) the rows of the action matrix for ``x·x, x·y, x·z, x·1``, which stay in the basis.
    """
    to_quadratic = torch.zeros(4, 3, 4, 3, 10, 3, 3, dtype=torch.float64)
    for m, n in itertools.product(range(4), repeat=2):
        q = _BASIS.index(_add(_LINEAR[m], _LINEAR[n]))
        for i, k in itertools.product(range(3), repeat=2):
            to_quadratic[m, i, n, k, q, i, k] = 1.0
    to_cubic = torch.zeros(10, 4, 20, dtype=torch.float64)
    for q, m in itertools.product(range(10), range(4)):
        to_cubic[q, m, _MONOMIALS.index(_add(_BASIS[q], _LINEAR[m]))] = 1.0
    triple_to_cubic = torch.zeros(4, 4, 4, 20, dtype=torch.float64)
    for m, n, p in itertools.product(range(4), repeat=3):
        triple_to_cubic[m, n, p, _MONOMIALS.index(_add(_LINEAR[m], _LINEAR[n], _LINEAR[p]))] = 1.0
    action_unit = torch.zeros(4, 10, dtype=torch.float64)
    for row, monomial in enumerate(_BASIS[6:]):
        action_unit[row, _BASIS.index(_add(monomial, (1, 0, 0)))] = 1.0
    # x times the six quadratic basis monomials must be the first six cubic ones, in order (rows 0-5 of the
    # action matrix come straight from the elimination).
    assert all(_add(m, (1, 0, 0)) == _CUBIC[i] for i, m in enumerate(_BASIS[:6]))
    return to_quadratic.reshape(144, 90), to_cubic.reshape(40, 20), triple_to_cubic.reshape(64, 20), action_unit


_TO_QUADRATIC, _TO_CUBIC, _TRIPLE_TO_CUBIC, _ACTION_UNIT = _monomial_maps()
_CROSS_A, _CROSS_B = [1, 2, 0], [2, 0, 1]


def epipolar_null_space(points0: torch.Tensor, points1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Basis of the essential matrices that satisfy five epipolar constraints.

    Args:
        points0, points1: (B, 5, 2) normalized points.

    Returns:
        N: (B, 4, 3, 3) orthonormal (in Frobenius) basis with ``x1ᵢᵀ Nₖ x0ᵢ = 0``.
        full_rank: (B,) bool, False where the five constraints are (numerically) dependent, so that the
            solution set is not the 4-dimensional space ``N`` spans.
    """
    B = points0.shape[0]
    X0 = torch.cat([points0, torch.ones_like(points0[..., :1])], -1)
    X1 = torch.cat([points1, torch.ones_like(points1[..., :1])], -1)
    constraints = (X1.unsqueeze(-1) * X0.unsqueeze(-2)).reshape(B, SAMPLE_SIZE, 9)
    q, r = torch.linalg.qr(constraints.transpose(1, 2), mode="complete")
    diag = r.diagonal(dim1=-2, dim2=-1).abs()
    full_rank = diag.amin(-1) > 1e-10 * diag.amax(-1).clamp_min(1e-300)
    N = q[:, :, SAMPLE_SIZE:]  # (B, 9, 4)
    return N.transpose(1, 2).reshape(B, 4, 3, 3), full_rank


def essential_constraint_matrix(N: torch.Tensor) -> torch.Tensor:
    """Coefficients of ``2 E Eᵀ E − tr(E Eᵀ) E = 0`` (9 rows) and ``det E = 0`` for ``E = xN₀ + yN₁ + zN₂ + N₃``.

    Args:
        N: (B, 4, 3, 3) float64 null-space basis.

    Returns:
        (B, 10, 20) over the monomials ``_MONOMIALS`` (the 10 cubic ones first).
    """
    B = N.shape[0]
    maps = {k: v.to(N.device) for k, v in (("q", _TO_QUADRATIC), ("c", _TO_CUBIC), ("t", _TRIPLE_TO_CUBIC))}
    rows = N.reshape(B, 12, 3)
    # E Eᵀ per quadratic monomial: (B, 10, 3, 3)
    EEt = ((rows @ rows.transpose(1, 2)).reshape(B, 144) @ maps["q"]).reshape(B, 10, 3, 3)
    trace = EEt.diagonal(dim1=-2, dim2=-1).sum(-1)
    columns = N.permute(0, 2, 1, 3)  # (B, 3 [k], 4 [m], 3 [l])
    EEtE = (EEt.reshape(B, 30, 3) @ columns.reshape(B, 3, 12)).reshape(B, 10, 3, 4, 3)  # [q, i, m, l]
    trace_E = trace[:, :, None, None, None] * columns[:, None]
    trace_rows = (2.0 * EEtE - trace_E).permute(0, 2, 4, 1, 3).reshape(B, 9, 40) @ maps["c"]
    # det E = row₀ · (row₁ × row₂)
    r1, r2 = N[:, :, 1], N[:, :, 2]
    cross = r1[:, :, None, _CROSS_A] * r2[:, None, :, _CROSS_B] - r1[:, :, None, _CROSS_B] * r2[:, None, :, _CROSS_A]
    det = (N[:, :, 0] @ cross.reshape(B, 16, 3).transpose(1, 2)).reshape(B, 64) @ maps["t"]  # [p, (m, n)]
    return torch.cat([trace_rows, det.unsqueeze(1)], 1)


def five_point(points0: torch.Tensor, points1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All real essential matrices through each 5-correspondence sample.

    Args:
        points0: (B, 5, 2) normalized points in image 0.
        points1: (B, 5, 2) normalized points in image 1.

    Not differentiable by autograd (the complete QR has no derivative): training goes through
    :func:`mbp_cli.geometry.backprop.five_point_differentiable`.

    Returns:
        E: (B, 10, 3, 3) solutions with unit Frobenius norm, in the dtype of the input (computed in float64).
            Slots without a real root hold zeros (never the real part of a complex root, never another sample's
            model).
        valid: (B, 10) bool mask of the slots holding a real solution. A rank-deficient sample has none.
    """
    if points0.shape != points1.shape or points0.shape[-2:] != (SAMPLE_SIZE, 2) or points0.dim() != 3:
        raise ValueError(
            f"five_point expects (B, 5, 2) point sets, got {tuple(points0.shape)} and {tuple(points1.shape)}"
        )
    B = points0.shape[0]
    N, full_rank = epipolar_null_space(points0.double(), points1.double())
    C = essential_constraint_matrix(N)
    # Cubic monomials = -A · basis. A singular cubic block (a degenerate sample) is flagged, never raised.
    A, info = torch.linalg.solve_ex(C[:, :, :10], C[:, :, 10:])
    ok = full_rank & (info == 0) & torch.isfinite(A).flatten(1).all(-1)
    A = torch.where(ok[:, None, None], A, torch.zeros_like(A))
    action = torch.cat([-A[:, :6], _ACTION_UNIT.to(A.device).expand(B, 4, 10)], 1)
    # A failed sample gets a harmless diagonal action matrix (distinct eigenvalues, so that no eigen-backward
    # divides by zero); its roots are masked out below.
    benign = torch.diag(torch.arange(1, MAX_ROOTS + 1, dtype=A.dtype, device=A.device))
    action = torch.where(ok[:, None, None], action, benign)
    # Rows of `action` give x·bᵢ in the basis b, so action · b(sol) = x(sol) · b(sol): eigenvectors are b.
    eigenvalues, eigenvectors = torch.linalg.eig(action)
    one = eigenvectors[:, 9]  # the entry of the monomial 1
    xyz = (eigenvectors[:, 6:9] / one.unsqueeze(1)).real  # (B, 3, 10)
    real = eigenvalues.imag.abs() <= 1e-8 * (1.0 + eigenvalues.real.abs())
    real &= one.abs() > 1e-12 * eigenvectors.abs().amax(1)
    coefficients = torch.cat([xyz.transpose(1, 2), torch.ones_like(xyz[:, :1].transpose(1, 2))], -1)  # (B, 10, 4)
    E = (coefficients @ N.reshape(B, 4, 9)).reshape(B, MAX_ROOTS, 3, 3)
    E = E / E.flatten(-2).norm(dim=-1).clamp_min(1e-300)[..., None, None]
    valid = real & ok[:, None] & torch.isfinite(E).flatten(-2).all(-1)
    E = torch.where(valid[..., None, None], E, torch.zeros_like(E))
    return E.to(points0.dtype), valid
