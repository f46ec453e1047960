"""Gradients through the 5-point solver: IFT against finite differences and kornia's own backward, DDN and
autograd against IFT, root selection with either sign of the ground truth."""

import pytest
import torch

from mbp_cli.geometry.backprop import (
    ddn_vjp,
    equation_jacobians,
    essential_equations,
    five_point_differentiable,
    ift_vjp,
    select_root,
)
from mbp_cli.geometry.essential import essential_from_pose
from mbp_cli.geometry.solver import five_point

from synthetic import make_scene


def _samples(count: int, seed: int = 0, noise_px: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scenes = [make_scene(num_points=5, seed=seed + s, noise_px=noise_px) for s in range(count)]
    x0 = torch.stack([s.x0 for s in scenes])
    x1 = torch.stack([s.x1 for s in scenes])
    E_gt = torch.stack([essential_from_pose(s.R, s.t) for s in scenes])
    return x0, x1, E_gt


def _tracked_root(x0: torch.Tensor, x1: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The root of (x0, x1) nearest ``reference`` (3, 3), with its sign."""
    E, valid = five_point(x0[None], x1[None])
    best, has_root = select_root(E, valid, reference)
    assert bool(has_root[0])
    return best[0]


def test_equation_jacobians_match_autograd_of_the_equations():
    x0, x1, _ = _samples(6, seed=10)
    E, valid = five_point(x0, x1)
    sample, root = valid.nonzero(as_tuple=True)
    E, x0, x1 = E[sample, root], x0[sample], x1[sample]
    assert essential_equations(E, x0, x1).abs().max() < 1e-10
    J_E, dx0, dx1 = equation_jacobians(E, x0, x1)
    for m in range(E.shape[0]):
        jE, j0, j1 = torch.autograd.functional.jacobian(
            lambda e, a, b: essential_equations(e, a, b), (E[m], x0[m], x1[m])
        )
        assert torch.allclose(J_E[m], jE.reshape(16, 9), atol=1e-12)
        # only the epipolar rows depend on the points, row i only on correspondence i
        assert (j0[5:] == 0).all() and (j1[5:] == 0).all()
        assert torch.allclose(torch.einsum("iij->ij", j0[:5]), dx0[m], atol=1e-12)
        assert torch.allclose(torch.einsum("iij->ij", j1[:5]), dx1[m], atol=1e-12)
        off_diagonal = ~torch.eye(5, dtype=torch.bool)
        assert (j0[:5][off_diagonal] == 0).all()


def _central_difference(x0, x1, which, flat, h, G, root):
    plus = [x0.clone(), x1.clone()]
    minus = [x0.clone(), x1.clone()]
    plus[which].view(-1)[flat] += h
    minus[which].view(-1)[flat] -= h
    return ((G * _tracked_root(*plus, root)).sum() - (G * _tracked_root(*minus, root)).sum()) / (2 * h)


def test_ift_gradient_matches_central_finite_differences():
    """Richardson-extrapolated central differences (O(h⁴) truncation), relative error <= 1e-6 per sample."""
    x0, x1, E_gt = _samples(8, seed=20)
    E, valid = five_point(x0, x1)
    roots, _ = select_root(E, valid, E_gt)
    g = torch.Generator().manual_seed(0)
    G = torch.randn(8, 3, 3, generator=g, dtype=torch.float64)
    grad0, grad1, regular = ift_vjp(roots, x0, x1, G)
    assert regular.all()
    h = 2e-6
    worst = 0.0
    for b in range(8):
        analytic = torch.cat([grad0[b].flatten(), grad1[b].flatten()])
        numeric = torch.zeros(20, dtype=torch.float64)
        for k in range(20):
            which, flat = divmod(k, 10)
            numeric[k] = (
                4 * _central_difference(x0[b], x1[b], which, flat, h / 2, G[b], roots[b])
                - _central_difference(x0[b], x1[b], which, flat, h, G[b], roots[b])
            ) / 3
        worst = max(worst, float((analytic - numeric).norm() / numeric.norm()))
    assert worst <= 1e-6


def test_ift_tangent_solve_equals_the_16_equation_least_squares():
    """μ from the 5×5 tangent-space system = the epipolar entries of (J_E⁺)ᵀ ḡ from the full 16×9 J_E."""
    x0, x1, _ = _samples(12, seed=15, noise_px=0.5)
    E, valid = five_point(x0, x1)
    sample, root = valid.nonzero(as_tuple=True)
    E, x0, x1 = E[sample, root], x0[sample], x1[sample]
    G = torch.randn(E.shape[0], 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grad0, grad1, regular = ift_vjp(E, x0, x1, G)
    assert regular.all()
    J_E, dx0, dx1 = equation_jacobians(E, x0, x1)
    mu = (torch.linalg.pinv(J_E).transpose(1, 2) @ G.reshape(-1, 9, 1))[:, :5]
    dense = torch.cat([-mu * dx0, -mu * dx1], 1).flatten(1)
    ours = torch.cat([grad0, grad1], 1).flatten(1)
    assert ((ours - dense).norm(dim=-1) / dense.norm(dim=-1)).max() < 1e-8


def test_ift_gradient_equals_kornias_backward():
    """kornia's find_essential differentiates its own solver exactly: the oracle of method.md §5."""
    from kornia.geometry.epipolar import find_essential

    x0, x1, _ = _samples(6, seed=30)
    p0 = x0.clone().requires_grad_(True)
    p1 = x1.clone().requires_grad_(True)
    E_k = find_essential(p0, p1)
    valid_k = torch.isfinite(E_k.detach()).flatten(-2).all(-1)
    g = torch.Generator().manual_seed(1)
    G = torch.randn(6, 3, 3, generator=g, dtype=torch.float64)
    rows = torch.arange(6)
    j = valid_k.to(torch.float64).argmax(-1)  # the first real root of each sample
    (E_k[rows, j] * G).sum().backward()
    roots = E_k.detach()[rows, j]
    grad0, grad1, regular = ift_vjp(roots, x0, x1, G)
    assert regular.all()
    ours = torch.cat([grad0, grad1], 1).flatten(1)
    theirs = torch.cat([p0.grad, p1.grad], 1).flatten(1)
    assert ((ours - theirs).norm(dim=-1) / theirs.norm(dim=-1)).max() < 1e-8


def test_ddn_agrees_with_ift():
    x0, x1, E_gt = _samples(16, seed=40, noise_px=0.5)
    E, valid = five_point(x0, x1)
    sample, root = valid.nonzero(as_tuple=True)
    G = torch.randn(len(sample), 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    i0, i1, ri = ift_vjp(E[sample, root], x0[sample], x1[sample], G)
    d0, d1, rd = ddn_vjp(E[sample, root], x0[sample], x1[sample], G)
    assert ri.all() and rd.all()
    scale = torch.cat([i0, i1], 1).flatten(1).norm(dim=-1)
    diff = torch.cat([i0 - d0, i1 - d1], 1).flatten(1).norm(dim=-1)
    assert (diff / scale).max() < 1e-6


@pytest.mark.parametrize("mode", ["ift", "ddn", "autograd"])
def test_backprop_modes_give_the_same_gradient_through_the_function(mode):
    x0, x1, E_gt = _samples(4, seed=50)
    reference = None
    p0 = x0.clone().requires_grad_(True)
    p1 = x1.clone().requires_grad_(True)
    E, valid = five_point_differentiable(p0, p1, backprop=mode)
    best, has_root = select_root(E, valid, E_gt)
    assert has_root.all()
    (best * torch.arange(9, dtype=torch.float64).reshape(3, 3)).sum().backward()
    p0_ift = x0.clone().requires_grad_(True)
    p1_ift = x1.clone().requires_grad_(True)
    E_i, valid_i = five_point_differentiable(p0_ift, p1_ift, backprop="ift")
    reference, _ = select_root(E_i, valid_i, E_gt)
    (reference * torch.arange(9, dtype=torch.float64).reshape(3, 3)).sum().backward()
    assert torch.allclose(p0.grad, p0_ift.grad, rtol=1e-6, atol=1e-9)
    assert torch.allclose(p1.grad, p1_ift.grad, rtol=1e-6, atol=1e-9)


def test_float32_points_get_float32_gradients_close_to_float64():
    x0, x1, E_gt = _samples(8, seed=60, noise_px=0.3)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        p0 = x0.to(dtype).clone().requires_grad_(True)
        p1 = x1.to(dtype).clone().requires_grad_(True)
        E, valid = five_point_differentiable(p0, p1)
        best, _ = select_root(E, valid, E_gt.to(dtype))
        (best * best.detach().sign()).sum().backward()
        assert p0.grad.dtype == dtype and torch.isfinite(p0.grad).all()
        grads[dtype] = torch.cat([p0.grad, p1.grad], 1).double()
    rel = (grads[torch.float32] - grads[torch.float64]).norm() / grads[torch.float64].norm()
    assert rel < 1e-3


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_select_root_picks_the_true_root_with_the_ground_truth_sign(sign):
    x0, x1, E_gt = _samples(32, seed=70)
    E, valid = five_point(x0, x1)
    E_target = sign * 7.5 * E_gt  # any scale, either sign
    best, has_root = select_root(E, valid, E_target)
    assert has_root.all()
    E_hat = E_target / E_target.flatten(-2).norm(dim=-1)[:, None, None]
    assert (best - E_hat).flatten(1).norm(dim=-1).max() < 1e-8


def test_degenerate_samples_get_zero_finite_gradients():
    x = torch.zeros(2, 5, 2, dtype=torch.float64, requires_grad=True)
    E, valid = five_point_differentiable(x, x.detach().clone())
    assert not valid.any()
    E.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad == 0).all()


def test_unknown_backprop_mode_is_rejected():
    with pytest.raises(ValueError, match="ift, ddn, autograd"):
        five_point_differentiable(torch.zeros(1, 5, 2), torch.zeros(1, 5, 2), backprop="magic")
