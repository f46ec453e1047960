"""Network inputs (method.md §1) and chunked inference over any number of matches."""

import math

import pytest
import torch

from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.consensus import ConsensusNetwork
from mbp_cli.network.features import chunk_indices, network_inputs, sampling_quality, score_correspondences


def _side(n):
    return {
        "ratio": torch.linspace(0.1, 0.9, n, dtype=torch.float64),
        "scale_ratio": torch.full((n,), math.e, dtype=torch.float64),
        "orientation_diff": torch.full((n,), math.pi / 2, dtype=torch.float64),
    }


def test_sift_inputs_in_the_documented_order():
    x0, x1 = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    config = NetworkConfig()
    x = network_inputs(x0, x1, _side(6), config)
    assert x.shape == (8, 6) and x.dtype == torch.float32
    torch.testing.assert_close(x[:4], torch.cat([x0.T, x1.T]).float())
    torch.testing.assert_close(x[4], _side(6)["ratio"].float())
    torch.testing.assert_close(x[5], torch.ones(6))  # log(e)
    torch.testing.assert_close(x[6], torch.ones(6))  # sin(pi / 2)
    torch.testing.assert_close(x[7], torch.zeros(6), atol=1e-6, rtol=0)  # cos(pi / 2)


def test_loftr_inputs_and_missing_side_information():
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    x = network_inputs(x0, x0, {"confidence": torch.tensor([0.1, 0.5, 0.9])}, NetworkConfig(inputs="loftr"))
    assert x.shape == (5, 3)
    with pytest.raises(ValueError, match="no scale_ratio, orientation_diff: use a model for this matcher"):
        network_inputs(x0, x0, {"ratio": torch.ones(3)}, NetworkConfig())


def test_chunks_cover_every_match_once():
    index, mask = chunk_indices(2500, 1000, torch.Generator().manual_seed(0))
    assert index.shape == mask.shape == (3, 834)
    assert torch.equal(index[mask].sort().values, torch.arange(2500))
    index, mask = chunk_indices(700, 1000, torch.Generator())
    assert torch.equal(index, torch.arange(700)[None]) and mask.all()


def test_scoring_many_matches_is_chunked_deterministic_and_complete():
    torch.manual_seed(0)
    model = ConsensusNetwork(NetworkConfig(width=8, blocks_before_graph=1, blocks_after_graph=0, max_points=50)).eval()
    x = torch.randn(8, 120)
    a, b = score_correspondences(model, x, seed=3), score_correspondences(model, x, seed=3)
    assert a.shape == (120,) and torch.isfinite(a).all() and torch.equal(a, b)
    small = torch.randn(8, 40)
    torch.testing.assert_close(score_correspondences(model, small), model(small[None])[0])
    assert model.training is False
    # a smaller group size than the config's splits `small` too: each match then sees only its group's context
    grouped = score_correspondences(model, small, seed=3, max_points=20)
    assert grouped.shape == (40,) and torch.isfinite(grouped).all()
    assert not torch.allclose(grouped, score_correspondences(model, small))
    model.train()
    score_correspondences(model, small)
    assert model.training is True  # scoring leaves a training model in training mode


def test_sampling_quality_per_sampler():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(sampling_quality(logits, "gumbel"), torch.nn.functional.logsigmoid(logits).double())
    assert torch.equal(sampling_quality(logits, "prosac").argsort(), logits.argsort())
    assert sampling_quality(logits, "uniform") is None
