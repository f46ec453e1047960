import math

import torch

from mbp_cli.robust.scoring import MAGSAC, MAGSAC_K, magsac_rho, magsac_weight, msac_loss, robust_loss


def test_incomplete_gamma_check_values_of_method_doc():
    x = torch.tensor([MAGSAC_K**2 / 2], dtype=torch.float64)
    lower = torch.special.gammainc(torch.tensor([2.5], dtype=torch.float64), x) * math.gamma(2.5)
    upper = torch.special.gammaincc(torch.tensor([1.5], dtype=torch.float64), x) * math.gamma(1.5)
    assert abs(lower.item() - 1.3012265540) < 1e-9
    assert abs(upper.item() - 0.0036572608) < 1e-9


def test_magsac_closed_form_at_known_values():
    # Hand evaluation of method.md §6 with d = 4, k = 3.64, threshold 1 (sigma_max = 1/3.64).
    s = 1.0 / MAGSAC_K
    outside = s * 2**1.5 * 1.3012265540
    r = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    rho = magsac_rho(r, 1.0)
    assert rho[0].item() == 0.0
    assert abs(rho[1].item() - outside) < 1e-9  # continuous at the threshold
    assert abs(rho[2].item() - outside) < 1e-9
    # an interior value: r = 0.5 -> x = r^2 / (2 s^2)
    r0 = 0.5
    x = torch.tensor([r0 * r0 / (2 * s * s)], dtype=torch.float64)
    lower = (torch.special.gammainc(torch.tensor([2.5], dtype=torch.float64), x) * math.gamma(2.5)).item()
    upper = (torch.special.gammaincc(torch.tensor([1.5], dtype=torch.float64), x) * math.gamma(1.5)).item()
    expected = 2**2.5 / s * (s * s / 2 * lower + r0 * r0 / 4 * (upper - 0.0036572608))
    assert abs(magsac_rho(torch.tensor([r0], dtype=torch.float64), 1.0).item() - expected) < 1e-8


def test_magsac_monotone_and_scale_invariant():
    r = torch.linspace(0, 1.5, 301, dtype=torch.float64)
    rho = magsac_rho(r, 1.0)
    assert (rho.diff() >= -1e-12).all()
    # the loss scales linearly with the threshold: rho_T(r) = T * rho_1(r / T)
    assert torch.allclose(magsac_rho(2.0 * r, 2.0), 2.0 * rho, rtol=1e-10, atol=1e-12)


def test_magsac_weight_is_derivative_over_r():
    r = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    deriv = (magsac_rho(r + h, 1.0) - magsac_rho(r - h, 1.0)) / (2 * h)
    w = magsac_weight(r, 1.0)
    ratio = (deriv / r) / w
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)
    assert magsac_weight(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), 1.0).tolist() == [1.0, 0.0, 0.0]


def test_magsac_table_matches_closed_form():
    r = torch.linspace(0, 1.2, 5001, dtype=torch.float64)
    exact = magsac_rho(r, 1.0) / magsac_rho(torch.tensor([2.0], dtype=torch.float64), 1.0)
    for threshold in (1e-3, 1.0):
        table = MAGSAC.loss((r * threshold) ** 2, threshold)
        assert (table - exact).abs().max() < 1e-6
    assert MAGSAC.loss(torch.tensor([float("nan"), float("inf")]), 1.0).tolist() == [1.0, 1.0]


def test_msac_and_dispatch():
    r2 = torch.tensor([0.0, 0.25, 4.0])
    assert msac_loss(r2, 1.0).tolist() == [0.0, 0.25, 1.0]
    assert torch.equal(robust_loss("msac", r2, 1.0), msac_loss(r2, 1.0))
