import math

import pytest
import torch

from mbp_cli.geometry.essential import essential_from_pose, rotation_error_deg, sampson_squared, translation_error_deg
from mbp_cli.robust.ransac import BASIN_HOPS, RansacOptions, _hop_basins, ransac_essential, required_iterations
from mbp_cli.robust.refine import RefineOptions, normal_matrix, perturb_pose, refine_pose
from mbp_cli.robust.scoring import robust_loss

from synthetic import make_scene


def test_exact_without_noise():
    scene = make_scene(num_points=200)
    res = ransac_essential(scene.x0, scene.x1, 1.0 / scene.focal, RansacOptions(sampler="uniform"))
    assert res.status == "ok"
    assert rotation_error_deg(res.R, scene.R) < 1e-6
    assert translation_error_deg(res.t, scene.t) < 1e-6
    assert torch.allclose(res.t, scene.t, atol=1e-8)  # cheirality gives the sign too
    assert res.inliers.all()


def test_recovers_pose_at_80_percent_outliers():
    scene = make_scene(num_points=600, outlier_ratio=0.8, noise_px=0.5, seed=1)
    options = RansacOptions(sampler="uniform", confidence=0.99, max_iterations=20_000)
    res = ransac_essential(scene.x0, scene.x1, 1.0 / scene.focal, options)
    assert res.status == "ok"
    assert rotation_error_deg(res.R, scene.R) < 0.2
    assert translation_error_deg(res.t, scene.t) < 1.0
    found = res.inliers
    recall = (found & scene.inlier).sum() / scene.inlier.sum()
    precision = (found & scene.inlier).sum() / found.sum()
    assert recall > 0.9 and precision > 0.9


def test_prosac_with_informative_quality_needs_fewer_samples():
    scene = make_scene(num_points=600, outlier_ratio=0.7, noise_px=0.5, seed=2)
    quality = scene.inlier.double() + 0.5 * torch.rand(
        600, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    uniform = ransac_essential(scene.x0, scene.x1, 1e-3, RansacOptions(sampler="uniform", confidence=0.99))
    prosac = ransac_essential(
        scene.x0, scene.x1, 1e-3, RansacOptions(sampler="prosac", confidence=0.99), quality=quality
    )
    for res in (uniform, prosac):
        assert rotation_error_deg(res.R, scene.R) < 0.2
    # PROSAC's first samples come from the confident inliers, so the first batch already holds the model.
    assert prosac.lo_runs >= 1 and prosac.timings_ms["solver"] > 0


@pytest.mark.parametrize("scoring", ["magsac", "msac"])
def test_deterministic_for_a_seed(scoring):
    scene = make_scene(num_points=300, outlier_ratio=0.4, noise_px=1.0, seed=3)
    options = RansacOptions(scoring=scoring, sampler="uniform", seed=7)
    a = ransac_essential(scene.x0, scene.x1, 1e-3, options)
    b = ransac_essential(scene.x0, scene.x1, 1e-3, options)
    assert torch.equal(a.R, b.R) and torch.equal(a.t, b.t) and torch.equal(a.inliers, b.inliers)
    assert rotation_error_deg(a.R, scene.R) < 0.3


def test_too_few_points_is_no_model():
    scene = make_scene(num_points=4)
    res = ransac_essential(scene.x0, scene.x1, 1e-3)
    assert res.status == "no_model" and res.R is None and res.inliers.shape == (4,)


def test_pure_rotation_is_flagged_degenerate():
    scene = make_scene(num_points=200, noise_px=0.3)
    X = torch.cat([scene.x0, torch.ones(200, 1, dtype=torch.float64)], 1) @ scene.R.T
    x1 = X[:, :2] / X[:, 2:]
    res = ransac_essential(scene.x0, x1, 1e-3)
    assert res.status == "degenerate"
    assert res.median_parallax_deg < 0.2


def test_required_iterations():
    assert math.isclose(required_iterations(0.5, 0.99), math.log(0.01) / math.log(1 - 0.5**5))
    assert required_iterations(1.0, 0.99) == 0.0
    assert required_iterations(0.0, 0.99) == math.inf


def test_options_validate():
    with pytest.raises(ValueError, match="threshold"):
        RansacOptions(threshold_px=-1)
    with pytest.raises(ValueError, match="sampler"):
        RansacOptions(sampler="gumbel?")
    with pytest.raises(ValueError, match="refine scale"):
        RansacOptions(refine_scale=0.0)
    with pytest.raises(ValueError, match="basin hops"):
        RansacOptions(basin_hops=(0.1, -0.2))


def _narrow_view(focal: float = 3300.0):
    """250 correspondences within a 4-degree field of view, 1 px noise, 40 outliers: an ill-conditioned fit."""
    g = torch.Generator().manual_seed(1)
    R = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.02, 0.03], [0.02, 0.0, -0.01], [-0.03, 0.01, 0.0]]).double())
    t = torch.tensor([1.0, 0.2, 0.1], dtype=torch.float64)
    t = t / t.norm()
    depth = 8.0 + 4.0 * torch.rand(250, generator=g, dtype=torch.float64)
    x0 = (torch.rand(250, 2, generator=g, dtype=torch.float64) - 0.5) * 0.07
    X1 = torch.cat([x0 * depth[:, None], depth[:, None]], 1) @ R.T + t
    x1 = X1[:, :2] / X1[:, 2:] + torch.randn(250, 2, generator=g, dtype=torch.float64) / focal
    x1[:40] = (torch.rand(40, 2, generator=g, dtype=torch.float64) - 0.5) * 0.07
    return x0, x1, 1.0 / focal


