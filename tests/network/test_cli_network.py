"""``mbp estimate`` with the consensus network: by default, by name, by file, and without (--no-network)."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from mbp_cli.cli import app
from mbp_cli.metrics import rotation_error_deg, translation_error_deg
from mbp_cli.network.weights import DEFAULT_MODEL, model_card, shipped_dirs

from paths import SAMPLES

PAIR = [str(SAMPLES / "buddha_00001.png"), str(SAMPLES / "buddha_00015.png"), "--K", str(SAMPLES / "cameras.txt")]


def _ground_truth():
    rows = np.loadtxt(SAMPLES / "ground_truth.txt")
    return rows[:3], rows[3]


def _run(*args):
    return CliRunner().invoke(app, ["estimate", *PAIR, "--json", "--quiet", *args])


def _check_pose(doc):
    R_gt, t_gt = _ground_truth()
    assert rotation_error_deg(np.array(doc["R"]), R_gt) < 2.0
    assert translation_error_deg(np.array(doc["t"]), t_gt) < 2.0


def test_the_network_is_used_by_default_and_by_name():
    result = _run()
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["network"] == DEFAULT_MODEL
    assert doc["config"]["ransac"]["sampler"] == "gumbel" and doc["config"]["network"] is True
    assert doc["timings_ms"]["network"] > 0
    _check_pose(doc)
    named = json.loads(_run("--model", DEFAULT_MODEL).stdout)
    assert named["R"] == doc["R"] and named["inliers"] == doc["inliers"]  # the same model, seeded


def test_no_network_is_the_classical_path():
    result = _run("--no-network")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["network"] is None and "network" not in doc["timings_ms"]
    assert doc["config"]["ransac"]["sampler"] == "prosac" and doc["config"]["network"] is False
    _check_pose(doc)


def test_weights_by_path(tmp_path):
    _, weights_dir = shipped_dirs()
    copy = tmp_path / "mine.safetensors"
    shutil.copy(weights_dir / model_card(DEFAULT_MODEL)["weights"]["file"], copy)
    result = _run("--weights", str(copy), "--sampler", "prosac")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["network"] == str(copy) and doc["config"]["ransac"]["sampler"] == "prosac"
    _check_pose(doc)


def test_a_model_for_other_matches_is_a_usage_error(tmp_path):
    from mbp_cli.network.config import NetworkConfig
    from mbp_cli.network.consensus import ConsensusNetwork
    from mbp_cli.network.weights import save_weights

    save_weights(ConsensusNetwork(NetworkConfig(inputs="loftr", width=8)), tmp_path / "loftr.safetensors")
    result = _run("--weights", str(tmp_path / "loftr.safetensors"))
    assert result.exit_code == 2
    assert "takes loftr matches but --matcher sift gives sift matches" in result.stderr.replace("\n", " ")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model", "nope"], 6, "no shipped model named 'nope'"),
        (["--weights", "{tmp}/corrupt.safetensors"], 6, "corrupt"),
        (["--weights", "{tmp}/missing.safetensors"], 6, "does not exist"),
        (["--no-network", "--model", DEFAULT_MODEL], 2, "--no-network cannot be combined"),
        (["--no-network", "--sampler", "gumbel"], 2, "without a network"),
    ],
)
def test_bad_network_options_fail_with_one_line(tmp_path, args, code, message):
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    result = _run(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == code
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in result.stderr.replace("\n", " ")


def test_a_model_with_a_fit_head_weighs_the_final_fit(tmp_path):
    """`--weights` with a fit head: an untrained head gives the base model's estimate with its default probability
    weights exactly, a trained one moves the final fit (and stays accurate); the probability weights move it too
    from the unweighted fit, by far less than a tenth of a degree on this well-conditioned pair."""
    from dataclasses import replace

    import torch

    from mbp_cli.network.consensus import ConsensusNetwork
    from mbp_cli.network.weights import load_model, save_weights

    base = load_model(DEFAULT_MODEL)
    with_head = ConsensusNetwork(replace(base.config, fit_head_width=8))
    with_head.load_state_dict(base.state_dict(), strict=False)
    save_weights(with_head, tmp_path / "untrained.safetensors")
    torch.nn.init.normal_(with_head.fit_head.layers[-1].weight, std=1.0, generator=torch.Generator().manual_seed(0))
    save_weights(with_head, tmp_path / "trained.safetensors")
    plain = json.loads(_run("--no-probability-weights").stdout)
    weighted = json.loads(_run().stdout)
    untrained = json.loads(_run("--weights", str(tmp_path / "untrained.safetensors")).stdout)
    trained = json.loads(_run("--weights", str(tmp_path / "trained.safetensors")).stdout)
    assert np.allclose(untrained["R"], weighted["R"], atol=1e-12) and untrained["inliers"] == weighted["inliers"]
    assert not np.allclose(trained["R"], weighted["R"], atol=1e-9)
    _check_pose(trained)
    assert not np.allclose(weighted["R"], plain["R"], atol=1e-9)
    assert rotation_error_deg(np.array(weighted["R"]), np.array(plain["R"])) < 0.1
    _check_pose(weighted)
