"""Tests of mbp_cli.evaluation.runner on real images: records, the same path as ``mbp estimate``, bad inputs, resume,
shards + merge, workers."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from small_scene import GOOD, PAIRS

from mbp_cli.errors import OutputError
from mbp_cli.evaluation import EvalSettings, collect_inputs, merge_runs, parse_baselines, parse_shard, run_evaluation
from mbp_cli.evaluation.runner import (
    Baseline,
    prepare_output,
    read_records,
    shard_tasks,
    single_threaded,
    worker_blocks,
)
from mbp_cli.io.colmap import read_scene
from mbp_cli.pipeline import EstimateConfig, estimate_pair
from mbp_cli.robust.ransac import RansacOptions

from paths import REPO, SCENES

SETTINGS = EvalSettings(EstimateConfig(), (Baseline("poselib"),))
TIMING_KEYS = ("time_ms", "timings_ms")


def _without_timings(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in TIMING_KEYS}
    out["baselines"] = {
        name: {k: v for k, v in b.items() if k not in TIMING_KEYS} for name, b in record["baselines"].items()
    }
    return out


def _by_key(records: list[dict]) -> dict:
    return {(r["scene"], r["image0"], r["image1"]): _without_timings(r) for r in records}


@pytest.fixture(scope="module")
def one_run(small_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("one_run")
    summary = run_evaluation(collect_inputs(small_scene), out, SETTINGS, input_path=str(small_scene))
    return out, summary


def test_records_of_a_run(one_run: tuple[Path, dict], small_scene: Path) -> None:
    out, summary = one_run
    records = read_records(out / "pairs.jsonl")
    assert [(r["image0"], r["image1"]) for r in records] == PAIRS  # every pair, good or bad, one line each
    by_pair = {(r["image0"], r["image1"]): r for r in records}
    for pair in GOOD:
        r = by_pair[pair]
        assert r["status"] == "ok" and r["reason"] is None and r["gt"] is True and r["scene"] == "kermit"
        R, t, E = np.array(r["R"]), np.array(r["t"]), np.array(r["E"])
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-8)
        tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
        np.testing.assert_allclose(E, tx @ R, atol=1e-8)
        assert r["num_matches"] > 100 and 0.5 * r["num_matches"] < r["num_inliers"] <= r["num_matches"]
        assert r["err_R_deg"] < 3.0 and r["err_t_deg"] < 5.0  # kermit's pseudo ground truth
        assert r["time_ms"] == r["timings_ms"]["estimation"] > 0
        assert len(r["predicted_error_deg"]) == 2 and all(0 < v < 1 for v in r["predicted_error_deg"])
        poselib = r["baselines"]["poselib"]
        assert poselib["status"] == "ok" and poselib["num_inliers"] <= r["num_matches"]
        assert poselib["err_R_deg"] < 3.0
    reasons = {pair: by_pair[pair]["reason"] for pair in PAIRS if pair not in GOOD}
    assert all(by_pair[pair]["status"] == "error" and by_pair[pair]["baselines"] == {} for pair in reasons)
    assert "kermit003.jpg is not a readable image" in reasons[("kermit000.jpg", "kermit003.jpg")]
    assert "ghost.jpg is not in the COLMAP model" in reasons[("kermit001.jpg", "ghost.jpg")]
    assert "kermit005.jpg does not exist" in reasons[("kermit000.jpg", "kermit005.jpg")]
    assert "kermit007.jpg has no texture to match" in reasons[("kermit007.jpg", "kermit001.jpg")]
    assert summary["pairs"]["total"] == 8 and summary["pairs"]["errors"] == 4 and summary["pairs"]["scored"] == 4
    assert summary["methods"]["mbp"]["overall"]["pairs"] == 4
    assert summary["predicted_error"]["overall"]["pairs"] == 4
    assert summary["predicted_error"]["per_scene"]["kermit"]["pairs"] == 4
    assert set(summary["methods"]) == {"mbp", "poselib"}
    assert json.loads((out / "summary.json").read_text())["pairs"] == summary["pairs"]
    report = (out / "report.md").read_text()
    assert "| mbp | 4 |" in report and "| poselib | 4 |" in report and "ghost.jpg" in report
    assert "## mbp's predicted error against the actual one" in report and "| kermit | 4 |" in report
    for png in ("cumulative_errors.png", "auc_per_scene.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Files written atomically get the permissions of plain open() (mkstemp's are owner-only).
    modes = {(out / name).stat().st_mode & 0o777 for name in ("pairs.jsonl", "summary.json", "report.md", "run.json")}
    assert len(modes) == 1


def test_same_result_as_mbp_estimate(one_run: tuple[Path, dict], small_scene: Path) -> None:
    """``mbp eval`` reports what ``mbp estimate`` (estimate_pair) gives on the pair."""
    out, _ = one_run
    record = read_records(out / "pairs.jsonl")[0]
    scene = read_scene(small_scene, strict=False)
    a, b = record["image0"], record["image1"]
    with single_threaded():
        result = estimate_pair(scene.image_path(a), scene.image_path(b), scene.camera_of(a), scene.camera_of(b))
    assert len(result.matches) == record["num_matches"] and result.info["num_inliers"] == record["num_inliers"]
    np.testing.assert_allclose(result.pose.R, record["R"], atol=1e-9)
    np.testing.assert_allclose(result.pose.t, record["t"], atol=1e-9)


def test_resume_after_a_killed_run(one_run: tuple[Path, dict], tmp_path: Path, small_scene: Path) -> None:
    first, _ = one_run
    out = tmp_path / "out"
    shutil.copytree(first, out)
    lines = (out / "pairs.jsonl").read_text().splitlines(keepends=True)
    # A kill during the write of the sixth line: five complete lines and a torn one.
    (out / "pairs.jsonl").write_text("".join(lines[:5]) + lines[5][:40])
    summary = run_evaluation(collect_inputs(small_scene), out, SETTINGS, plots=False)
    assert summary["sessions"][-1]["pairs"] == len(PAIRS) - 5  # the torn line is evaluated again
    records = read_records(out / "pairs.jsonl")
    assert len(records) == len(PAIRS)
    assert _by_key(records) == _by_key(read_records(first / "pairs.jsonl"))
    assert records[:5] == read_records(first / "pairs.jsonl")[:5]  # what was written stays as it was
    # Nothing left: a further run evaluates nothing and keeps the file.
    again = run_evaluation(collect_inputs(small_scene), out, SETTINGS, plots=False)
    assert again["sessions"][-1]["pairs"] == 0 and read_records(out / "pairs.jsonl") == records


def test_shards_and_merge_equal_one_run(one_run: tuple[Path, dict], tmp_path: Path, small_scene: Path) -> None:
    first, summary = one_run
    inputs = collect_inputs(small_scene)
    out = tmp_path / "sharded"
    run_evaluation(inputs, out, SETTINGS, shard=(0, 2), plots=False)
    run_evaluation(inputs, out, SETTINGS, shard=(1, 2), plots=False)
    assert sorted(p.name for p in out.iterdir()) == ["shard-0-of-2", "shard-1-of-2"]
    merged = merge_runs([], out, plots=False)
    assert merged["merge"]["missing_shards"] == [] and merged["merge"]["incomplete"] == []
    assert _by_key(read_records(out / "pairs.jsonl")) == _by_key(read_records(first / "pairs.jsonl"))
    for method in ("mbp", "poselib"):
        a, b = merged["methods"][method]["overall"], summary["methods"][method]["overall"]
        assert a["auc"] == b["auc"] and a["maa"] == b["maa"] and a["pairs"] == b["pairs"]
    assert merged["pairs"] == summary["pairs"]
    assert "Merged from 2 run(s)." in (out / "report.md").read_text()
    # A missing shard is reported, not hidden.
    partial = merge_runs([out / "shard-0-of-2"], tmp_path / "partial", plots=False)
    assert partial["merge"]["missing_shards"] == ["1/2"] and partial["pairs"]["total"] == 4
    with pytest.raises(OutputError, match="already exists"):
        merge_runs([out / "shard-0-of-2"], tmp_path / "partial", plots=False)


def test_output_folder_guards(one_run: tuple[Path, dict], tmp_path: Path, small_scene: Path) -> None:
    first, _ = one_run
    out = tmp_path / "out"
    shutil.copytree(first, out)
    other = EvalSettings(EstimateConfig(ransac=RansacOptions(threshold_px=2.0)), SETTINGS.baselines)
    with pytest.raises(OutputError, match="another configuration"):
        run_evaluation(collect_inputs(small_scene), out, other)
    with pytest.raises(OutputError, match="is a file"):
        run_evaluation(collect_inputs(small_scene), out / "pairs.jsonl", SETTINGS)
    info = json.loads((out / "run.json").read_text())
    assert prepare_output(out, info, overwrite=True) == []
    assert sorted(p.name for p in out.iterdir()) == []
    (out / "pairs.jsonl").write_text('{"scene": "s"}\n')
    (out / "run.json").write_text(json.dumps(info))
    with pytest.raises(OutputError, match="line 1 is not a pair record"):
        prepare_output(out, info, overwrite=False)


def test_shards_blocks_and_options() -> None:
    from mbp_cli.evaluation.inputs import PairTask

    tasks = [PairTask(s, str(i), "x") for s in "ab" for i in range(5)]
    shards = [shard_tasks(tasks, (i, 3)) for i in range(3)]
    assert sum(shards, []) == tasks and [len(s) for s in shards] == [3, 3, 4]
    blocks = worker_blocks(tasks, 2)
    assert [[(t.scene, t.image0) for t in b] for b in blocks] == [
        [("a", "0"), ("a", "1"), ("b", "0"), ("b", "1")],
        [("a", "2"), ("a", "3"), ("a", "4"), ("b", "2"), ("b", "3"), ("b", "4")],
    ]
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "x", "1/2/3", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    assert parse_baselines("opencv, poselib@0.5,") == (Baseline("opencv"), Baseline("poselib", 0.5))
    assert Baseline("poselib", 0.5).label == "poselib@0.5"
    for bad, needle in [("magic", "unknown baseline"), ("poselib@x", "number"), ("opencv,opencv", "twice")]:
        with pytest.raises(ValueError, match=needle):
            parse_baselines(bad)


def test_shard_auto_reads_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert parse_shard("auto") is None
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard("auto") == (2, 3)


@pytest.mark.slow
def test_worker_processes_give_the_same_records(one_run: tuple[Path, dict], tmp_path: Path, small_scene: Path) -> None:
    first, summary = one_run
    parallel = run_evaluation(collect_inputs(small_scene), tmp_path / "out", SETTINGS, workers=2, plots=False)
    records = read_records(tmp_path / "out" / "pairs.jsonl")
    assert _by_key(records) == _by_key(read_records(first / "pairs.jsonl"))
    assert parallel["methods"]["mbp"]["overall"]["auc"] == summary["methods"]["mbp"]["overall"]["auc"]
    assert parallel["sessions"][-1] == parallel["sessions"][-1] | {"pairs": len(PAIRS), "workers": 2}


@pytest.mark.slow
def test_sigkill_loses_nothing_written(tmp_path: Path) -> None:
    """A real ``mbp eval`` killed with SIGKILL, then run again: every pair once, the first lines unchanged."""
    scene = SCENES / "kermit"
    if not scene.is_dir():
        pytest.skip("development scenes not available")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mbp_cli", "eval", str(scene), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pairs = out / "pairs.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not pairs.is_file() or pairs.read_bytes().count(b"\n") < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_records(pairs)
    assert 3 <= len(before) < 22
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    after = read_records(pairs)
    assert after[: len(before)] == before
    assert sorted((r["image0"], r["image1"]) for r in after) == sorted(
        tuple(line.split()) for line in (scene / "pairs.txt").read_text().splitlines() if line.strip()
    )