def test_basin_hops_are_on_by_default_and_only_ever_lower_the_fits_cost():
    x0, x1, threshold = _narrow_view()
    options = RansacOptions()
    scale = threshold * options.refine_scale
    evaluate = RefineOptions(max_iterations=0)  # an LM of no iterations: the cost at the given pose
    for seed in range(3):
        plain = ransac_essential(x0, x1, threshold, RansacOptions(basin_hops=(), seed=seed))
        hopped = ransac_essential(x0, x1, threshold, RansacOptions(seed=seed))
        assert "basin_hopping" not in plain.timings_ms and "basin_hopping" in hopped.timings_ms
        assert hopped.status == plain.status == "ok"
        # From the plain result, the hops keep it or move to a lower minimum of the same objective.
        R, t = plain.R[None], plain.t[None]
        near = sampson_squared(essential_from_pose(R, t), x0, x1)[0] < (options.refine_margin * threshold) ** 2
        R_hop, t_hop, _ = _hop_basins(R, t, plain.score, x0[near], x1[near], x0, x1, None, None, threshold, options)
        before = refine_pose(R, t, x0[near], x1[near], scale, evaluate)[2]
        after = refine_pose(R_hop, t_hop, x0[near], x1[near], scale, evaluate)[2]
        assert float(after) <= float(before)


def test_basin_hops_bring_a_pose_displaced_along_the_valley_back_to_the_optimum():
    """From the optimum moved 0.15 rad along the weakest direction of a narrow view's fit (a wrong basin's start),
    one of the hops lands back on the optimum, and its lower score wins."""
    x0, x1, threshold = _narrow_view()
    options = RansacOptions(basin_hops=BASIN_HOPS)
    best = ransac_essential(x0, x1, threshold, RansacOptions())
    scale = threshold * options.refine_scale
    eigenvalues, eigenvectors = torch.linalg.eigh(normal_matrix(best.R[None], best.t[None], x0, x1, scale)[0])
    assert eigenvalues[0] < options.hop_condition * eigenvalues[1]  # ill-conditioned: the hops will run
    R_off, t_off = perturb_pose(best.R, best.t, 0.15 * eigenvectors[:, 0][None])
    r2 = sampson_squared(essential_from_pose(R_off, t_off), x0, x1)[0]
    score_off = float(robust_loss(options.scoring, r2, threshold).sum())
    near = r2 < (options.refine_margin * threshold) ** 2
    R, t, score = _hop_basins(R_off, t_off, score_off, x0[near], x1[near], x0, x1, None, None, threshold, options)
    assert score < score_off - 1.0
    assert score == pytest.approx(best.score, abs=0.05)
    assert rotation_error_deg(R[0], best.R) < 0.05 and translation_error_deg(t[0], best.t) < 0.05


