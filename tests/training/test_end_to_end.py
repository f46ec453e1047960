"""One real training step in each backprop mode, resume equality, a 2-process torchrun run and CLI errors."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import mbp_cli.training.trainer as trainer
from mbp_cli.cli import app
from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.consensus import ConsensusNetwork
from mbp_cli.training.end_to_end import EndToEndConfig, LossWeights, make_batch, seeded_generator, step_losses
from mbp_cli.training.trainer import TrainOptions, train

from paths import SCENES

TINY = NetworkConfig(width=16, blocks_before_graph=1, blocks_after_graph=1, blocks_after_global=1, max_points=256)


def _gradient(model, pairs, mode, **recipe):
    config = EndToEndConfig(hypotheses=16, max_points=256, backprop=mode, **recipe)
    batch = make_batch(pairs, TINY, config, seeded_generator(0, 0))
    model.zero_grad()
    loss, stats = step_losses(model.forward_both, batch, config, seeded_generator(0, 1))
    loss.backward()
    return (
        loss,
        stats,
        torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten() for p in model.parameters()]),
    )


def test_one_training_step_in_each_backprop_mode_gives_the_same_finite_gradient(kermit_pairs, single_thread):
    torch.manual_seed(0)
    model = ConsensusNetwork(TINY).train()
    pairs = kermit_pairs[:3]
    grads = {}
    for mode in ("ift", "ddn", "autograd"):
        # The pose loss is smooth in E; the epipolar loss's gradient also moves with the 1e-6 root errors of
        # kornia's solver (the autograd mode's forward), so the modes are compared on the former.
        loss, stats, grads[mode] = _gradient(model, pairs, mode, losses=LossWeights(epipolar=0.0, pose=1.0))
        assert torch.isfinite(loss) and torch.isfinite(grads[mode]).all()
        assert stats["hypotheses_with_root"] > 0.5
        _, _, with_epipolar = _gradient(model, pairs, mode, losses=LossWeights(epipolar=1.0, pose=1.0))
        assert torch.isfinite(with_epipolar).all() and with_epipolar.norm() > 0
    assert grads["ift"].norm() > 0
    for mode in ("ddn", "autograd"):
        assert (grads[mode] - grads["ift"]).norm() <= 1e-4 * grads["ift"].norm()


def test_solver_gradient_reaches_the_logits_through_the_sampler(kermit_pairs, single_thread):
    """With only the epipolar loss, every gradient comes through the solver and the straight-through weights."""
    torch.manual_seed(0)
    model = ConsensusNetwork(TINY).train()
    _, _, grad = _gradient(model, kermit_pairs[:2], "ift", losses=LossWeights(epipolar=1.0, classification=0.0))
    assert torch.isfinite(grad).all() and grad.norm() > 0


def test_self_supervised_step_uses_pseudo_poses(kermit_pairs, single_thread):
    torch.manual_seed(0)
    model = ConsensusNetwork(TINY).train()
    loss, stats, grad = _gradient(
        model, kermit_pairs[:2], "ift", self_supervised=True, losses=LossWeights(eigen_free=1.0)
    )
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.norm() > 0


def _options(cache, **kw):
    options = TrainOptions(
        data=str(SCENES),
        train_scenes=("kermit",),
        val_scenes=(),
        cache_dir=str(cache),
        network=TINY,
        recipe=EndToEndConfig(hypotheses=8, max_points=256),
        batch_pairs=4,
        max_steps=4,
        checkpoint_every=2,
        device="cpu",
    )
    return dataclasses.replace(options, **kw)


def test_resume_after_an_interruption_gives_the_uninterrupted_state(match_cache, tmp_path, monkeypatch, single_thread):
    options = _options(match_cache)
    full = train(options, tmp_path / "full")

    real_step = trainer.step_losses
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # in step 4, after the checkpoint of step 2 and the unsaved step 3
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "step_losses", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(options, tmp_path / "killed")
    monkeypatch.setattr(trainer, "step_losses", real_step)
    resumed = train(options, tmp_path / "killed", resume=True)
    assert resumed["step"] == full["step"] == 4
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_with_two_cpu_processes_trains(match_cache, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "mbp_cli", "train",
        "--data", str(SCENES), "--train-scenes", "kermit", "--cache-dir", str(match_cache), "--out", str(out),
        "--width", "16", "--hypotheses", "8", "--max-points", "256", "--batch-pairs", "4", "--max-steps", "2",
        "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "model.safetensors").is_file()
    assert sum(1 for _ in open(out / "log.jsonl")) == 2  # rank 0 logs each step once


def test_cli_refuses_to_overwrite_a_run_and_rejects_bad_options(match_cache, tmp_path):
    runner = CliRunner()
    base = ["train", "--data", str(SCENES), "--train-scenes", "kermit", "--cache-dir", str(match_cache)]
    tiny = ["--width", "16", "--hypotheses", "4", "--max-points", "64", "--batch-pairs", "2", "--max-steps", "1"]
    ok = runner.invoke(app, [*base, *tiny, "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    again = runner.invoke(app, [*base, *tiny, "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert again.exit_code == 5 and "--resume" in again.output
    bad_mode = runner.invoke(app, [*base, "--backprop", "magic", "--out", str(tmp_path / "x")])
    assert bad_mode.exit_code == 2 and "ift, ddn, autograd" in bad_mode.output
    bad_scene = runner.invoke(app, [*base[:3], "--train-scenes", "nowhere", "--out", str(tmp_path / "y")])
    assert bad_scene.exit_code == 2 and "no scene 'nowhere'" in bad_scene.output
    no_run = runner.invoke(app, [*base, *tiny, "--out", str(tmp_path / "z"), "--resume"])
    assert no_run.exit_code == 2 and "no run to resume" in no_run.output


def test_resume_with_other_options_is_refused(match_cache, tmp_path, single_thread):
    train(_options(match_cache, max_steps=1), tmp_path / "run")
    with pytest.raises(ValueError, match="options differ"):
        train(dataclasses.replace(_options(match_cache, max_steps=1), lr=1.0), tmp_path / "run", resume=True)


def test_self_supervised_finetune_on_a_folder_of_unposed_images(tmp_path):
    """`mbp finetune --self-supervised` on images without poses (only their calibration), from a weights file."""
    import shutil

    from mbp_cli.network.weights import load_weights, save_weights

    folder = tmp_path / "walk"
    folder.mkdir()
    for name in sorted(p.name for p in (SCENES / "kermit" / "images").iterdir())[:4]:
        shutil.copy(SCENES / "kermit" / "images" / name, folder / name)
    # kermit's cameras are one per image; its first one stands for all (a shared calibration, as for a video)
    lines = (SCENES / "kermit" / "sparse" / "cameras.txt").read_text().splitlines()
    calibration = tmp_path / "cameras.txt"
    calibration.write_text(next(line for line in lines if line and not line.startswith("#")) + "\n")
    torch.manual_seed(0)
    start = tmp_path / "start.safetensors"
    save_weights(ConsensusNetwork(TINY), start)
    out = tmp_path / "run"
    args = [
        "finetune", "--self-supervised", "--data", str(folder), "--K", str(calibration),
        "--frame-gap", "1", "--weights", str(start), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
        "--hypotheses", "8", "--max-points", "256", "--batch-pairs", "3", "--max-steps", "2", "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    tuned = load_weights(out / "model.safetensors")  # loadable as `mbp estimate --weights`
    before = load_weights(start)
    assert tuned.config == before.config
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed  # the weights moved
    records = [line for line in open(out / "log.jsonl")]
    assert len(records) == 2 and '"skipped": 0' in records[-1]
    # without --self-supervised, unposed images are refused with a fix
    refused = CliRunner().invoke(
        app, [a for a in args if a != "--self-supervised"][:-12] + ["--out", str(tmp_path / "r2")]
    )
    assert refused.exit_code == 2 and "no ground-truth poses" in refused.output


def test_training_on_a_pairs_file_with_ground_truth(tmp_path):
    """`--data` takes a SuperGlue/LoFTR-style pairs file (name0 name1 rot0 rot1 K0 K1 T_0to1), as `mbp eval` does."""
    import shutil

    import numpy as np

    from mbp_cli.io.colmap import read_scene, relative_pose

    scene = read_scene(SCENES / "dino")
    lines = []
    for a, b in scene.pairs[:3]:
        for name in (a, b):
            shutil.copy(scene.image_path(name), tmp_path / name)
        R, t = relative_pose(scene, a, b)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, t
        K0, K1 = scene.camera_of(a).K, scene.camera_of(b).K
        numbers = [*K0.flatten(), *K1.flatten(), *T.flatten()]
        lines.append(f"{a} {b} 0 0 " + " ".join(f"{v:.12g}" for v in numbers))
    pairs_file = tmp_path / "pairs_gt.txt"
    pairs_file.write_text("\n".join(lines) + "\n")
    options = TrainOptions(
        data=str(pairs_file),
        cache_dir=str(tmp_path / "cache"),
        network=TINY,
        recipe=EndToEndConfig(hypotheses=8, max_points=256),
        batch_pairs=3,
        max_steps=1,
        device="cpu",
    )
    pairs = trainer.load_pairs(*trainer.split_scenes(options)[:1], options)
    assert len(pairs) == 3 and all(np.isfinite(p.R).all() for p in pairs)
    state = train(options, tmp_path / "run")
    assert state["step"] == 1 and state["skipped"] == 0


def test_dsac_expectation_and_eigen_free_terms_give_finite_gradients(kermit_pairs, single_thread):
    torch.manual_seed(0)
    model = ConsensusNetwork(TINY).train()
    weights = LossWeights(epipolar=1.0, pose=1.0, classification=0.1, eigen_free=0.5)
    loss, stats, grad = _gradient(model, kermit_pairs[:2], "ift", expected=True, alpha=0.5, losses=weights)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.norm() > 0
    assert {"epipolar", "pose_error_deg", "classification", "eigen_free"} <= stats.keys()
