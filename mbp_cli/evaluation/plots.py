"""The evaluation's figures (matplotlib, an optional dependency): cumulative pose-error curves and per-scene AUC bars.

Each PNG is rendered in memory and written atomically. Without matplotlib the plots are skipped with a note
(the report and the numbers do not need them).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from mbp_cli.evaluation.summary import method_rows

CURVES_FILE = "cumulative_errors.png"
BARS_FILE = "auc_per_scene.png"
PLOT_FILES = (CURVES_FILE, BARS_FILE)
CURVE_MIN_DEG = 0.01
CURVE_MAX_DEG = 20.0


def pose_errors(rows: list[dict[str, Any]]) -> np.ndarray:
    """Sorted pose errors ``max(err_R, err_t)`` of the scored rows (failures at 180 degrees)."""
    return np.sort([max(r["err_R_deg"], r["err_t_deg"]) for r in rows if r.get("err_R_deg") is not None])


def _save(fig: Any, path: Path) -> None:
    from mbp_cli.io.output import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def _curves(summary: dict[str, Any], records: list[dict[str, Any]], path: Path, figure: Any) -> None:
    fig = figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    x = np.geomspace(CURVE_MIN_DEG, CURVE_MAX_DEG, 401)  # log scale: most errors are well below a degree
    for method, figures in summary["methods"].items():
        errors = pose_errors(method_rows(records, method))
        if not len(errors):
            continue
        recall = np.searchsorted(errors, x, side="right") / len(errors)
        auc5 = 100 * figures["overall"]["auc"][0]
        ax.plot(x, 100 * recall, label=f"{method} (AUC@5 {auc5:.1f})")
    ax.set_xscale("log")
    ax.set_xlabel("pose error max(rotation, translation) [deg, log scale]")
    ax.set_ylabel("pairs with a smaller error [%]")
    ax.set_title(f"Cumulative pose error, {summary['pairs']['scored']} pairs with ground truth")
    ax.set_xlim(CURVE_MIN_DEG, CURVE_MAX_DEG)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    _save(fig, path)


def _bars(summary: dict[str, Any], path: Path, figure: Any) -> None:
    methods = list(summary["methods"])
    scenes = [s for s, counts in summary["scenes"].items() if counts["scored"]]
    thresholds = summary["thresholds_deg"]
    fig = figure(figsize=(max(6.4, 1.1 * len(scenes) + 3), 2.6 * len(thresholds)), layout="constrained")
    axes = fig.subplots(len(thresholds), 1)
    width = 0.8 / max(len(methods), 1)
    for k, (ax, threshold) in enumerate(zip(np.atleast_1d(axes), thresholds, strict=True)):
        for j, method in enumerate(methods):
            figures = summary["methods"][method]
            values = [100 * figures["per_scene"][s]["auc"][k] for s in scenes] + [100 * figures["overall"]["auc"][k]]
            ax.bar(np.arange(len(scenes) + 1) + (j - (len(methods) - 1) / 2) * width, values, width, label=method)
        labels = [*scenes, "all scenes"]
        rotated = len(labels) > 8
        ax.set_xticks(
            np.arange(len(labels)), labels, rotation=30 if rotated else 0, ha="right" if rotated else "center"
        )
        ax.set_ylabel(f"AUC@{threshold:g} [%]")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Pose AUC per scene (exact integral)")
    fig.legend(*np.atleast_1d(axes)[0].get_legend_handles_labels(), loc="outside lower center", ncol=len(methods))
    _save(fig, path)


def write_plots(summary: dict[str, Any], records: list[dict[str, Any]], out: Path) -> tuple[list[str], str | None]:
    """Write the PNGs into ``out``.

    Returns:
        (file names written, a note when plots were skipped: no matplotlib, or no pair with ground truth).
    """
    if not summary["pairs"]["scored"]:
        return [], "no pair with ground truth: no plots"
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    except ImportError:
        return [], "matplotlib is not installed, plots skipped: pip install matplotlib"
    _curves(summary, records, out / CURVES_FILE, Figure)
    _bars(summary, out / BARS_FILE, Figure)
    return list(PLOT_FILES), None
