"""Network-guided sampling against uniform, PROSAC-by-ratio and PoseLib on the same matches of held-out scenes.

For every pair of the held-out scenes (not used for training; default the validation scenes of the shipped model)
at each Lowe ratio of ``--ratios`` (0.8: the default matches; 0.95: a hard setting with many outliers), the
consensus network scores the matches once, then on the very same matches:

* ``mbp-gumbel``: Gumbel top-k sampling by the network's inlier probabilities (the default of ``mbp estimate``);
* ``mbp-prosac-net``: PROSAC ordered by the network's scores;
* ``mbp-prosac-ratio``: PROSAC ordered by the Lowe ratio (the classical path, ``--no-network``);
* ``mbp-uniform``: uniform sampling;
* ``poselib``: PoseLib's LO-RANSAC at default options.

Every mbp variant uses the default options (``RansacOptions()``: 1 px, MAGSAC++, LO, LM, confidence 0.9999,
adaptive termination, at least 128 samples); the guided ones stop by the sampling mass of the inliers, the others by the inlier
fraction. The network-guided times include the network. A second experiment fixes the number of minimal samples
(``--budgets``) to show accuracy against iterations. A third times each stage on 2000 matches of one pair.

Usage::

    python benchmarks/network.py --model sift-kl-w64 --scenes dino,kermit,kitti06 --ratios 0.8,0.95 \\
        --max-pairs-per-scene 150 --workers 2

Writes ``benchmarks/results/network_<model>.md`` and ``.json`` (every pair's result).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import CACHE, script_command, single_thread, spread_pair_chunks  # noqa: E402
from settings import parse_variant  # noqa: E402

from mbp_cli.data.matches import load_scene_matches, scene_dirs  # noqa: E402
from mbp_cli.evaluation.summary import pose_metrics  # noqa: E402
from mbp_cli.metrics import pose_error_deg  # noqa: E402

AUC_THRESHOLDS = (5.0, 10.0, 20.0)
METHODS = ("mbp-gumbel", "mbp-prosac-net", "mbp-prosac-ratio", "mbp-uniform", "poselib")
# method -> (sampler, quality source)
MBP_VARIANTS = {
    "mbp-gumbel": ("gumbel", "network"),
    "mbp-prosac-net": ("prosac", "network"),
    "mbp-prosac-ratio": ("prosac", "ratio"),
    "mbp-uniform": ("uniform", None),
}
BUDGET_METHODS = ("mbp-gumbel", "mbp-prosac-ratio", "mbp-uniform")


def _load_network(model: str | None, weights: str | None):
    from mbp_cli.network.weights import load_model, load_weights

    return load_weights(weights) if weights else load_model(model)


def _network_logits(net, pair, probability_weights=False):
    """``((logits, fit weighting or None), milliseconds)`` of the network on one pair."""
    import torch

    from mbp_cli.network.features import fit_weighting, network_inputs, score_correspondences

    start = time.perf_counter()
    side = {k: torch.from_numpy(v) for k, v in pair.side.items()}
    inputs = network_inputs(torch.from_numpy(pair.x0), torch.from_numpy(pair.x1), side, net.config)
    logits = score_correspondences(net, inputs)
    weighting = fit_weighting(net, inputs, logits, probability_weights)
    return (logits, weighting), (time.perf_counter() - start) * 1e3


def _run_mbp(pair, variant, scores, options):
    import torch

    from mbp_cli.matching.types import keypoint_scales
    from mbp_cli.network.features import sampling_quality
    from mbp_cli.robust.ransac import ransac_essential

    sampler, source = MBP_VARIANTS[variant]
    logits, weighting = scores
    if source == "network":
        quality = sampling_quality(logits, sampler)
    elif source == "ratio":
        quality = torch.from_numpy(-pair.side["ratio"])
    else:
        quality = None
    options = replace(options, sampler=sampler)
    start = time.perf_counter()
    res = ransac_essential(
        torch.from_numpy(pair.x0),
        torch.from_numpy(pair.x1),
        options.threshold_px / pair.focal,
        options,
        quality,
        refinement_weights=weighting if source == "network" else None,  # a model's fit head weighs its final LM
        keypoint_scales=keypoint_scales(pair.side),
    )
    elapsed = (time.perf_counter() - start) * 1e3
    R = None if res.R is None else res.R.numpy()
    t = None if res.t is None else res.t.numpy()
    return R, t, res.status, res.iterations, elapsed, res.timings_ms


def _worker(task: tuple) -> list[dict]:
    scene_dir, ratio, indices, model, weights, budgets, overrides = task
    single_thread()
    from mbp_cli.estimators import PoseLibEstimator
    from mbp_cli.robust.ransac import RansacOptions

    pairs = load_scene_matches(Path(scene_dir), ratio, cache_dir=CACHE)
    net = _load_network(model, weights)
    poselib = PoseLibEstimator()
    default = RansacOptions(**overrides)  # the product's defaults, with --options
    rows = []
    warm = pairs[indices[0]]
    _network_logits(net, warm, default.probability_weights)  # one-off set-up out of the timings
    poselib.estimate(warm.x0, warm.x1, warm.focal, 1.0)
    for i in indices:
        pair = pairs[i]
        base = {
            "scene": pair.scene,
            "image0": pair.image0,
            "image1": pair.image1,
            "ratio": ratio,
            "num_matches": len(pair),
        }
        if len(pair) < 5:
            for m in METHODS:
                rows.append(
                    base
                    | {
                        "method": m,
                        "status": "no_model",
                        "err_R_deg": 180.0,
                        "err_t_deg": 180.0,
                        "time_ms": 0.0,
                        "iterations": 0,
                    }
                )
            continue
        scores, network_ms = _network_logits(net, pair, default.probability_weights)
        for m in METHODS:
            if m == "poselib":
                out = poselib.estimate(pair.x0, pair.x1, pair.focal, 1.0)
                R, t, status, iterations, elapsed = out.R, out.t, out.status, None, out.time_ms
            else:
                R, t, status, iterations, elapsed, _ = _run_mbp(pair, m, scores, default)
                if MBP_VARIANTS[m][1] == "network":
                    elapsed += network_ms
            err_R, err_t = pose_error_deg(R, t, pair.R, pair.t)
            rows.append(
                base
                | {
                    "method": m,
                    "status": status,
                    "err_R_deg": err_R,
                    "err_t_deg": err_t,
                    "time_ms": elapsed,
                    "iterations": iterations,
                    "network_ms": network_ms,
                }
            )
        for budget in budgets:
            fixed = replace(
                default, min_iterations=budget, max_iterations=budget, batch_size=min(budget, default.batch_size)
            )
            for m in BUDGET_METHODS:
                R, t, status, iterations, elapsed, _ = _run_mbp(pair, m, scores, fixed)
                err_R, err_t = pose_error_deg(R, t, pair.R, pair.t)
                rows.append(
                    base
                    | {
                        "method": f"{m}@{budget}",
                        "status": status,
                        "err_R_deg": err_R,
                        "err_t_deg": err_t,
                        "time_ms": elapsed,
                        "iterations": iterations,
                    }
                )
    return rows


def stage_timing(scene_dir: Path, model: str | None, weights: str | None, num_matches: int, repeats: int) -> dict:
    """Median per-stage milliseconds on ``num_matches`` matches of the pair with the most ratio-0.95 matches."""
    import torch

    from mbp_cli.robust.ransac import RansacOptions

    single_thread()
    pairs = load_scene_matches(scene_dir, 0.95, cache_dir=CACHE)
    pair = max(pairs, key=len)
    keep = np.sort(np.random.default_rng(0).permutation(len(pair))[:num_matches])
    pair = pair.subset(keep)
    net = _load_network(model, weights)
    weighted = RansacOptions().probability_weights
    _network_logits(net, pair, weighted)
    out: dict = {"pair": f"{pair.scene}/{pair.image0}-{pair.image1}", "matches": len(pair), "repeats": repeats}
    out["network_ms"] = float(np.median([_network_logits(net, pair, weighted)[1] for _ in range(repeats)]))
    scores, _ = _network_logits(net, pair, weighted)
    for variant in ("mbp-gumbel", "mbp-prosac-ratio", "mbp-uniform"):
        runs = [_run_mbp(pair, variant, scores, RansacOptions(seed=s)) for s in range(repeats)]
        stages = sorted({k for r in runs for k in r[5]})
        out[variant] = {
            "total_ms": float(np.median([r[4] for r in runs])),
            "iterations": float(np.median([r[3] for r in runs])),
            **{f"{k}_ms": float(np.median([r[5].get(k, 0.0) for r in runs])) for k in stages},
        }
    out["threads"] = torch.get_num_threads()
    return out


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(
    rows: list[dict], ratios: list[float], budgets: list[int], stages: dict, command: str, model: str, options: str
) -> str:
    lines = [
        f"Network `{model}`; held-out scenes {', '.join(sorted({r['scene'] for r in rows}))}; same SIFT matches for every method.",
        f"mbp at its default options (RansacOptions(), overrides: {options}), PoseLib at 1 px. AUC = exact integral (glue-factory's `pose_auc`); time: median per pair, one thread,",
        "estimation only (network included for the network-guided methods).",
        "",
    ]
    for ratio in ratios:
        sel = [r for r in rows if r["ratio"] == ratio]
        pairs = len({(r["scene"], r["image0"], r["image1"]) for r in sel})
        inl = [r for r in sel if r["method"] == "mbp-gumbel"]
        lines += [
            f"### Lowe ratio {ratio:g} ({pairs} pairs, median {int(np.median([r['num_matches'] for r in inl]))} matches)",
            "",
            "| method | AUC@5 | AUC@10 | AUC@20 | failures | mean iterations | median ms | of which network |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in METHODS:
            mr = [r for r in sel if r["method"] == m]
            pm = pose_metrics(mr, AUC_THRESHOLDS)
            its = [r["iterations"] for r in mr if r.get("iterations") is not None]
            net_ms = (
                [r["network_ms"] for r in mr if "network_ms" in r]
                if MBP_VARIANTS.get(m, (0, None))[1] == "network"
                else []
            )
            lines.append(
                f"| {m} | {100 * pm['auc'][0]:.1f} | {100 * pm['auc'][1]:.1f} | {100 * pm['auc'][2]:.1f} | "
                f"{pm['failures']} | {_fmt(float(np.mean(its)) if its else None, 0)} | {_fmt(pm['median_time_ms'])} | "
                f"{_fmt(float(np.median(net_ms)) if net_ms else None)} |"
            )
        scenes = sorted({r["scene"] for r in sel})
        lines += ["", "AUC@5 per scene:", "", "| method | " + " | ".join(scenes) + " |", "|---|" + "---|" * len(scenes)]
        for m in METHODS:
            aucs = [
                pose_metrics([r for r in sel if r["method"] == m and r["scene"] == s], AUC_THRESHOLDS)["auc"][0]
                for s in scenes
            ]
            lines.append(f"| {m} | " + " | ".join(f"{100 * a:.1f}" for a in aucs) + " |")
        if budgets:
            lines += [
                "",
                "AUC@5 with a fixed number of minimal samples (no adaptive stop):",
                "",
                "| method | " + " | ".join(f"{b} samples" for b in budgets) + " |",
                "|---|" + "---|" * len(budgets),
            ]
            for m in BUDGET_METHODS:
                aucs = [
                    pose_metrics([r for r in sel if r["method"] == f"{m}@{b}"], AUC_THRESHOLDS)["auc"][0]
                    for b in budgets
                ]
                lines.append(f"| {m} | " + " | ".join(f"{100 * a:.1f}" for a in aucs) + " |")
        lines.append("")
    if stages:
        lines += [
            f"### Stages on {stages['matches']} matches ({stages['pair']}, ratio 0.95; median of {stages['repeats']} runs, one thread, ms)",
            "",
            f"Network: **{stages['network_ms']:.1f} ms**.",
            "",
        ]
        names = sorted(
            {k for v in stages.values() if isinstance(v, dict) for k in v if k.endswith("_ms") and k != "total_ms"}
        )
        lines += [
            "| sampler | iterations | " + " | ".join(n[:-3] for n in names) + " | RANSAC total |",
            "|---|---|" + "---|" * (len(names) + 1),
        ]
        for variant in ("mbp-gumbel", "mbp-prosac-ratio", "mbp-uniform"):
            v = stages[variant]
            lines.append(
                f"| {variant} | {v['iterations']:.0f} | "
                + " | ".join(_fmt(v.get(n, 0.0)) for n in names)
                + f" | {v['total_ms']:.1f} |"
            )
        lines.append("")
    lines += [f"Command: `{command}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes-root", type=Path, default=REPO.parent / "shared" / "data" / "scenes")
    parser.add_argument("--scenes", default="dino,kermit,kitti06", help="held-out scenes (not used for training)")
    parser.add_argument("--ratios", default="0.8,0.95")
    parser.add_argument("--model", default=None, help="shipped model (default: the default model)")
    parser.add_argument("--weights", default=None, help="a weights file instead")
    parser.add_argument("--max-pairs-per-scene", type=int, default=0, help="0: all pairs")
    parser.add_argument("--budgets", default="16,64,256", help="fixed sample counts ('' to skip)")
    parser.add_argument(
        "--options", default="default", help="RansacOptions overrides of every mbp method, as settings.py's variants"
    )
    parser.add_argument("--stage-matches", type=int, default=2000)
    parser.add_argument("--stage-repeats", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    from mbp_cli.network.weights import DEFAULT_MODEL

    model = None if args.weights else (args.model or DEFAULT_MODEL)
    ratios = [float(r) for r in args.ratios.split(",")]
    budgets = [int(b) for b in args.budgets.split(",") if b]
    dirs = scene_dirs(args.scenes_root, args.scenes.split(","))
    tasks = []
    for ratio in ratios:
        for d, indices in spread_pair_chunks(dirs, ratio, args.max_pairs_per_scene):
            tasks.append((d, ratio, indices, model, args.weights, budgets, parse_variant(args.options)))
    start = time.perf_counter()
    rows: list[dict] = []
    with ProcessPoolExecutor(args.workers) as pool:
        for part in pool.map(_worker, tasks):
            rows += part
            print(f"\r{len(rows)} results  {time.perf_counter() - start:.0f} s", end="", file=sys.stderr)
    print(file=sys.stderr)
    stages = (
        stage_timing(dirs[-1], model, args.weights, args.stage_matches, args.stage_repeats)
        if args.stage_matches
        else {}
    )
    command = script_command()
    name = (model or Path(args.weights).stem) + ("" if args.options == "default" else "_" + args.options.split("=")[0])
    text = markdown(rows, ratios, budgets, stages, command, name, args.options)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"network_{name}.md").write_text(text)
    (args.out / f"network_{name}.json").write_text(json.dumps({"command": command, "stages": stages, "rows": rows}))
    print(text)


if __name__ == "__main__":
    main()
