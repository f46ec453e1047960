import math

import pytest
import torch

from mbp_cli.geometry.essential import (
    essential_from_pose,
    rotation_error_deg,
    sampson_squared,
    tangent_basis,
    translation_error_deg,
)
from mbp_cli.geometry.rotation import skew, so3_exp
from mbp_cli.robust.refine import (
    MIN_CURVATURE,
    RefineOptions,
    epipolar_design,
    keypoint_noise,
    normal_matrix,
    normal_weights,
    perturb_pose,
    pose_covariance,
    pose_sigma_deg,
    refine_pose,
    refine_pose_implicit,
    robust_cost_and_weights,
    sampson_residuals_and_jacobian,
)

from synthetic import make_scene


def _perturbed(scene, rot=0.02, trans=0.05):
    R0 = scene.R @ so3_exp(torch.tensor([rot, -rot, rot / 2], dtype=torch.float64))
    t0 = scene.t + trans * torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
    return R0, t0 / t0.norm()


def test_residuals_are_signed_sampson_and_jacobian_matches_finite_differences():
    scene = make_scene(num_points=60, noise_px=1.0)
    R0, t0 = _perturbed(scene)
    design = epipolar_design(scene.x0, scene.x1)
    r, J = sampson_residuals_and_jacobian(R0[None], t0[None], design)
    assert torch.allclose(r[0] ** 2, sampson_squared(essential_from_pose(R0, t0)[None], scene.x0, scene.x1)[0])
    basis = tangent_basis(t0[None])[0]

    def residual(delta):
        R = R0 @ so3_exp(delta[:3])
        t = t0 + basis @ delta[3:]
        return sampson_residuals_and_jacobian(R[None], (t / t.norm())[None], design)[0][0]

    h = 1e-6
    numeric = torch.stack(
        [(residual(h * e) - residual(-h * e)) / (2 * h) for e in torch.eye(5, dtype=torch.float64)], -1
    )
    assert ((J[0] - numeric).norm() / numeric.norm()) < 1e-7


def test_refinement_exact_without_noise_and_batched():
    scene = make_scene(num_points=100)
    starts = [_perturbed(scene, 0.01, 0.02), _perturbed(scene, 0.03, 0.1)]
    R0 = torch.stack([s[0] for s in starts])
    t0 = torch.stack([s[1] for s in starts])
    R, t, cost = refine_pose(R0, t0, scene.x0, scene.x1, 1e-3)
    assert rotation_error_deg(R, scene.R.expand(2, 3, 3)).max() < 1e-6
    assert translation_error_deg(t, scene.t.expand(2, 3)).max() < 1e-6
    assert torch.allclose(t.norm(dim=-1), torch.ones(2, dtype=torch.float64))
    assert cost.max() < 1e-20


@pytest.mark.parametrize("loss", ["cauchy", "truncated"])
def test_refinement_robust_to_outliers_and_never_increases_cost(loss):
    scene = make_scene(num_points=300, outlier_ratio=0.3, noise_px=0.5)
    R0, t0 = _perturbed(scene, 0.003, 0.01)
    threshold = 2.0 / scene.focal
    _, before = refine_pose(
        R0[None], t0[None], scene.x0, scene.x1, threshold, RefineOptions(max_iterations=0, loss=loss)
    )[1:]
    R, t, after = refine_pose(R0[None], t0[None], scene.x0, scene.x1, threshold, RefineOptions(loss=loss))
    assert after.item() <= before.item()
    assert rotation_error_deg(R[0], scene.R) < 0.1
    assert translation_error_deg(t[0], scene.t) < 0.5


def test_huber_refinement_on_noisy_inliers():
    # Huber is not redescending, so it is only robust to noise, not to gross outliers.
    scene = make_scene(num_points=300, noise_px=0.5)
    R0, t0 = _perturbed(scene, 0.003, 0.01)
    R, t, _ = refine_pose(R0[None], t0[None], scene.x0, scene.x1, 1e-3, RefineOptions(loss="huber"))
    assert rotation_error_deg(R[0], scene.R) < 0.1
    assert translation_error_deg(t[0], scene.t) < 0.5


