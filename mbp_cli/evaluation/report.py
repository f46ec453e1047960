"""The markdown report of an evaluation: accuracy per method overall and per scene, time, failures, configuration."""

from __future__ import annotations

import json
from typing import Any

MAX_LISTED = 50


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _accuracy_table(rows: list[tuple[str, dict[str, Any]]], thresholds: list[float], first: str) -> list[str]:
    auc = " | ".join(f"AUC@{t:g}" for t in thresholds)
    maa = " | ".join(f"mAA@{t:g}" for t in thresholds)
    lines = [
        f"| {first} | pairs | {auc} | {maa} | med. err R / t (deg) | failures | median ms |",
        "|---|" + "---|" * (2 * len(thresholds) + 4),
    ]
    for name, m in rows:
        lines.append(
            f"| {_cell(name)} | {m['pairs']} | "
            + " | ".join(_pct(v) for v in m["auc"])
            + " | "
            + " | ".join(_pct(v) for v in m["maa"])
            + f" | {_num(m['median_err_R_deg'])} / {_num(m['median_err_t_deg'])} | {m['failures']} | "
            f"{_num(m['median_time_ms'], '.1f')} |"
        )
    return lines


def _versus_table(versus: dict[str, dict[str, Any]], thresholds: list[float]) -> list[str]:
    if not versus:
        return ["No baseline scored the same pairs."]
    lines = [
        "| baseline | pairs | " + " | ".join(f"mbp − baseline, AUC@{t:g} [95 % CI]" for t in thresholds) + " |",
        "|---|---|" + "---|" * len(thresholds),
    ]
    for name, v in versus.items():
        cells = [f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for d, lo, hi in v["auc_difference"]]
        lines.append(f"| {_cell(name)} | {v['pairs']} | " + " | ".join(cells) + " |")
    return lines


