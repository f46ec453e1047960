"""Median time per pair of mbp's default path against PoseLib, with the machine's noise taken out by repeats.

One-off runs of ``benchmarks/network.py`` put mbp at 0.9x-1.1x PoseLib's median time at Lowe ratio 0.8 from run to
run on the same machine. Here every pair runs ``--repeats`` times, mbp (network included: inputs, logits and the
default RANSAC) and PoseLib (1 px, default options) alternating, one thread, and each method's time of a pair is its
**fastest** repeat: interruptions by the rest of the machine only ever add time, so the minimum is the estimate of
the method's own cost. Reported per Lowe ratio: the median over pairs of those times for each method, their ratio,
the median of the per-pair ratios and the share of pairs on which mbp is the faster; then the same per scene, with
mbp's mean number of minimal samples (a narrow view's ill-conditioned fit samples on to 512, and its final LM restarts
along the valley: that is where mbp costs more than PoseLib).

Usage::

    python benchmarks/timing.py --scenes dino,kermit,kitti06 --ratios 0.8,0.95 --max-pairs-per-scene 150 --repeats 3
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from network import _load_network, _network_logits, _run_mbp  # noqa: E402
from peers import CACHE, publish, scene_parser, single_thread, spread_pair_chunks  # noqa: E402

from mbp_cli.data.matches import load_scene_matches, scene_dirs  # noqa: E402
from mbp_cli.network.weights import DEFAULT_MODEL  # noqa: E402


def _time_pairs(pairs: list, indices: list[int], ratio: float, net, poselib, repeats: int) -> list[dict]:
    """Per pair of ``pairs[indices]`` (matches at Lowe ``ratio``): the fastest of ``repeats`` alternating runs of mbp
    and of PoseLib."""
    from mbp_cli.robust.ransac import RansacOptions

    options = RansacOptions()
    rows = []
    for i in indices:
        pair = pairs[i]
        if len(pair) < 5:
            continue
        mbp_ms, poselib_ms = [], []
        for _ in range(repeats):
            scores, network_ms = _network_logits(net, pair, options.probability_weights)
            _, _, _, iterations, ransac_ms, _ = _run_mbp(pair, "mbp-gumbel", scores, options)
            mbp_ms.append(network_ms + ransac_ms)
            start = time.perf_counter()
            poselib.estimate(pair.x0, pair.x1, pair.focal, 1.0)
            poselib_ms.append((time.perf_counter() - start) * 1e3)
        rows.append(
            {
                "scene": pair.scene,
                "image0": pair.image0,
                "image1": pair.image1,
                "ratio": ratio,
                "num_matches": len(pair),
                "mbp_iterations": iterations,
                "mbp_ms": min(mbp_ms),
                "poselib_ms": min(poselib_ms),
                "mbp_ms_all": mbp_ms,
                "poselib_ms_all": poselib_ms,
            }
        )
    return rows


def summary_cells(rows: list[dict]) -> str:
    """``pairs | mbp median ms | PoseLib median ms | ratio of medians | median per-pair ratio | pairs mbp faster``."""
    mbp = np.array([r["mbp_ms"] for r in rows])
    poselib = np.array([r["poselib_ms"] for r in rows])
    per_pair = mbp / poselib
    return (
        f"{len(rows)} | {np.median(mbp):.1f} | {np.median(poselib):.1f} | {np.median(mbp) / np.median(poselib):.2f}x | "
        f"{np.median(per_pair):.2f}x | {100 * (per_pair < 1).mean():.0f} %"
    )


def summary_line(rows: list[dict], ratio: float) -> str:
    """One markdown table row of a Lowe ratio: :func:`summary_cells`."""
    return f"| {ratio:g} | {summary_cells(rows)} |"


def scene_lines(rows: list[dict]) -> list[str]:
    """The per-scene table: :func:`summary_cells` and mbp's mean number of minimal samples, per ratio and scene."""
    lines = [
        "| Lowe ratio | scene | pairs | mbp median ms | PoseLib median ms | ratio of medians | median per-pair ratio "
        "| pairs mbp faster | mbp mean samples | median matches |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ratio in dict.fromkeys(r["ratio"] for r in rows):
        for scene in dict.fromkeys(r["scene"] for r in rows):
            part = [r for r in rows if r["ratio"] == ratio and r["scene"] == scene]
            if part:
                samples = np.mean([r["mbp_iterations"] for r in part])
                matches = np.median([r["num_matches"] for r in part])
                lines.append(f"| {ratio:g} | {scene} | {summary_cells(part)} | {samples:.0f} | {matches:.0f} |")
    return lines


def main() -> None:
    parser = scene_parser(__doc__.split("\n\n")[0], "dino,kermit,kitti06", 0.8, 150)
    parser.add_argument("--ratios", default=None, help="comma-separated Lowe ratios (instead of --ratio)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="shipped model (default: the default model)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method per pair; the fastest counts")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else [args.ratio]
    except ValueError:
        parser.error(f"--ratios takes comma-separated Lowe ratios, got {args.ratios!r}")
    dirs = scene_dirs(args.scenes_root, args.scenes.split(","))
    rows: list[dict] = []
    lines = [
        f"Median time per pair, fastest of {args.repeats} alternating runs per pair and method, one thread, one "
        f"process: mbp at its defaults (network `{args.model}` included) and PoseLib at 1 px; "
        f"scenes {args.scenes}.",
        "",
        "| Lowe ratio | pairs | mbp median ms | PoseLib median ms | ratio of medians | median per-pair ratio | "
        "pairs mbp faster |",
        "|---|---|---|---|---|---|---|",
    ]
    single_thread()
    from mbp_cli.estimators import PoseLibEstimator
    from mbp_cli.robust.ransac import RansacOptions

    net, poselib = _load_network(args.model, None), PoseLibEstimator()
    warmed = False
    for ratio in ratios:
        part: list[dict] = []
        for scene_dir in dirs:
            pairs = load_scene_matches(scene_dir, ratio, cache_dir=CACHE)
            indices = [
                i for _, chunk in spread_pair_chunks([scene_dir], ratio, args.max_pairs_per_scene) for i in chunk
            ]
            if not warmed:  # one-off set-up of both code paths out of the timings
                warm, options = pairs[indices[0]], RansacOptions()
                _run_mbp(warm, "mbp-gumbel", _network_logits(net, warm, options.probability_weights)[0], options)
                poselib.estimate(warm.x0, warm.x1, warm.focal, 1.0)
                warmed = True
            part += _time_pairs(pairs, indices, ratio, net, poselib, args.repeats)
        rows += part
        lines.append(summary_line(part, ratio))
    lines += ["", "Per scene:", "", *scene_lines(rows)]
    stem = f"timing_{args.model}"
    publish(args.out, stem, lines, rows)


if __name__ == "__main__":
    main()
