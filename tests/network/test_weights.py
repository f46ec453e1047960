"""Weights files: safetensors round trip, checks against the model card, clear errors on bad files."""

import json

import pytest
import torch

from mbp_cli.errors import ExitCode, WeightsError
from mbp_cli.network import weights as W
from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.consensus import ConsensusNetwork

SMALL = NetworkConfig(width=8, blocks_before_graph=1, blocks_after_graph=0, blocks_after_global=0, max_points=32)


def _net(config=SMALL, seed=0) -> ConsensusNetwork:
    torch.manual_seed(seed)
    net = ConsensusNetwork(config)
    with torch.no_grad():  # non-trivial batch-norm statistics, which must round-trip too
        net(torch.randn(2, config.in_channels, 20))
    return net.eval()


def test_round_trip_restores_every_tensor_and_the_config(tmp_path):
    net = _net()
    path = tmp_path / "m.safetensors"
    sha = W.save_weights(net, path, {"name": "m"})
    assert sha == W.file_sha256(path)
    loaded = W.load_weights(path)
    assert loaded.config == net.config
    assert loaded.source == str(path)
    assert not loaded.training
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(1, SMALL.in_channels, 25)
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_missing_corrupt_and_foreign_files_are_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist") as info:
        W.load_weights(tmp_path / "none.safetensors")
    assert info.value.exit_code == ExitCode.WEIGHTS
    path = tmp_path / "m.safetensors"
    W.save_weights(_net(), path)
    data = bytearray(path.read_bytes())
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt"):
        W.load_weights(tmp_path / "truncated.safetensors")
    data[-10] ^= 0xFF  # one flipped byte in the last tensor
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum"):
        W.load_weights(tmp_path / "flipped.safetensors")
    (tmp_path / "text.safetensors").write_text("not weights")
    with pytest.raises(WeightsError, match="corrupt or not a safetensors"):
        W.load_weights(tmp_path / "text.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, tmp_path / "foreign.safetensors")
    with pytest.raises(WeightsError, match="not an mbp consensus-network file"):
        W.load_weights(tmp_path / "foreign.safetensors")


def test_tensors_that_do_not_fit_the_stored_config_are_refused(tmp_path):
    from safetensors.torch import save_file

    net = _net()
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    tensors.pop("head1.bias")
    metadata = {"format": W.FORMAT, "config": SMALL.to_json(), "tensors_sha256": W.tensors_checksum(tensors)}
    save_file(tensors, tmp_path / "partial.safetensors", metadata=metadata)
    with pytest.raises(WeightsError, match="missing: head1.bias"):
        W.load_weights(tmp_path / "partial.safetensors")


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A shipped-models folder pair holding one model 'tiny'."""
    models, weights = tmp_path / "models", tmp_path / "weights"
    sha = W.save_weights(_net(), weights / "tiny.safetensors")
    card = {
        "name": "tiny",
        "weights": {"file": "tiny.safetensors", "sha256": sha},
        "architecture": {"config": SMALL.to_dict()},
    }
    models.mkdir()
    (models / "tiny.json").write_text(json.dumps(card))
    monkeypatch.setattr(W, "shipped_dirs", lambda: (models, weights))
    return models, weights


def test_load_by_name_checks_the_model_card(registry):
    models, weights = registry
    assert W.available_models() == ["tiny"]
    net = W.load_model("tiny")
    assert net.source == "tiny" and net.config == SMALL
    with pytest.raises(WeightsError, match="no shipped model named 'nope'; choose one of tiny"):
        W.load_model("nope")
    # a card whose configuration differs from the file's
    card = json.loads((models / "tiny.json").read_text())
    card["architecture"]["config"]["width"] = 16
    (models / "tiny.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="another configuration"):
        W.load_model("tiny")
    # a weights file replaced by another model's
    W.save_weights(_net(seed=1), weights / "tiny.safetensors")
    with pytest.raises(WeightsError, match="SHA-256 differs"):
        W.load_model("tiny")
    (weights / "tiny.safetensors").unlink()
    with pytest.raises(WeightsError, match="are missing"):
        W.load_model("tiny")


def test_the_default_model_is_shipped_and_loads():
    assert W.DEFAULT_MODEL in W.available_models()
    net = W.load_model(W.DEFAULT_MODEL)
    card = W.model_card(W.DEFAULT_MODEL)
    assert card["architecture"]["parameters"] == sum(p.numel() for p in net.parameters())
    assert card["recipe"]["command"].startswith("python -m mbp_cli.training.init ")
    _, weights_dir = W.shipped_dirs()
    assert (weights_dir / card["weights"]["file"]).stat().st_size < 5_000_000