def _predicted_error_table(calibration: dict[str, Any] | None) -> list[str]:
    """The section comparing mbp's predicted errors with the actual ones (nothing without scored estimates)."""
    if not calibration or not calibration.get("overall"):
        return []
    lines = [
        "## mbp's predicted error against the actual one",
        "",
        "The predicted error is what the fitted matches' own noise leaves open (the final fit's covariance; "
        "`predicted_error_deg` of each pair). (actual / predicted)² has a median near 0.45-1 where that noise "
        "explains the errors; far above, something the fit cannot see dominates: the ground truth's or the "
        "calibration's own error, or undetected wrong matches. Above 1 degree the matches leave the pose "
        "undetermined (a narrow view).",
        "",
        "| scene | pairs | rotation: predicted / actual (median deg) | translation: predicted / actual "
        "| median (actual / predicted)² R / t | predicted > 1 deg |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("all scenes", calibration["overall"]), *calibration.get("per_scene", {}).items()]
    for name, c in rows:
        if c is None:
            continue
        lines.append(
            f"| {_cell(name)} | {c['pairs']} | {c['median_predicted_R_deg']:.3f} / {c['median_err_R_deg']:.3f} "
            f"| {c['median_predicted_t_deg']:.3f} / {c['median_err_t_deg']:.3f} "
            f"| {c['median_normalized_R']:.2f} / {c['median_normalized_t']:.2f} "
            f"| {_pct(c['share_predicted_above_1deg'])} % |"
        )
    return [*lines, ""]


def _throughput(summary: dict[str, Any]) -> list[str]:
    sessions = [s for s in summary.get("sessions", []) if s.get("pairs")]
    lines = []
    for s in sessions:
        rate = s["pairs"] / s["wall_s"] if s["wall_s"] > 0 else 0.0
        shard = f" (shard {s['shard'][0]}/{s['shard'][1]})" if s.get("shard") else ""
        lines.append(
            f"- {s['pairs']} pairs in {s['wall_s']:.1f} s with {s['workers']} worker(s){shard}: "
            f"**{rate:.2f} pairs per second** (everything: loading, features, matching, estimation, baselines)"
        )
    return lines or ["- no pair was evaluated by the last run (all done before)"]


def _failures(records: list[dict[str, Any]]) -> list[str]:
    bad = []
    for r in records:
        if r["status"] in ("error", "no_model"):
            bad.append((r, "mbp", r["status"], r.get("reason") or ""))
        for name, b in (r.get("baselines") or {}).items():
            if b["status"] == "no_model":
                bad.append((r, name, "no_model", ""))
    if not bad:
        return ["None."]
    lines = ["| scene | image0 | image1 | method | status | reason |", "|---|---|---|---|---|---|"]
    for r, method, status, reason in bad[:MAX_LISTED]:
        lines.append(
            f"| {_cell(r['scene'])} | {_cell(r['image0'])} | {_cell(r['image1'])} | {method} | {status} | "
            f"{_cell(reason)} |"
        )
    if len(bad) > MAX_LISTED:
        lines.append(f"\n... and {len(bad) - MAX_LISTED} more: see pairs.jsonl (`status`, `reason`).")
    return lines


def markdown_report(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The report of :func:`mbp_cli.evaluation.runner.write_results` (the summary holds the run's metadata)."""
    thresholds = summary["thresholds_deg"]
    pairs = summary["pairs"]
    methods = summary["methods"]
    inputs = summary.get("inputs", {})
    estimate = summary["settings"]["estimate"]
    lines = [
        "# mbp eval",
        "",
        f"Input: `{summary.get('input', '')}` ({inputs.get('kind', '')}); mbp {summary.get('mbp_version', '')}.",
        f"Command: `{summary.get('command', '')}`",
        "",
        f"Matcher {estimate['matcher']} (ratio {estimate['ratio']:g}, {estimate['num_features']} features, "
        f"resize {estimate['resize']}), inlier threshold {estimate['ransac']['threshold_px']:g} px, "
        f"sampler {estimate['ransac']['sampler']}, scoring {estimate['ransac']['scoring']}. "
        "Every method runs on the same matches of each pair.",
        "",
        f"**{pairs['total']} pairs**: {pairs['scored']} scored against ground truth, "
        f"{pairs['no_ground_truth']} estimated without ground truth (not scored), "
        f"{pairs['errors']} bad inputs (status `error`, not scored), "
        f"{inputs.get('duplicates', 0)} duplicates skipped.",
    ]
    merge = summary.get("merge")
    if merge:
        lines.append(
            f"Merged from {len(merge['sources'])} run(s)"
            + (f"; **missing shards: {', '.join(merge['missing_shards'])}**" if merge["missing_shards"] else "")
            + (f"; **incomplete: {', '.join(merge['incomplete'])}**" if merge["incomplete"] else "")
            + "."
        )
    lines += [
        "",
        "## Accuracy, all scenes",
        "",
        "AUC@x = area under the recall-vs-pose-error curve up to x degrees, exact integral (SuperGlue/LoFTR/"
        "glue-factory's `pose_auc`). mAA@x = mean recall at 5, 10, ... x degrees (the 5-degree-bin figure of the "
        "∇-RANSAC papers; reads higher). Pose error = max(rotation error, unsigned translation-direction error); "
        "a failure (no model) counts as 180 degrees. Median ms: estimation only, per pair, one thread.",
        "",
        *_accuracy_table([(m, f["overall"]) for m, f in methods.items()], thresholds, "method"),
        "",
        "## mbp against each baseline",
        "",
        "AUC points of mbp minus the baseline on the pairs both scored, with a 95 % paired bootstrap interval over "
        "those pairs (2000 draws): an interval that contains 0 is no evidence of a difference on pairs like these.",
        "",
        *_versus_table(summary.get("versus", {}), thresholds),
        "",
        *_predicted_error_table(summary.get("predicted_error")),
        "## Per scene",
        "",
    ]
    for scene, counts in summary["scenes"].items():
        source = inputs.get("scenes", {}).get(scene, {})
        timings = counts["timings_ms"]
        per_pair = timings.get("total")
        lines += [
            f"### {scene}",
            "",
            f"{counts['total']} pairs ({source.get('pairs', '')}): {counts['scored']} scored, "
            f"{counts['no_ground_truth']} without ground truth, {counts['errors']} errors. "
            f"Mean per pair: features {_num(timings.get('features'), '.0f')} ms (amortized), "
            f"matching {_num(timings.get('matching'), '.0f')} ms, all stages {_num(per_pair, '.0f')} ms"
            + (f" ({1000 / per_pair:.2f} pairs per second per worker)." if per_pair else "."),
        ]
        if source.get("error"):
            lines.append(f"Scene error: {source['error']}")
        for camera, message in (source.get("camera_errors") or {}).items():
            lines.append(f"Camera {camera} unusable: {message}")
        lines += [
            "",
            *_accuracy_table([(m, f["per_scene"][scene]) for m, f in methods.items()], thresholds, "method"),
            "",
        ]
    overall = summary["timings_ms"]
    lines += [
        "## Time",
        "",
        f"Mean per pair, one worker: load {_num(overall.get('load'), '.0f')} ms and features "
        f"{_num(overall.get('features'), '.0f')} ms (once per image and worker, amortized over the pairs), "
        f"matching {_num(overall.get('matching'), '.0f')} ms, mbp estimation {_num(overall.get('estimation'), '.1f')}"
        f" ms, all stages {_num(overall.get('total'), '.0f')} ms"
        + "".join(f", {name} {_num(overall.get(name), '.1f')} ms" for name in summary["methods"] if name in overall)
        + ".",
        "",
        *_throughput(summary),
        "",
        "## Failures and errors",
        "",
        *_failures(records),
        "",
    ]
    if summary.get("plots"):
        lines += ["## Plots", "", *(f"![{name}]({name})" for name in summary["plots"]), ""]
    elif summary.get("plot_note"):
        lines += ["## Plots", "", summary["plot_note"], ""]
    lines += [
        "## Configuration",
        "",
        f"Convention: {summary.get('convention', '')}.",
        "",
        "```json",
        json.dumps(summary["settings"], indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)