def test_an_ill_conditioned_best_model_draws_more_samples_a_well_conditioned_one_does_not():
    narrow_x0, narrow_x1, narrow_threshold = _narrow_view()
    wide = make_scene(num_points=250, outlier_ratio=0.16, noise_px=1.0, seed=2)
    on, off = RansacOptions(seed=0), RansacOptions(ill_conditioned_iterations=0, seed=0)  # on by default
    narrow = ransac_essential(narrow_x0, narrow_x1, narrow_threshold, on)
    narrow_off = ransac_essential(narrow_x0, narrow_x1, narrow_threshold, off)
    assert narrow_off.iterations < on.ill_conditioned_iterations <= narrow.iterations and narrow.status == "ok"
    plain = ransac_essential(wide.x0, wide.x1, 1.0 / wide.focal, off)
    assert ransac_essential(wide.x0, wide.x1, 1.0 / wide.focal, on).iterations == plain.iterations < 512


def _scene_with_scale_noise(seed: int, focal: float = 1000.0):
    """Correspondences whose keypoints are localised to a tenth of their detection scale (1 to 30 px, log-uniform)."""
    scene = make_scene(num_points=200, outlier_ratio=0.2, focal=focal, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    scales = [torch.exp(torch.rand(200, generator=g, dtype=torch.float64) * math.log(30.0)) for _ in range(2)]
    noisy = [
        x + (s / 10.0 / focal)[:, None] * torch.randn(200, 2, generator=g, dtype=torch.float64)
        for x, s in zip((scene.x0, scene.x1), scales, strict=True)
    ]
    return scene, noisy[0], noisy[1], (scales[0], scales[1]), 3.0 / focal


def test_equal_keypoint_scales_change_nothing_and_bad_shapes_are_refused():
    scene, x0, x1, scales, threshold = _scene_with_scale_noise(0)
    plain = ransac_essential(x0, x1, threshold, RansacOptions())
    equal = ransac_essential(x0, x1, threshold, RansacOptions(), keypoint_scales=(torch.full((200,), 4.0),) * 2)
    off = ransac_essential(x0, x1, threshold, RansacOptions(scale_noise=False), keypoint_scales=scales)
    for other in (equal, off):
        assert torch.equal(other.R, plain.R) and torch.equal(other.t, plain.t)
    aware = ransac_essential(x0, x1, threshold, RansacOptions(), keypoint_scales=scales)  # they reach the final LM
    assert not torch.equal(aware.R, plain.R)
    with pytest.raises(ValueError, match=r"keypoint_scales must be two \(200,\) tensors"):
        ransac_essential(x0, x1, threshold, RansacOptions(), keypoint_scales=(scales[0][:10], scales[1]))


def test_the_result_predicts_its_error_from_the_fit_large_on_a_narrow_view():
    """The sandwich covariance of the final fit comes with every refined result: over noise draws with outliers the
    actual errors match the predicted rms errors in order of magnitude, and a narrow view predicts far more."""
    squared, predicted = [], []
    for seed in range(12):
        scene = make_scene(num_points=250, outlier_ratio=0.2, noise_px=0.5, seed=seed)
        res = ransac_essential(scene.x0, scene.x1, 1.0 / scene.focal, RansacOptions(seed=seed))
        assert res.status == "ok" and res.covariance is not None and res.sigma_deg is not None
        assert res.covariance.shape == (5, 5) and torch.allclose(res.covariance, res.covariance.T)
        squared.append(
            [float(rotation_error_deg(res.R, scene.R)) ** 2, float(translation_error_deg(res.t, scene.t)) ** 2]
        )
        predicted.append([s**2 for s in res.sigma_deg])
    ratio = torch.tensor(predicted).mean(0) / torch.tensor(squared).mean(0)
    assert bool(((ratio > 0.4) & (ratio < 2.5)).all()), ratio
    x0, x1, threshold = _narrow_view()
    narrow = ransac_essential(x0, x1, threshold, RansacOptions())
    assert narrow.sigma_deg is not None
    assert min(narrow.sigma_deg) > 5 * max(torch.tensor(predicted).mean(0).sqrt().tolist())
    unrefined = ransac_essential(x0, x1, threshold, RansacOptions(final_refinement=False))
    assert unrefined.covariance is None and unrefined.sigma_deg is None
