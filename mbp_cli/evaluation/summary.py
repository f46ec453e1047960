"""Aggregating per-pair results into the evaluation's figures (method.md §8), per method, per scene and overall.

A *row* is one method's result on one pair: ``err_R_deg`` and ``err_t_deg`` (None when the pair has no ground
truth or could not be evaluated), ``status`` (``ok``, ``degenerate``, ``no_model``, ``error``), ``time_ms``
(estimation only) and ``scene``. A failed estimate (``no_model``) carries 180-degree errors, so it counts against
the AUC as method.md §8 says; pairs without ground truth and bad inputs are counted apart, never scored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mbp_cli.metrics import binned_map, paired_auc_difference, pose_auc

AUC_THRESHOLDS = (5.0, 10.0, 20.0)
MAIN_METHOD = "mbp"


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def pose_metrics(rows: Iterable[dict[str, Any]], thresholds: Sequence[float] = AUC_THRESHOLDS) -> dict[str, Any]:
    """Accuracy and time of one method on a set of pairs.

    Args:
        rows: the method's per-pair results (see the module docstring).
        thresholds: AUC thresholds in degrees.

    Returns:
        ``pairs`` (scored pairs: with ground truth), ``auc`` (exact integral, one value in [0, 1] per
        threshold), ``maa`` (5-degree-bin mAA-style figure), ``median_err_R_deg``, ``median_err_t_deg`` (failures
        count as 180; None without scored pairs), ``failures`` (scored pairs without a model),
        ``median_time_ms`` and ``mean_time_ms`` (over every pair the method ran on, scored or not).
    """
    rows = list(rows)
    scored = [r for r in rows if r.get("err_R_deg") is not None and r.get("err_t_deg") is not None]
    err_R = [float(r["err_R_deg"]) for r in scored]
    err_t = [float(r["err_t_deg"]) for r in scored]
    err = np.maximum(err_R, err_t) if scored else np.zeros(0)
    times = [float(r["time_ms"]) for r in rows if r.get("time_ms") is not None]
    return {
        "pairs": len(scored),
        "auc": pose_auc(err, thresholds),
        "maa": binned_map(err, thresholds),
        "median_err_R_deg": _median(err_R),
        "median_err_t_deg": _median(err_t),
        "failures": sum(r["status"] == "no_model" for r in scored),
        "median_time_ms": _median(times),
        "mean_time_ms": float(np.mean(times)) if times else None,
    }


def method_rows(records: Iterable[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    """One method's rows from ``pairs.jsonl`` records: mbp's fields are the record's own, a baseline's are under
    ``baselines``; a pair a baseline did not run on (a bad input) gives no row."""
    rows = []
    for record in records:
        if method == MAIN_METHOD:
            rows.append(record)
        elif method in (record.get("baselines") or {}):
            rows.append({**record["baselines"][method], "scene": record["scene"]})
    return rows


def methods_of(records: Iterable[dict[str, Any]]) -> list[str]:
    """mbp first, then the baselines in the order they first appear."""
    names = {MAIN_METHOD: None}
    for record in records:
        names.update(dict.fromkeys(record.get("baselines") or {}))
    return list(names)


def _stage_means(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean time per evaluated pair of every stage: features and loading are charged to the first pair of an image,
    so their mean is the cost per pair amortized (the stage means add up to the mean total)."""
    evaluated = [r for r in records if r.get("timings_ms")]
    stages = sorted({k for r in evaluated for k in r["timings_ms"]})
    return {k: float(np.mean([r["timings_ms"].get(k, 0.0) for r in evaluated])) for k in stages}


