import math
from dataclasses import replace

import pytest
import torch

from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.consensus import ConsensusNetwork
from mbp_cli.network.features import fit_weighting, network_inputs, score_correspondences
from mbp_cli.network.fit_head import FitHead, fit_feature_names, fit_features
from mbp_cli.network.weights import load_weights, save_weights
from mbp_cli.robust.ransac import RansacOptions, ransac_essential

from synthetic import make_scene


def _sift_side(n, generator):
    return {
        "ratio": torch.rand(n, generator=generator, dtype=torch.float64) * 0.9,
        "scale_ratio": torch.exp(0.3 * torch.randn(n, generator=generator, dtype=torch.float64)),
        "orientation_diff": 0.2 + 0.05 * torch.randn(n, generator=generator, dtype=torch.float64),
    }


@pytest.mark.parametrize("kind", ["sift", "loftr"])
def test_fit_features_have_one_column_per_name_and_are_finite(kind):
    g = torch.Generator().manual_seed(0)
    n = 50
    config = NetworkConfig(inputs=kind, width=8, blocks_before_graph=1, blocks_after_graph=1)
    side = _sift_side(n, g) if kind == "sift" else {"confidence": torch.rand(n, generator=g, dtype=torch.float64)}
    inputs = network_inputs(torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g), side, config)
    r2 = torch.rand(n, generator=g) * 9.0
    features = fit_features(inputs, torch.randn(n, generator=g), r2, kind)
    assert features.shape == (n, len(fit_feature_names(kind))) and features.dtype == torch.float32
    assert bool(torch.isfinite(features).all())
    assert torch.allclose(features[:, 0] ** 2, r2, rtol=1e-5)  # the residual in thresholds
    assert torch.allclose(features[:, 3], (r2 < 1).float().mean().expand(n))  # inlier fraction


def test_orientation_deviation_is_measured_around_the_circle():
    """Orientation changes of +179 and -179 degrees are 2 degrees apart, not 358."""
    n = 10
    config = NetworkConfig(width=8, blocks_before_graph=1, blocks_after_graph=1)
    angles = torch.tensor([math.radians(179.0), math.radians(-179.0)] * (n // 2), dtype=torch.float64)
    side = {"ratio": torch.full((n,), 0.5), "scale_ratio": torch.ones(n), "orientation_diff": angles}
    inputs = network_inputs(torch.zeros(n, 2), torch.zeros(n, 2), side, config)
    features = fit_features(inputs, torch.zeros(n), torch.zeros(n), "sift")
    assert float(features[:, -1].max()) < math.radians(1.5)


def test_untrained_head_gives_the_network_probabilities_and_the_same_estimate():
    scene = make_scene(num_points=200, outlier_ratio=0.3, noise_px=0.5, seed=4)
    g = torch.Generator().manual_seed(1)
    config = NetworkConfig(width=8, blocks_before_graph=1, blocks_after_graph=1, fit_head_width=8)
    model = ConsensusNetwork(config).eval()
    inputs = network_inputs(scene.x0, scene.x1, _sift_side(200, g), config)
    logits = score_correspondences(model, inputs)
    weighting = fit_weighting(model, inputs, logits)
    assert weighting is not None
    near = torch.rand(200, generator=g) < 0.5
    weights = weighting(near, torch.rand(int(near.sum()), dtype=torch.float64))
    assert weights.dtype == torch.float64
    assert torch.allclose(weights, torch.sigmoid(logits.double())[near], atol=1e-12)
    head_free = ConsensusNetwork(replace(config, fit_head_width=0)).eval()
    head_free.load_state_dict(model.state_dict(), strict=False)
    probabilities = fit_weighting(head_free, inputs, score_correspondences(head_free, inputs), probabilities=True)
    threshold = 1.0 / scene.focal
    by_probability = ransac_essential(
        scene.x0, scene.x1, threshold, RansacOptions(seed=0), refinement_weights=probabilities
    )
    by_head = ransac_essential(scene.x0, scene.x1, threshold, RansacOptions(seed=0), refinement_weights=weighting)
    assert torch.allclose(by_probability.R, by_head.R, atol=1e-12)
    assert torch.allclose(by_probability.t, by_head.t, atol=1e-12)


def test_without_a_fit_head_the_network_probabilities_weigh_the_fit_only_when_asked():
    g = torch.Generator().manual_seed(2)
    config = NetworkConfig(width=8, blocks_before_graph=1, blocks_after_graph=1)
    model = ConsensusNetwork(config).eval()
    x0, x1 = torch.rand(50, 2, generator=g), torch.rand(50, 2, generator=g)
    inputs = network_inputs(x0, x1, _sift_side(50, g), config)
    logits = score_correspondences(model, inputs)
    assert fit_weighting(model, inputs, logits) is None
    weighting = fit_weighting(model, inputs, logits, probabilities=True)
    near = torch.rand(50, generator=g) < 0.5
    weights = weighting(near, torch.rand(int(near.sum()), dtype=torch.float64))
    assert weights.dtype == torch.float64
    assert torch.allclose(weights, torch.sigmoid(logits.double())[near])


def test_refinement_weights_see_the_margin_set_and_steer_the_final_fit():
    scene = make_scene(num_points=300, outlier_ratio=0.2, noise_px=1.0, seed=5)
    threshold = 1.0 / scene.focal
    options = RansacOptions(seed=0)
    seen = {}

    def keep_true_inliers(near, residuals2):
        seen["near"], seen["r2"] = near, residuals2
        return scene.inlier[near].double()

    weighted = ransac_essential(scene.x0, scene.x1, threshold, options, refinement_weights=keep_true_inliers)
    assert seen["near"].shape == (300,) and seen["near"].dtype == torch.bool
    assert seen["r2"].shape == (int(seen["near"].sum()),) and float(seen["r2"].max()) < options.refine_margin**2
    no_fit = ransac_essential(scene.x0, scene.x1, threshold, replace(options, final_refinement=False))

    def error(result):
        return float(torch.linalg.matrix_norm(result.R - scene.R)) + float((result.t - scene.t).norm())

    assert error(weighted) < error(no_fit)


def test_a_model_with_a_fit_head_round_trips_and_older_configs_still_load(tmp_path):
    config = NetworkConfig(width=8, blocks_before_graph=1, blocks_after_graph=1, fit_head_width=4)
    model = ConsensusNetwork(config)
    assert isinstance(model.fit_head, FitHead)
    torch.nn.init.normal_(model.fit_head.layers[-1].weight)
    save_weights(model, tmp_path / "m.safetensors")
    loaded = load_weights(tmp_path / "m.safetensors")
    assert loaded.config == config and loaded.fit_head is not None
    features, logits = torch.randn(7, len(fit_feature_names("sift"))), torch.randn(7)
    assert torch.equal(loaded.fit_head(features, logits), model.fit_head(features, logits))
    old = {k: v for k, v in config.to_dict().items() if k != "fit_head_width"}
    assert ConsensusNetwork(NetworkConfig.from_dict(old)).fit_head is None


def test_negative_fit_head_width_is_rejected():
    with pytest.raises(ValueError, match="fit_head_width"):
        NetworkConfig(fit_head_width=-1)