def test_robust_weights_are_derivative_of_cost():
    r2 = torch.tensor([0.1, 0.5, 0.9, 2.0], dtype=torch.float64)
    h = 1e-7
    for loss in ("cauchy", "huber"):
        cost, w = robust_cost_and_weights(r2, 1.0, loss)
        numeric = (robust_cost_and_weights(r2 + h, 1.0, loss)[0] - robust_cost_and_weights(r2 - h, 1.0, loss)[0]) / (
            2 * h
        )
        assert torch.allclose(w, numeric, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        robust_cost_and_weights(r2, 1.0, "l7")


@pytest.mark.parametrize(("loss", "with_noise"), [("cauchy", False), ("huber", False), ("cauchy", True)])
def test_implicit_refinement_gradient_matches_finite_differences_of_the_converged_lm(loss, with_noise):
    """The IFT derivative of the weighted LM optimum w.r.t. the point weights equals re-running the LM."""
    scene = make_scene(num_points=80, noise_px=1.0, outlier_ratio=0.1, seed=3)
    g = torch.Generator().manual_seed(2)
    noise = (
        keypoint_noise(
            torch.rand(80, generator=g, dtype=torch.float64) + 0.5,
            torch.rand(80, generator=g, dtype=torch.float64) + 0.5,
        )
        if with_noise
        else None
    )
    R0, t0 = _perturbed(scene, rot=0.004, trans=0.01)
    scale = 1.0 / scene.focal
    tight = RefineOptions(max_iterations=200, loss=loss, gradient_tol=0.0, step_tol=0.0, cost_tol=0.0)
    weights = torch.linspace(0.2, 1.0, 80, dtype=torch.float64)
    direction = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def objective(R, t):
        return (torch.cat([R.flatten(), t]) * direction).sum()

    w = weights.clone().requires_grad_(True)
    R, t = refine_pose_implicit(R0, t0, scene.x0, scene.x1, scale, w, tight, noise)
    R_ref, t_ref, _ = refine_pose(R0[None], t0[None], scene.x0, scene.x1, scale, tight, weights[None], noise)
    assert torch.allclose(R.detach(), R_ref[0], atol=1e-10) and torch.allclose(t.detach(), t_ref[0], atol=1e-10)
    (gradient,) = torch.autograd.grad(objective(R, t), w)
    # The LM locates an optimum only to ~sqrt(machine epsilon) (a flat cost), so the differences need a step this
    # large; the central difference's O(h^2) error is then far below the tolerance.
    h = 1e-2
    largest = float(gradient.abs().max())
    for i in (0, 7, 33, 79):
        bump = torch.zeros_like(weights)
        bump[i] = h
        plus = refine_pose(R0[None], t0[None], scene.x0, scene.x1, scale, tight, (weights + bump)[None], noise)
        minus = refine_pose(R0[None], t0[None], scene.x0, scene.x1, scale, tight, (weights - bump)[None], noise)
        numeric = (objective(plus[0][0], plus[1][0]) - objective(minus[0][0], minus[1][0])) / (2 * h)
        assert abs(float(gradient[i]) - float(numeric)) < 1e-3 * largest, (i, gradient[i], numeric)


def test_implicit_refinement_rejects_the_truncated_loss():
    scene = make_scene(num_points=20)
    with pytest.raises(ValueError, match="truncated"):
        refine_pose_implicit(
            scene.R, scene.t, scene.x0, scene.x1, 1e-3, torch.ones(20), RefineOptions(loss="truncated")
        )


def test_cauchy_normal_weights_are_the_cost_curvature_floored_where_it_turns_concave():
    """normal_weights gives d²rho(r²)/dr² / 2 (the Hessian's weight of a residual) where it is not floored."""
    scale = 0.7
    r = torch.linspace(0.01, 3.0, 50, dtype=torch.float64)
    _, irls = robust_cost_and_weights(r * r, scale, "cauchy")
    weights = normal_weights(r * r, scale, "cauchy", irls)
    curvature = torch.stack(
        [
            torch.autograd.functional.hessian(lambda x: robust_cost_and_weights(x * x, scale, "cauchy")[0], v) / 2
            for v in r
        ]
    )
    floored = curvature < MIN_CURVATURE * irls
    assert bool(floored.any()) and bool((~floored).any())
    assert torch.allclose(weights[~floored], curvature[~floored])
    assert torch.allclose(weights[floored], MIN_CURVATURE * irls[floored])
    for loss in ("huber", "truncated"):
        w = robust_cost_and_weights(r * r, scale, loss)[1]
        assert torch.equal(normal_weights(r * r, scale, loss, w), w)


def test_perturb_pose_moves_along_the_lm_parameters():
    """Zero step: the pose itself; steps 1-3 rotate as R exp([w]x), steps 4-5 move t along its tangent basis."""
    scene = make_scene(num_points=10)
    R0, t0 = perturb_pose(scene.R, scene.t, torch.zeros(1, 5, dtype=torch.float64))
    assert torch.allclose(R0[0], scene.R, atol=1e-15) and torch.allclose(t0[0], scene.t, atol=1e-15)
    h = 1e-7
    R_s, t_s = perturb_pose(scene.R, scene.t, h * torch.eye(5, dtype=torch.float64))
    generators = skew(torch.eye(3, dtype=torch.float64))
    for k in range(3):
        assert torch.allclose((R_s[k] - scene.R) / h, scene.R @ generators[k], atol=1e-6)
        assert torch.allclose(t_s[k], scene.t, atol=1e-15)
    basis = tangent_basis(scene.t[None])[0]
    for j in range(2):
        assert torch.equal(R_s[3 + j], scene.R)
        assert torch.allclose((t_s[3 + j] - scene.t) / h, basis[:, j], atol=1e-6)
    assert torch.allclose(t_s.norm(dim=-1), torch.ones(5, dtype=torch.float64))


def _narrow_scene(half_width: float, seed: int = 0):
    """Points seen within +-half_width (normalized) of the optical axis, 4-12 units deep, small sideways motion."""
    g = torch.Generator().manual_seed(seed)
    R = so3_exp(torch.tensor([0.01, 0.03, -0.02], dtype=torch.float64))
    t = torch.tensor([1.0, 0.2, 0.1], dtype=torch.float64)
    t = t / t.norm()
    depth = 4.0 + 8.0 * torch.rand(200, generator=g, dtype=torch.float64)
    xy = (torch.rand(200, 2, generator=g, dtype=torch.float64) - 0.5) * 2 * half_width
    X1 = torch.cat([xy * depth[:, None], depth[:, None]], 1) @ R.T + t
    return R, t, xy, X1[:, :2] / X1[:, 2:]


def test_normal_matrix_is_the_weighted_gram_of_the_sampson_jacobian_and_shows_a_narrow_view():
    scene = make_scene(num_points=50, noise_px=0.5)
    design = epipolar_design(scene.x0, scene.x1)
    r, J = sampson_residuals_and_jacobian(scene.R[None], scene.t[None], design)
    w = robust_cost_and_weights(r * r, 1e-3, "cauchy")[1]
    A = normal_matrix(scene.R[None], scene.t[None], scene.x0, scene.x1, 1e-3)
    assert torch.allclose(A, torch.einsum("hni,hn,hnj->hij", J, w, J))
    point_weights = torch.rand(50, dtype=torch.float64)
    weighted = normal_matrix(scene.R[None], scene.t[None], scene.x0, scene.x1, 1e-3, point_weights=point_weights)
    assert torch.allclose(weighted, torch.einsum("hni,hn,hnj->hij", J, w * point_weights, J))
    # the rotation-translation ambiguity of a narrow field of view: a much smaller weakest eigenvalue
    conditions = []
    for half_width in (0.4, 0.03):
        R, t, x0, x1 = _narrow_scene(half_width)
        eigenvalues = torch.linalg.eigvalsh(normal_matrix(R[None], t[None], x0, x1, 1e-3)[0])
        conditions.append(float(eigenvalues[0] / eigenvalues[1]))
    assert conditions[1] < 0.1 < conditions[0]


def test_keypoint_noise_is_proportional_to_scale_with_unit_median():
    sigma0, sigma1 = keypoint_noise(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([8.0, 2.0, 0.0]))
    torch.testing.assert_close(sigma0, torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(sigma1, torch.tensor([4.0, 1.0, 1e-3]))  # a zero scale is floored, never infinite


def test_noise_makes_the_residual_the_heteroscedastic_sampson_distance():
    """With keypoint noise the residual is x1^T E x0 / sqrt(s1^2 |(E x0)_12|^2 + s0^2 |(E^T x1)_12|^2)."""
    scene = make_scene(num_points=50, noise_px=1.0)
    R0, t0 = _perturbed(scene)
    g = torch.Generator().manual_seed(3)
    sigma0, sigma1 = (0.5 + torch.rand(50, generator=g, dtype=torch.float64) for _ in range(2))
    r, _ = sampson_residuals_and_jacobian(R0[None], t0[None], epipolar_design(scene.x0, scene.x1, (sigma0, sigma1)))
    E = essential_from_pose(R0, t0)
    X0 = torch.cat([scene.x0, torch.ones(50, 1, dtype=torch.float64)], 1)
    X1 = torch.cat([scene.x1, torch.ones(50, 1, dtype=torch.float64)], 1)
    Ex0, Etx1 = X0 @ E.T, X1 @ E
    algebraic = (X1 * Ex0).sum(-1)
    expected = algebraic / (sigma1**2 * Ex0[:, :2].square().sum(-1) + sigma0**2 * Etx1[:, :2].square().sum(-1)).sqrt()
    torch.testing.assert_close(r[0], expected, rtol=1e-12, atol=1e-15)
    plain, _ = sampson_residuals_and_jacobian(R0[None], t0[None], epipolar_design(scene.x0, scene.x1))
    ones = torch.ones(50, dtype=torch.float64)
    torch.testing.assert_close(
        sampson_residuals_and_jacobian(R0[None], t0[None], epipolar_design(scene.x0, scene.x1, (ones, ones)))[0], plain
    )


def test_keypoint_noise_sharpens_the_fit_when_noise_follows_scale():
    """Keypoints localised to a tenth of their detection scale (1-30 px, log-uniform): the heteroscedastic fit's
    pose error is well below the equal-noise fit's (a near-quadratic loss, from the true pose, 8 scenes)."""
    focal = 1000.0
    errors = {"aware": [], "plain": []}
    for seed in range(8):
        scene = make_scene(num_points=150, focal=focal, seed=seed)
        g = torch.Generator().manual_seed(100 + seed)
        scales = [torch.exp(torch.rand(150, generator=g, dtype=torch.float64) * math.log(30.0)) for _ in range(2)]
        x0, x1 = (
            x + (s / 10.0 / focal)[:, None] * torch.randn(150, 2, generator=g, dtype=torch.float64)
            for x, s in zip((scene.x0, scene.x1), scales, strict=True)
        )
        for name, noise in (("aware", keypoint_noise(*scales)), ("plain", None)):
            R, t, _ = refine_pose(scene.R[None], scene.t[None], x0, x1, 10.0 / focal, RefineOptions(), None, noise)
            errors[name].append(float(rotation_error_deg(R[0], scene.R) + translation_error_deg(t[0], scene.t)))
    aware, plain = (torch.tensor(errors[k]).mean() for k in ("aware", "plain"))
    assert aware < 0.6 * plain, errors


def _monte_carlo_covariance(fit_noise: bool, narrow: bool = False, trials: int = 200):
    """Mean squared rotation / translation errors (deg^2) of the LM over noise draws, and the mean predicted ones."""
    if narrow:
        R, t, x0, x1 = _narrow_scene(0.05)
    else:
        scene = make_scene(num_points=150)
        R, t, x0, x1 = scene.R, scene.t, scene.x0, scene.x1
    focal = 1000.0
    g = torch.Generator().manual_seed(7)
    n = x0.shape[0]
    # heteroscedastic keypoint noise, each keypoint's sigma between 0.1 and 0.5 px (SIFT inliers' spread), given
    # to the fit relative to the median as the product's keypoint_noise does; the product's half-pixel scale
    sigma0 = 0.1 + 0.4 * torch.rand(n, generator=g, dtype=torch.float64)
    sigma1 = 0.1 + 0.4 * torch.rand(n, generator=g, dtype=torch.float64)
    median = torch.cat([sigma0, sigma1]).median()
    scale = 0.5 / focal
    squared, predicted = [], []
    for _ in range(trials):
        y0 = x0 + sigma0[:, None] / focal * torch.randn(n, 2, generator=g, dtype=torch.float64)
        y1 = x1 + sigma1[:, None] / focal * torch.randn(n, 2, generator=g, dtype=torch.float64)
        noise = (sigma0 / median, sigma1 / median) if fit_noise else None
        R_fit, t_fit, _ = refine_pose(R[None], t[None], y0, y1, scale, RefineOptions(max_iterations=50), noise=noise)
        squared.append([float(rotation_error_deg(R_fit[0], R)) ** 2, float(translation_error_deg(t_fit[0], t)) ** 2])
        predicted.append((pose_sigma_deg(pose_covariance(R_fit, t_fit, y0, y1, scale, noise=noise))[0] ** 2).tolist())
    return torch.tensor(squared).mean(0), torch.tensor(predicted).mean(0)


@pytest.mark.parametrize("fit_noise", [True, False])
def test_pose_covariance_predicts_the_spread_of_the_fit_over_noise_draws(fit_noise):
    """The sandwich covariance matches the Monte-Carlo spread of the robust LM, also when the fit ignores the
    keypoints' unequal noise (the spread is measured from the residuals, not assumed)."""
    empirical, predicted = _monte_carlo_covariance(fit_noise)
    ratio = predicted / empirical
    assert bool(((ratio > 0.75) & (ratio < 1.33)).all()), (empirical, predicted)


def test_pose_covariance_is_large_along_a_narrow_views_ambiguity():
    empirical_wide, predicted_wide = _monte_carlo_covariance(True, trials=60)
    empirical_narrow, predicted_narrow = _monte_carlo_covariance(True, narrow=True, trials=60)
    assert bool((predicted_narrow > 10 * predicted_wide).all())
    ratio = predicted_narrow / empirical_narrow
    assert bool(((ratio > 0.6) & (ratio < 1.6)).all()), (empirical_narrow, predicted_narrow)


def test_pose_sigma_deg_reads_the_two_blocks():
    covariance = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64))[None] * 1e-6
    sigma = pose_sigma_deg(covariance)[0]
    torch.testing.assert_close(sigma, torch.rad2deg(torch.tensor([6e-6, 9e-6], dtype=torch.float64).sqrt()))


def test_pose_covariance_of_an_unconstrained_fit_is_huge_not_zero():
    """Four correspondences leave one of the five directions free: its variance must blow up (a pseudo-inverse
    would report zero there)."""
    scene = make_scene(num_points=4, noise_px=0.5)
    covariance = pose_covariance(scene.R[None], scene.t[None], scene.x0, scene.x1, 0.5 / scene.focal)
    assert bool(torch.isfinite(covariance).all())
    assert float(pose_sigma_deg(covariance)[0].max()) > 90.0
    well = make_scene(num_points=100, noise_px=0.5)
    sigma = pose_sigma_deg(pose_covariance(well.R[None], well.t[None], well.x0, well.x1, 0.5 / well.focal))[0]
    assert float(sigma.max()) < 1.0
