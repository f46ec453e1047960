"""Tests of mbp_cli.evaluation.summary: the evaluation's figures on hand-computed cases."""

from __future__ import annotations

import pytest

from mbp_cli.evaluation.report import markdown_report
from mbp_cli.evaluation.summary import method_rows, methods_of, pose_metrics, predicted_error_calibration, summarize
from mbp_cli.metrics import pose_auc


def _record(scene, name, status, err_R, err_t, time_ms=10.0, gt=True, baselines=None):
    return {
        "scene": scene,
        "image0": name,
        "image1": name + "'",
        "status": status,
        "reason": None,
        "gt": gt,
        "err_R_deg": err_R,
        "err_t_deg": err_t,
        "time_ms": time_ms,
        "timings_ms": {} if status == "error" else {"matching": 100.0, "estimation": time_ms, "total": 200.0},
        "baselines": baselines or {},
    }


def test_pose_metrics_hand_computed() -> None:
    # Pose errors max(R, t): 1, 3 and a failure (180). Recall curve (0,0) (1,1/3) (3,2/3), flat to the threshold:
    # AUC@5 = (1 * 1/6 + 2 * 1/2 + 2 * 2/3) / 5 = 0.5; AUC@10 = (2.5 + 5 * 2/3) / 10 = 7/12; AUC@20 = (2.5 + 15 *
    # 2/3) / 20 = 5/8. mAA: recall below 5, 10, 15, 20 is 2/3 each.
    rows = [
        {"status": "ok", "err_R_deg": 1.0, "err_t_deg": 0.5, "time_ms": 10.0},
        {"status": "degenerate", "err_R_deg": 2.0, "err_t_deg": 3.0, "time_ms": 30.0},
        {"status": "no_model", "err_R_deg": 180.0, "err_t_deg": 180.0, "time_ms": 50.0},
        {"status": "ok", "err_R_deg": None, "err_t_deg": None, "time_ms": 70.0},  # no ground truth: not scored
        {"status": "error", "err_R_deg": None, "err_t_deg": None, "time_ms": None},  # bad input
    ]
    m = pose_metrics(rows)
    assert m["pairs"] == 3 and m["failures"] == 1
    assert m["auc"] == pytest.approx([0.5, 7 / 12, 5 / 8])
    assert m["maa"] == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert m["median_err_R_deg"] == 2.0 and m["median_err_t_deg"] == 3.0
    assert m["median_time_ms"] == 40.0 and m["mean_time_ms"] == 40.0  # over the 4 pairs estimated
    empty = pose_metrics([rows[4]])
    assert empty["pairs"] == 0 and empty["auc"] == [0.0, 0.0, 0.0] and empty["median_err_R_deg"] is None


def test_summarize_per_scene_and_baselines() -> None:
    base = {"status": "ok", "err_R_deg": 0.5, "err_t_deg": 8.0, "time_ms": 5.0}
    records = [
        _record("a", "1", "ok", 1.0, 2.0, baselines={"poselib": base}),
        _record("a", "2", "no_model", 180.0, 180.0, baselines={"poselib": dict(base, err_t_deg=1.0)}),
        _record("b", "3", "ok", 4.0, 0.0, baselines={"poselib": dict(base, status="no_model")}),
        _record("b", "4", "ok", None, None, gt=False),
        _record("b", "5", "error", None, None, time_ms=None),
    ]
    assert methods_of(records) == ["mbp", "poselib"]
    assert [r["scene"] for r in method_rows(records, "poselib")] == ["a", "a", "b"]
    s = summarize(records)
    assert s["pairs"] == {
        "total": 5,
        "scored": 3,
        "no_ground_truth": 1,
        "errors": 1,
        "status_error": 1,
        "status_no_model": 1,
        "status_ok": 3,
    }
    mbp, poselib = s["methods"]["mbp"], s["methods"]["poselib"]
    # scene a: errors 2 and 180 -> AUC@5 = (2 * 1/4 + 3 * 1/2) / 5 = 0.4; scene b: error 4 -> (4 * 1/2 + 1) / 5.
    assert mbp["per_scene"]["a"]["auc"][0] == pytest.approx(0.4)
    assert mbp["per_scene"]["b"]["auc"][0] == pytest.approx(0.6)
    assert mbp["overall"]["pairs"] == 3 and mbp["overall"]["failures"] == 1
    # Each method's failures are its own: mbp failed on pair 2 (scene a), poselib on pair 3 (scene b).
    assert [mbp["per_scene"][x]["failures"] for x in "ab"] == [1, 0]
    assert [poselib["per_scene"][x]["failures"] for x in "ab"] == [0, 1]
    # poselib on scene a: errors 8 and 1 -> AUC@10 = (1 * 1/4 + 7 * 3/4 + 2 * 1) / 10.
    assert poselib["per_scene"]["a"]["auc"][1] == pytest.approx(0.75)
    assert s["scenes"]["b"]["errors"] == 1 and s["scenes"]["b"]["no_ground_truth"] == 1
    assert s["scenes"]["a"]["timings_ms"]["matching"] == 100.0
    # mbp against poselib on the 3 pairs both scored: errors (2, 180, 4) against (8, 1, 8)
    versus = s["versus"]["poselib"]
    assert versus["pairs"] == 3
    expected = [a - b for a, b in zip(pose_auc([2.0, 180.0, 4.0]), pose_auc([8.0, 1.0, 8.0]), strict=True)]
    assert [d for d, _, _ in versus["auc_difference"]] == pytest.approx(expected)
    assert all(lo <= d <= hi for d, lo, hi in versus["auc_difference"])


