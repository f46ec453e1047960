"""The consensus network: shapes, masked padding, the kNN never picking padded points, and its size."""

import pytest
import torch

from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.consensus import ConsensusNetwork, count_parameters, masked_knn

SMALL = NetworkConfig(width=16, blocks_before_graph=1, blocks_after_graph=1, blocks_after_global=1, max_points=64)


def _trained_like(config: NetworkConfig) -> ConsensusNetwork:
    """A network whose batch-norm statistics are not the identity (a few training-mode passes), in float64 eval."""
    torch.manual_seed(0)
    net = ConsensusNetwork(config).double()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, config.in_channels, 50, dtype=torch.float64) * 2 + 1)
    return net.eval()


def test_logits_shape_and_padding_is_minus_infinity():
    net = _trained_like(SMALL)
    x = torch.randn(3, SMALL.in_channels, 40, dtype=torch.float64)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 30:] = False
    first, final = net.forward_both(x, mask)
    assert first.shape == final.shape == (3, 40)
    assert torch.isinf(final[1, 30:]).all() and (final[1, 30:] < 0).all()
    assert torch.isfinite(final[mask]).all() and torch.isfinite(first[mask]).all()


@pytest.mark.parametrize("n_real", [7, 23, 40])  # fewer real points than k = 9 included
def test_masked_padding_gives_the_logits_of_the_unpadded_input(n_real):
    net = _trained_like(SMALL)
    torch.manual_seed(1)
    real = torch.randn(1, SMALL.in_channels, n_real, dtype=torch.float64)
    alone = net(real)
    # the same pair padded with garbage (huge values, NaN) inside a batch with another, longer pair
    other = torch.randn(1, SMALL.in_channels, 60, dtype=torch.float64)
    padded = torch.cat([real, torch.full((1, SMALL.in_channels, 60 - n_real), float("nan"))], -1)
    padded[0, :, n_real::2] = 1e6
    batch = torch.cat([padded, other])
    mask = torch.zeros(2, 60, dtype=torch.bool)
    mask[0, :n_real] = True
    mask[1] = True
    logits = net(batch, mask)
    torch.testing.assert_close(logits[0, :n_real], alone[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits[1], net(other)[0], rtol=1e-10, atol=1e-10)


def test_padding_changes_nothing_in_training_mode_either():
    """Batch statistics are taken over real correspondences only."""
    torch.manual_seed(2)
    net = ConsensusNetwork(SMALL).double().train()
    real = torch.randn(1, SMALL.in_channels, 30, dtype=torch.float64)
    padded = torch.cat([real, torch.randn(1, SMALL.in_channels, 10, dtype=torch.float64) * 100], -1)
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[0, :30] = True
    torch.testing.assert_close(net(padded, mask)[0, :30], net(real)[0], rtol=1e-10, atol=1e-10)


def test_knn_never_picks_padded_points_and_starts_with_itself():
    x = torch.randn(2, 20, 8, dtype=torch.float64)
    x[0, 12:] = x[0, :8] + 1e-9  # padded points that would be the nearest neighbours of real ones
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, 12:] = False
    index, valid = masked_knn(x, mask, 9)
    assert valid.all()
    assert (index[0] < 12).all()
    assert torch.equal(index[0, :12, 0], torch.arange(12))  # a real point's nearest is itself
    assert torch.equal(index[1, :, 0], torch.arange(20))
    # fewer real points than k: the extra slots are flagged
    index, valid = masked_knn(x[:1, :12], None, 15)
    assert valid[..., :12].all() and not valid[..., 12:].any()


def test_graph_block_equals_its_edge_convolution_definition():
    """The factorised first convolution equals the (1, 3)-stride-3 convolution of the edge features."""
    torch.manual_seed(3)
    net = _trained_like(SMALL)
    block = net.graph
    x = torch.randn(2, 30, SMALL.width, dtype=torch.float64)
    index, _ = masked_knn(x, None, SMALL.k)
    B, N, C = x.shape
    neighbours = x[torch.arange(B)[:, None, None], index]  # (B, N, k, C)
    centre = x[:, :, None].expand_as(neighbours)
    edges = torch.cat([centre, centre - neighbours], -1)  # (B, N, k, 2C)
    conv = torch.nn.functional.conv2d(
        edges.permute(0, 3, 1, 2),
        block.reduce1.weight.view(C, 3, 2 * C).permute(0, 2, 1)[:, :, None, :],
        stride=(1, 3),
    )  # (B, C, N, k / 3)
    out = torch.relu(block.bn1(conv.permute(0, 2, 3, 1).reshape(B, N * 3, C), None))
    expected = x + torch.relu(block.bn2(block.reduce2(out.reshape(B, N, 3 * C)), None))
    torch.testing.assert_close(block(x, None), expected, rtol=1e-10, atol=1e-10)


def test_every_parameter_receives_a_gradient():
    """No dead parameters: each one is reached by the losses of the two heads."""
    net = ConsensusNetwork(SMALL).train()
    first, final = net.forward_both(torch.randn(2, SMALL.in_channels, 30))
    (first.sum() + final.sum()).backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_default_size_is_close_to_the_reference():
    """method.md §2: ~0.47 M trainable parameters at width 128 (the reference's dead weights excluded)."""
    n = count_parameters(ConsensusNetwork(NetworkConfig(width=128)))
    assert 0.40e6 < n < 0.50e6


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match="input channels"):
        ConsensusNetwork(SMALL)(torch.randn(1, 5, 20))


def test_config_json_round_trip_and_validation():
    config = NetworkConfig(inputs="loftr", width=32, k=6)
    assert NetworkConfig.from_json(config.to_json()) == config
    assert config.channels == ("x0", "y0", "x1", "y1", "confidence")
    with pytest.raises(ValueError, match="multiple of 3"):
        NetworkConfig(k=10)
    with pytest.raises(ValueError, match="unknown network config keys"):
        NetworkConfig.from_dict({"width": 8, "depth": 3})
