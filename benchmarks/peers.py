"""mbp's robust estimator against OpenCV USAC_MAGSAC, PoseLib and pycolmap on the very same matches.

For every pair listed in ``<scene>/pairs.txt`` of every scene under ``--scenes-root``: SIFT matches are
extracted once (OpenCV RootSIFT, mutual NN + ratio test, cached by :mod:`mbp_cli.data.matches` under
``benchmarks/cache/matches/``), undistorted and normalized with the scene's cameras, and handed to every
estimator at every threshold of ``--thresholds``.
Each method is reported at its best threshold (by overall AUC@5): AUC@5/10/20 (exact integral, glue-factory's
``pose_auc``), the 5-degree-bin mAA-style figure, median errors, failures and median single-thread time per pair.

Usage::

    python benchmarks/peers.py --scenes-root ../shared/data/scenes --ratio 0.8 --workers 2

Writes ``benchmarks/results/peers_ratio<r>.md`` (the table in the README) and ``.json`` (every pair's result).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mbp_cli.data.matches import PairMatches, load_scene_matches  # noqa: E402
from mbp_cli.evaluation.summary import pose_metrics  # noqa: E402
from mbp_cli.metrics import pose_auc, pose_error_deg  # noqa: E402

CACHE = REPO / "benchmarks" / "cache" / "matches"
AUC_THRESHOLDS = (5.0, 10.0, 20.0)


def single_thread() -> None:
    """Time every method on one core, as PoseLib and OpenCV's RANSAC run."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def spread_pair_chunks(dirs: list[Path], ratio: float, max_pairs_per_scene: int, chunk: int = 20) -> list[tuple]:
    """``(scene_dir, indices)`` chunks of at most ~``chunk`` pairs, evenly spread over each scene (0: all pairs)."""
    chunks = []
    for d in dirs:
        n = len(load_scene_matches(d, ratio, cache_dir=CACHE))
        cap = max_pairs_per_scene or n
        chosen = sorted(set(np.linspace(0, n - 1, min(n, cap)).round().astype(int).tolist()))
        chunks += [(str(d), c.tolist()) for c in np.array_split(np.array(chosen), max(1, len(chosen) // chunk))]
    return chunks


def auc_rows(rows: list[dict], keys: list[str], scenes: list[str], first_column: str, digits: int = 1) -> list[str]:
    """Markdown rows ``| key | AUC@5 | AUC@10 | AUC@20 | AUC@5 per scene |`` of per-pair errors ``row[key]``."""
    lines = [
        f"| {first_column} | AUC@5 | AUC@10 | AUC@20 | " + " | ".join(f"{s} AUC@5" for s in scenes) + " |",
        "|---|---|---|---|" + "---|" * len(scenes),
    ]
    for key in keys:
        auc = pose_auc([r[key] for r in rows], AUC_THRESHOLDS)
        per = [pose_auc([r[key] for r in rows if r["scene"] == s], (5.0,))[0] for s in scenes]
        lines.append(f"| {key} | " + " | ".join(f"{100 * a:.{digits}f}" for a in [*auc, *per]) + " |")
    return lines


def scene_parser(description: str, scenes: str, ratio: float, max_pairs_per_scene: int) -> argparse.ArgumentParser:
    """The arguments every per-scene benchmark shares: scenes root and names, Lowe ratio, pairs per scene, output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scenes-root", type=Path, default=REPO.parent / "shared" / "data" / "scenes")
    parser.add_argument("--scenes", default=scenes, help="comma-separated scene names")
    parser.add_argument("--ratio", type=float, default=ratio)
    parser.add_argument("--max-pairs-per-scene", type=int, default=max_pairs_per_scene, help="0: all pairs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return parser


def script_command() -> str:
    """The command line that ran this benchmark script, relative to the repository (for its result files)."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def publish(out: Path, stem: str, lines: list[str], rows: list[dict]) -> None:
    """Append the command to a result's markdown ``lines``, save it with the per-pair ``rows``, print it."""
    command = script_command()
    text = "\n".join([*lines, "", f"Command: `{command}`", ""])
    save_result(out, stem, text, command, rows)
    print(text)


def save_result(out: Path, stem: str, text: str, command: str, rows: list[dict]) -> None:
    """``<stem>.md`` (the table) and ``<stem>.json`` (the command and every pair's result) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps({"command": command, "rows": rows}))


def scene_matches(scene_dir: Path, matcher_name: str, ratio: float, num_features: int) -> list[PairMatches]:
    """Normalized matches and ground truth of every listed pair of one scene (the library's cache)."""
    single_thread()
    return load_scene_matches(scene_dir, ratio, matcher_name, num_features, cache_dir=CACHE)


def _worker(task: tuple) -> list[dict]:
    """Run every method at every threshold on a chunk of pairs of one scene."""
    scene_dir, matcher_name, ratio, num_features, methods, thresholds, indices = task
    single_thread()
    from mbp_cli.estimators import create_estimator

    data = scene_matches(Path(scene_dir), matcher_name, ratio, num_features)
    estimators = {m: create_estimator(m) for m in methods}
    rows = []
    warmed = False
    for i in indices:
        pair = data[i]
        x0, x1 = pair.x0, pair.x1
        meta = {"image0": pair.image0, "image1": pair.image1, "focal": pair.focal}
        R_gt, t_gt = pair.R, pair.t
        if not warmed and len(x0) >= 5:
            for est in estimators.values():  # first calls pay one-off library set-up; keep it out of timings
                est.estimate(x0, x1, meta["focal"], 1.0, pair.side)
            warmed = True
        for name, est in estimators.items():
            for thr in thresholds:
                if len(x0) < 5:
                    out_R = out_t = None
                    elapsed, status, n_in = 0.0, "no_model", 0
                else:
                    out = est.estimate(x0, x1, meta["focal"], thr, pair.side)
                    out_R, out_t, elapsed, status, n_in = out.R, out.t, out.time_ms, out.status, int(out.inliers.sum())
                err_R, err_t = pose_error_deg(out_R, out_t, R_gt, t_gt)
                rows.append(
                    {
                        "scene": pair.scene,
                        "image0": meta["image0"],
                        "image1": meta["image1"],
                        "method": name,
                        "threshold_px": thr,
                        "num_matches": int(len(x0)),
                        "num_inliers": n_in,
                        "status": status,
                        "err_R_deg": err_R,
                        "err_t_deg": err_t,
                        "time_ms": elapsed,
                    }
                )
    return rows


def summarize(rows: list[dict], methods: list[str], thresholds: list[float]) -> dict:
    """Per method: the threshold with the best overall AUC@5 and its metrics, overall and per scene."""
    summary = {}
    for m in methods:
        best = None
        for thr in thresholds:
            sel = [r for r in rows if r["method"] == m and r["threshold_px"] == thr]
            err = [max(r["err_R_deg"], r["err_t_deg"]) for r in sel]
            auc = pose_auc(err, AUC_THRESHOLDS)
            if best is None or auc[0] > best["auc"][0]:
                best = {"threshold_px": thr, "auc": auc, "rows": sel}
        sel = best.pop("rows")
        scenes = sorted({r["scene"] for r in sel})
        best |= pose_metrics(sel, AUC_THRESHOLDS) | {
            "per_scene": {s: pose_metrics([r for r in sel if r["scene"] == s], AUC_THRESHOLDS)["auc"] for s in scenes},
            "all_thresholds": {
                thr: pose_auc(
                    [
                        max(r["err_R_deg"], r["err_t_deg"])
                        for r in rows
                        if r["method"] == m and r["threshold_px"] == thr
                    ],
                    AUC_THRESHOLDS,
                )
                for thr in thresholds
            },
        }
        summary[m] = best
    return summary


def markdown(summary: dict, command: str, matcher: str) -> str:
    ref = summary.get("poselib")
    lines = [
        f"Same matches for every method ({matcher}); each method at its best threshold.",
        "AUC = exact integral (glue-factory's `pose_auc`), mAA = 5-degree-bin average of the ∇-RANSAC papers.",
        "Time: median per pair, single thread, estimation only (matching excluded).",
        "",
        "| method | thr px | AUC@5 | AUC@10 | AUC@20 | mAA@10 | med. err R / t (deg) | failures | median ms | time vs PoseLib |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, s in summary.items():
        ratio_t = f"{s['median_time_ms'] / ref['median_time_ms']:.2f}x" if ref else "-"
        lines.append(
            f"| {m} | {s['threshold_px']:g} | {100 * s['auc'][0]:.1f} | {100 * s['auc'][1]:.1f} | {100 * s['auc'][2]:.1f} | "
            f"{100 * s['maa'][1]:.1f} | {s['median_err_R_deg']:.2f} / {s['median_err_t_deg']:.2f} | {s['failures']} / {s['pairs']} | "
            f"{s['median_time_ms']:.1f} | {ratio_t} |"
        )
    scenes = sorted(next(iter(summary.values()))["per_scene"])
    lines += [
        "",
        "AUC@5 per scene (each method at its best threshold):",
        "",
        "| method | " + " | ".join(scenes) + " |",
        "|---|" + "---|" * len(scenes),
    ]
    for m, s in summary.items():
        lines.append(f"| {m} | " + " | ".join(f"{100 * s['per_scene'][sc][0]:.1f}" for sc in scenes) + " |")
    thresholds = list(next(iter(summary.values()))["all_thresholds"])
    lines += [
        "",
        "AUC@5 at every threshold tried:",
        "",
        "| method | " + " | ".join(f"{t:g} px" for t in thresholds) + " |",
        "|---|" + "---|" * len(thresholds),
    ]
    for m, s in summary.items():
        lines.append(f"| {m} | " + " | ".join(f"{100 * s['all_thresholds'][t][0]:.1f}" for t in thresholds) + " |")
    lines += ["", f"Command: `{command}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes-root", type=Path, default=REPO.parent / "shared" / "data" / "scenes")
    parser.add_argument("--scenes", default="", help="comma-separated scene names (default: every scene folder)")
    parser.add_argument("--ratio", type=float, default=0.8)
    parser.add_argument("--num-features", type=int, default=8000)
    parser.add_argument("--matcher", default="sift")
    parser.add_argument("--methods", default="mbp,opencv,poselib,pycolmap")
    parser.add_argument("--thresholds", default="0.25,0.5,1,2")
    parser.add_argument("--max-pairs-per-scene", type=int, default=0, help="0: all pairs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    scene_dirs = sorted(p for p in args.scenes_root.iterdir() if (p / "sparse").is_dir())
    if args.scenes:
        wanted = set(args.scenes.split(","))
        scene_dirs = [p for p in scene_dirs if p.name in wanted]
    methods = args.methods.split(",")
    thresholds = [float(t) for t in args.thresholds.split(",")]

    with ProcessPoolExecutor(args.workers) as pool:  # features once per scene, in parallel
        indexes = list(
            pool.map(
                scene_matches,
                scene_dirs,
                [args.matcher] * len(scene_dirs),
                [args.ratio] * len(scene_dirs),
                [args.num_features] * len(scene_dirs),
            )
        )
    tasks = []
    for scene_dir, index in zip(scene_dirs, indexes, strict=True):
        n = len(index)
        chosen = (
            list(range(n))
            if not args.max_pairs_per_scene
            else list(np.linspace(0, n - 1, min(n, args.max_pairs_per_scene)).round().astype(int))
        )
        for chunk in np.array_split(np.array(chosen), max(1, len(chosen) // 25)):
            tasks.append(
                (str(scene_dir), args.matcher, args.ratio, args.num_features, methods, thresholds, chunk.tolist())
            )
    start = time.perf_counter()
    rows: list[dict] = []
    with ProcessPoolExecutor(args.workers) as pool:
        for part in pool.map(_worker, tasks):
            rows += part
            print(
                f"\r{len(rows) // (len(methods) * len(thresholds))} pairs  {time.perf_counter() - start:.0f} s",
                end="",
                file=sys.stderr,
            )
    print(file=sys.stderr)
    summary = summarize(rows, methods, thresholds)
    command = script_command()
    text = markdown(summary, command, indexes[0][0].matcher if indexes[0] else args.matcher)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"peers_ratio{args.ratio:g}" + (f"_max{args.max_pairs_per_scene}" if args.max_pairs_per_scene else "")
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps({"summary": summary, "command": command, "rows": rows}))
    print(text)


if __name__ == "__main__":
    main()
