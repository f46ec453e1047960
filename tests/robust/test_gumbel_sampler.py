"""The learned sampler (method.md §3): Gumbel top-k at inference and its straight-through form for training."""

import math

import pytest
import torch

from mbp_cli.robust.ransac import RansacOptions, ransac_essential
from mbp_cli.robust.samplers import GumbelSampler, gumbel_topk_st

from synthetic import make_scene


def test_draws_distinct_indices_within_each_sample():
    log_probs = torch.randn(40, dtype=torch.float64) * 3
    idx = GumbelSampler(log_probs, torch.Generator().manual_seed(0)).sample(5000)
    assert idx.shape == (5000, 5) and idx.dtype == torch.int64
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()
    assert idx.min() >= 0 and idx.max() < 40


def test_first_draw_follows_the_probabilities():
    """The best-keyed point of Gumbel top-k is a draw of the softmax: frequencies match it (chi-square test)."""
    p = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02], dtype=torch.float64)
    n = 40_000
    idx = GumbelSampler(p.log(), torch.Generator().manual_seed(1)).sample(n)
    counts = torch.bincount(idx[:, 0], minlength=7).double()
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 22.5  # 6 degrees of freedom: p = 0.001


def test_samples_are_drawn_without_replacement_by_probability():
    """Inclusion frequency in the 5-point samples is ordered like the probabilities (Plackett-Luce)."""
    p = torch.linspace(1.0, 20.0, 20, dtype=torch.float64)
    idx = GumbelSampler((p / p.sum()).log(), torch.Generator().manual_seed(2)).sample(20_000)
    counts = torch.bincount(idx.flatten(), minlength=20)
    # strictly increasing frequencies, up to noise between neighbours: compare every 4th point
    assert (counts[::4].diff() > 0).all()
    # exact inclusion probability of a single draw of the top point vs its frequency as first pick
    first = torch.bincount(idx[:, 0], minlength=20).double() / 20_000
    assert abs(float(first[-1]) - float(p[-1] / p.sum())) < 0.01


def test_temperature_flattens_towards_uniform():
    log_probs = torch.tensor([0.0, -5.0, -5.0, -5.0, -5.0, -5.0, -5.0, -5.0], dtype=torch.float64)
    cold = GumbelSampler(log_probs, torch.Generator().manual_seed(3), temperature=1.0).sample(4000)
    hot = GumbelSampler(log_probs, torch.Generator().manual_seed(3), temperature=100.0).sample(4000)
    assert float((cold[:, 0] == 0).double().mean()) > 0.9
    assert abs(float((hot[:, 0] == 0).double().mean()) - 1 / 8) < 0.03
    with pytest.raises(ValueError, match="temperature"):
        GumbelSampler(log_probs, torch.Generator(), temperature=0.0)


def test_inlier_ratio_is_the_sampling_mass_of_the_inliers():
    p = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.05, 0.05], dtype=torch.float64)
    sampler = GumbelSampler(p.log(), torch.Generator())
    inliers = torch.tensor([True, False, True, False, False, True])
    assert sampler.inlier_ratio(inliers) == pytest.approx(0.65)


def test_deterministic_for_a_seed():
    log_probs = torch.randn(30, dtype=torch.float64)
    a = GumbelSampler(log_probs, torch.Generator().manual_seed(4)).sample(10)
    b = GumbelSampler(log_probs, torch.Generator().manual_seed(4)).sample(10)
    assert torch.equal(a, b)


def test_straight_through_weights_are_one_and_pass_gradients_to_the_logits():
    logits = torch.randn(2, 50, dtype=torch.float64, requires_grad=True)
    idx, w = gumbel_topk_st(torch.log_softmax(logits, -1), 16, tau=0.5, generator=torch.Generator().manual_seed(5))
    assert idx.shape == w.shape == (2, 16, 5)
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()
    torch.testing.assert_close(w.detach(), torch.ones_like(w))
    points = torch.randn(2, 50, 2, dtype=torch.float64)
    chosen = points.gather(1, idx.flatten(1)[..., None].expand(-1, -1, 2)).view(2, 16, 5, 2) * w[..., None]
    chosen.square().sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_straight_through_gradient_is_that_of_the_soft_weights():
    """d y / d logits equals d softmax(z) / d logits at the drawn indices (same noise)."""
    logits = torch.randn(12, dtype=torch.float64, requires_grad=True)
    idx, w = gumbel_topk_st(logits, 1, tau=0.7, generator=torch.Generator().manual_seed(6))
    (g_st,) = torch.autograd.grad(w.sum(), logits)
    noise_gen = torch.Generator().manual_seed(6)
    u = torch.rand((1, 12), generator=noise_gen, dtype=torch.float64)
    g = -torch.log(-torch.log(u.clamp(torch.finfo(torch.float64).tiny, 1.0 - 1e-16)))
    soft = torch.softmax((logits + g) / 0.7, -1).gather(-1, idx)
    (g_soft,) = torch.autograd.grad(soft.sum(), logits)
    torch.testing.assert_close(g_st, g_soft)


def test_padded_entries_are_never_drawn():
    logits = torch.zeros(3, 20, dtype=torch.float64)
    logits[:, 10:] = float("-inf")
    idx, _ = gumbel_topk_st(logits, 200, generator=torch.Generator().manual_seed(7))
    assert idx.max() < 10


def test_ransac_with_the_gumbel_sampler_needs_fewer_iterations_with_good_scores():
    """Adaptive termination uses the sampler's inlier mass: scores that single out the inliers stop early."""
    scene = make_scene(num_points=200, outlier_ratio=0.5, noise_px=0.5, seed=8)
    x0, x1, inl = scene.x0, scene.x1, scene.inlier
    thr = 1.0 / scene.focal
    options = RansacOptions(min_iterations=8, batch_size=64)
    uniform = ransac_essential(x0, x1, thr, options)
    log_probs = torch.where(inl, math.log(0.9), math.log(0.05)).double()
    guided = ransac_essential(x0, x1, thr, RansacOptions(min_iterations=8, batch_size=64, sampler="gumbel"), log_probs)
    assert guided.status == uniform.status == "ok"
    assert guided.iterations < uniform.iterations / 4
    assert int((guided.inliers & inl).sum()) > 0.9 * int(inl.sum())
