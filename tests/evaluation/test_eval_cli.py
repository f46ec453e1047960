"""The ``mbp eval`` and ``mbp eval-merge`` commands (in-process), and the option set shared with ``mbp estimate``."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mbp_cli.cli import app
from mbp_cli.cli_options import EstimateOptions
from mbp_cli.errors import ExitCode

from colmap_model import copy_scene
from paths import SCENES

KERMIT = SCENES / "kermit"
needs_scenes = pytest.mark.skipif(not KERMIT.is_dir(), reason="development scenes not available")


def _mbp(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _params(command: str) -> dict[str, tuple]:
    click_command = typer.main.get_command(app).commands[command]
    return {p.name: (tuple(p.opts), tuple(p.secondary_opts), getattr(p, "help", None)) for p in click_command.params}


def test_estimate_and_eval_share_one_option_set() -> None:
    estimate, evaluate = _params("estimate"), _params("eval")
    shared = [f.name for f in dataclasses.fields(EstimateOptions)]
    assert {name: estimate[name] for name in shared} == {name: evaluate[name] for name in shared}
    assert estimate["local_optimization"][:2] == (("--lo",), ("--no-lo",))
    assert estimate["sampler"][:2] == (("--sampler",), ())


def test_options_to_config() -> None:
    config = EstimateOptions(threshold=2.0, local_optimization=False, sampler="uniform", max_iterations=100).to_config()
    assert config.ransac.threshold_px == 2.0 and config.ransac.local_optimization is False
    assert config.ransac.sampler == "uniform" and config.ransac.min_iterations == 100
    assert config.matcher == "sift" and config.ratio == 0.8
    with pytest.raises(ValueError, match="unknown scoring"):
        EstimateOptions(scoring="ransac").to_config()


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        (["--shard", "3/2"], ExitCode.USAGE, "--shard '3/2': need 0 <= i < n"),
        (["--baselines", "magic"], ExitCode.USAGE, "unknown baseline 'magic'"),
        (["--workers", "0"], ExitCode.USAGE, "--workers must be at least 1"),
        (["--sampler", "best"], ExitCode.USAGE, "unknown sampler 'best'"),
        (["--frame-gap", "0"], ExitCode.USAGE, "--frame-gap must be at least 1"),
        (["--images", "."], ExitCode.USAGE, "--images only applies to a pairs file"),
    ],
)
@needs_scenes
def test_usage_errors_are_one_line(tmp_path: Path, extra: list[str], code: ExitCode, needle: str) -> None:
    result = _mbp("eval", KERMIT, "--out", tmp_path / "out", *extra)
    assert result.exit_code == code, result.stderr
    assert result.stderr.startswith("error: ") and needle in result.stderr and result.stderr.count("\n") == 1
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_input_and_output_errors(tmp_path: Path) -> None:
    missing = _mbp("eval", tmp_path / "nothing", "--out", tmp_path / "out")
    assert missing.exit_code == ExitCode.USAGE and "does not exist" in missing.stderr
    (tmp_path / "file").write_text("x")
    scene = tmp_path / "s"
    (scene / "sparse").mkdir(parents=True)
    (scene / "sparse" / "cameras.txt").write_text("1 PINHOLE 640 480 500 500 320 240\n")
    (scene / "sparse" / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n2 1 0 0 0 1 0 0 1 b.png\n\n")
    (scene / "images").mkdir()
    as_file = _mbp("eval", scene, "--out", tmp_path / "file", "--quiet")
    assert as_file.exit_code == ExitCode.OUTPUT and "is a file" in as_file.stderr
    broken = tmp_path / "broken"
    shutil.copytree(scene, broken)
    (broken / "sparse" / "cameras.txt").write_text("1 PINHOLE 640\n")
    bad_model = _mbp("eval", broken, "--out", tmp_path / "out")
    assert bad_model.exit_code == ExitCode.CALIBRATION and "expected CAMERA_ID MODEL" in bad_model.stderr
    no_shards = _mbp("eval-merge", tmp_path / "empty")
    assert no_shards.exit_code == ExitCode.OUTPUT and "no shard folders" in no_shards.stderr


@needs_scenes
def test_sharded_cli_runs_and_merge(tmp_path: Path) -> None:
    names = ["kermit000.jpg", "kermit001.jpg", "kermit002.jpg"]
    scene = copy_scene(KERMIT, tmp_path / "kermit", names, [(names[0], names[1]), (names[1], names[2])])
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        result = _mbp("eval", scene, "--out", out, "--shard", shard, "--no-plots", "--quiet")
        assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    merged = _mbp("eval-merge", out, "--json", "--no-plots")
    assert merged.exit_code == 0, merged.stderr
    summary = json.loads(merged.stdout)
    assert summary["pairs"]["total"] == summary["pairs"]["scored"] == 2
    assert summary["merge"]["missing_shards"] == [] and "AUC@5" in merged.stderr
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 2
    # Run again: resumes with nothing to do, same results.
    again = _mbp("eval", scene, "--out", out, "--shard", "0/2", "--no-plots", "--json", "--quiet")
    assert again.exit_code == 0 and json.loads(again.stdout)["sessions"][-1]["pairs"] == 0


@needs_scenes
def test_folder_of_images_is_estimated_only(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("kermit000.jpg", "kermit001.jpg"):
        shutil.copyfile(KERMIT / "images" / name, folder / name)
    no_k = _mbp("eval", folder, "--out", tmp_path / "out")
    assert no_k.exit_code == ExitCode.USAGE and "--K" in no_k.stderr
    result = _mbp("eval", folder, "--out", tmp_path / "out", "--K", "688.4,688.4,319.5,239.5", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["pairs"] | {"status_ok": 1} == {
        "total": 1,
        "scored": 0,
        "no_ground_truth": 1,
        "errors": 0,
        "status_ok": 1,
    }
    record = json.loads((tmp_path / "out" / "pairs.jsonl").read_text())
    assert record["status"] == "ok" and record["gt"] is False and record["err_R_deg"] is None
    assert "estimated only" in record["reason"] and len(record["R"]) == 3
    assert "no pair with ground truth" in (tmp_path / "out" / "report.md").read_text()
