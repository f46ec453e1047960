import json

import pytest

from mbp_cli.network.weights import load_weights
from mbp_cli.training import final_fit, init

from paths import SCENES


@pytest.mark.parametrize(
    ("blocks", "message"),
    [("a,b,c", "three counts"), ("2,2", "three counts"), ("2,-1,1", "bad network configuration")],
)
def test_bad_blocks_stop_with_one_line_before_any_work(blocks, message, tmp_path):
    argv = ["--scenes-root", str(SCENES), "--train", "kermit", "--val", "dino", "--name", "x", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match=message):
        init.main([*argv, "--blocks", blocks])
    assert not any(tmp_path.iterdir())  # nothing written


def test_final_fit_recipe_trains_a_head_writes_a_loadable_model_and_resumes(match_cache, tmp_path, capsys):
    """The fit-head recipe on the real kermit pairs: a trained head, a model card, and a resumable run."""
    argv = [
        "--scenes-root", str(SCENES), "--train", "kermit", "--ratios", "0.8", "--cache-dir", str(match_cache),
        "--base", "sift-kl-w32-small", "--name", "kermit-fit", "--out", str(tmp_path), "--runs", str(tmp_path / "runs"),
        "--width", "8", "--batch", "8",
    ]  # fmt: skip
    final_fit.main([*argv, "--epochs", "1"])
    model = load_weights(tmp_path / "weights" / "kermit-fit.safetensors")
    assert model.config.fit_head_width == 8 and model.fit_head is not None
    assert float(model.fit_head.layers[-1].weight.detach().abs().sum()) > 0  # the head has moved off its uniform start
    card = json.loads((tmp_path / "models" / "kermit-fit.json").read_text())
    assert card["base_model"] == "sift-kl-w32-small" and card["final_fit_recipe"]["training_starts"] > 0
    assert set(card["final_fit_validation"]["training_ratio0.8"]) == {
        "pairs",
        "auc5_plain_lm",
        "auc5_probability_weights",
        "auc5_fit_head",
    }
    capsys.readouterr()
    final_fit.main([*argv, "--epochs", "2"])  # one more epoch, from the checkpoint and the cached starts
    out = capsys.readouterr().out
    assert "resumed from" in out and "after epoch 1" in out and "prepared" not in out
    history = json.loads((tmp_path / "models" / "kermit-fit.json").read_text())["final_fit_recipe"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_final_fit_recipe_rejects_bad_ratios_before_any_work(tmp_path):
    argv = ["--scenes-root", str(SCENES), "--train", "kermit", "--base", "sift-kl-w32-small", "--name", "x"]
    with pytest.raises(SystemExit, match="Lowe ratios"):
        final_fit.main([*argv, "--ratios", "0.8,1.5", "--out", str(tmp_path), "--runs", str(tmp_path / "runs")])
    assert not any(tmp_path.iterdir())


def test_final_fit_recipe_names_a_missing_base_model_in_one_line(tmp_path):
    argv = ["--scenes-root", str(SCENES), "--train", "kermit", "--base", "no-such-model", "--name", "x"]
    with pytest.raises(SystemExit, match="--base: no shipped model named 'no-such-model'"):
        final_fit.main([*argv, "--out", str(tmp_path), "--runs", str(tmp_path / "runs")])
    assert not any(tmp_path.iterdir())