def count_pairs(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many pairs: ``total``, ``scored`` (ground truth and an estimate or a failure), ``no_ground_truth``
    (estimated, not scored), ``errors`` (bad input, reported with a reason), and per mbp status."""
    statuses = Counter(r["status"] for r in records)
    return {
        "total": len(records),
        "scored": sum(r.get("err_R_deg") is not None for r in records),
        "no_ground_truth": sum(not r.get("gt") and r["status"] != "error" for r in records),
        "errors": statuses.get("error", 0),
        **{f"status_{k}": v for k, v in sorted(statuses.items())},
    }


def _pose_error(row: dict[str, Any]) -> float | None:
    if row.get("err_R_deg") is None or row.get("err_t_deg") is None:
        return None
    return max(float(row["err_R_deg"]), float(row["err_t_deg"]))


def versus_baselines(
    records: list[dict[str, Any]], thresholds: Sequence[float] = AUC_THRESHOLDS
) -> dict[str, dict[str, Any]]:
    """mbp against each baseline on the pairs both scored: AUC differences with paired bootstrap 95 % intervals.

    Returns:
        baseline → ``pairs`` and ``auc_difference``: one ``[mbp − baseline, low, high]`` per threshold (AUC units).
    """
    out = {}
    for method in methods_of(records)[1:]:
        both = []
        for record in records:
            baseline = (record.get("baselines") or {}).get(method)
            if baseline is None:
                continue
            ours, theirs = _pose_error(record), _pose_error(baseline)
            if ours is not None and theirs is not None:
                both.append((ours, theirs))
        if both:
            ours, theirs = zip(*both, strict=True)
            out[method] = {
                "pairs": len(both),
                "auc_difference": [list(d) for d in paired_auc_difference(ours, theirs, thresholds)],
            }
    return out


def predicted_error_calibration(records: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """How mbp's predicted errors (``predicted_error_deg``, the final fit's covariance) compare with the actual ones.

    Over the pairs mbp estimated and that are scored: ``pairs``; median predicted and actual rotation and
    translation-direction errors (degrees); median ``(actual / predicted)^2`` for each, which is about 1 (0.45, the
    median of a chi-square with one degree of freedom, to 1) when the matches' noise explains the errors and far above
    it when something the fit cannot see dominates (ground-truth or calibration error, undetected wrong matches);
    and the share of pairs whose larger predicted error exceeds 1 degree. None when no pair has both.
    """
    rows = [
        r
        for r in records
        if r.get("predicted_error_deg") is not None and r.get("err_R_deg") is not None and r["status"] != "no_model"
    ]
    if not rows:
        return None
    predicted = np.array([r["predicted_error_deg"] for r in rows], dtype=np.float64)
    actual = np.array([[r["err_R_deg"], r["err_t_deg"]] for r in rows], dtype=np.float64)
    # a predicted error of exactly 0 (a perfect fit) would make the ratio infinite
    normalized = (actual / np.maximum(predicted, 1e-9)) ** 2
    return {
        "pairs": len(rows),
        "median_predicted_R_deg": float(np.median(predicted[:, 0])),
        "median_predicted_t_deg": float(np.median(predicted[:, 1])),
        "median_err_R_deg": float(np.median(actual[:, 0])),
        "median_err_t_deg": float(np.median(actual[:, 1])),
        "median_normalized_R": float(np.median(normalized[:, 0])),
        "median_normalized_t": float(np.median(normalized[:, 1])),
        "share_predicted_above_1deg": float((predicted.max(1) > 1.0).mean()),
    }


def summarize(records: list[dict[str, Any]], thresholds: Sequence[float] = AUC_THRESHOLDS) -> dict[str, Any]:
    """Every figure of the report from the ``pairs.jsonl`` records.

    Returns:
        ``thresholds_deg``; ``pairs`` (:func:`count_pairs`); ``methods``: method → ``overall`` and
        ``per_scene`` (scene → :func:`pose_metrics`); ``versus``: :func:`versus_baselines`; ``scenes``: scene →
        pair counts and mean stage timings per pair; ``timings_ms``: mean stage timings per pair over all scenes;
        ``predicted_error``: ``overall`` and ``per_scene`` :func:`predicted_error_calibration`.
    """
    scenes = list(dict.fromkeys(r["scene"] for r in records))
    methods = {}
    for method in methods_of(records):
        rows = method_rows(records, method)
        methods[method] = {
            "overall": pose_metrics(rows, thresholds),
            "per_scene": {s: pose_metrics([r for r in rows if r["scene"] == s], thresholds) for s in scenes},
        }
    per_scene = {}
    for s in scenes:
        sel = [r for r in records if r["scene"] == s]
        per_scene[s] = count_pairs(sel) | {"timings_ms": _stage_means(sel)}
    return {
        "thresholds_deg": list(thresholds),
        "pairs": count_pairs(records),
        "methods": methods,
        "versus": versus_baselines(records, thresholds),
        "scenes": per_scene,
        "timings_ms": _stage_means(records),
        "predicted_error": {
            "overall": predicted_error_calibration(records),
            "per_scene": {s: predicted_error_calibration(r for r in records if r["scene"] == s) for s in scenes},
        },
    }