def test_report_labels_both_figures_and_lists_failures() -> None:
    poselib = {"status": "ok", "err_R_deg": 0.5, "err_t_deg": 0.5, "time_ms": 5.0}
    records = [
        _record("a", "1", "ok", 1.0, 2.0, baselines={"poselib": poselib}),
        _record("a", "2", "no_model", 180.0, 180.0, baselines={"poselib": poselib}) | {"reason": "only 3 matches"},
        _record("a", "3", "error", None, None) | {"reason": "image x.png does not exist"},
    ]
    summary = summarize(records) | {
        "settings": {
            "estimate": {
                "matcher": "sift",
                "ratio": 0.8,
                "num_features": 8000,
                "resize": None,
                "ransac": {"threshold_px": 1.0, "sampler": "prosac", "scoring": "magsac"},
            },
            "baselines": [],
        },
        "sessions": [{"pairs": 3, "wall_s": 1.5, "workers": 2}],
    }
    text = markdown_report(summary, records)
    assert "exact integral" in text and "5-degree-bin" in text
    assert "| AUC@5 | AUC@10 | AUC@20 | mAA@5 | mAA@10 | mAA@20 |" in text
    assert "2.00 pairs per second" in text
    assert "only 3 matches" in text and "image x.png does not exist" in text
    assert "1 bad inputs" in text and "2 scored" in text
    assert "## mbp against each baseline" in text and "| poselib | 2 |" in text


def test_predicted_error_calibration_hand_computed() -> None:
    records = [
        _record("a", "1", "ok", 1.0, 2.0) | {"predicted_error_deg": [0.5, 2.0]},  # (err/pred)^2: 4 and 1
        _record("a", "2", "ok", 0.2, 0.3) | {"predicted_error_deg": [0.2, 1.5]},  # 1 and 0.04
        _record("b", "3", "ok", 0.3, 0.6) | {"predicted_error_deg": [0.1, 0.2]},  # 9 and 9
        _record("b", "4", "ok", 0.3, 0.6),  # no prediction (no final refinement): left out
        _record("b", "5", "no_model", 180.0, 180.0) | {"predicted_error_deg": None},
        _record("b", "6", "error", None, None),
    ]
    c = predicted_error_calibration(records)
    assert c is not None and c["pairs"] == 3
    assert c["median_predicted_R_deg"] == pytest.approx(0.2) and c["median_err_t_deg"] == pytest.approx(0.6)
    assert c["median_normalized_R"] == pytest.approx(4.0) and c["median_normalized_t"] == pytest.approx(1.0)
    assert c["share_predicted_above_1deg"] == pytest.approx(2 / 3)
    assert predicted_error_calibration([records[3], records[5]]) is None
    summary = summarize(records)
    assert summary["predicted_error"]["per_scene"]["b"]["pairs"] == 1
    assert summary["predicted_error"]["overall"]["pairs"] == 3
