"""Leave one scene out: for every scene, a consensus network trained on all the others, measured on it.

Each fold trains with the shipped model's initialisation recipe (``python -m mbp_cli.training.init``, the
architecture and steps given here) on every scene but one, into ``<runs>/<scene>/`` (``weights/`` and
``models/``; a finished fold is reused, an interrupted one resumes from its checkpoint), then the worker of
``benchmarks/network.py`` runs on the left-out scene: the network-guided Gumbel sampler (mbp's default), PROSAC by
the network's score, ``--no-network`` (PROSAC by Lowe ratio), uniform sampling, and PoseLib, on the same matches,
at each Lowe ratio. A gain that holds on every left-out scene does not come from one scene.

Usage::

    python benchmarks/loso.py --width 32 --blocks 2,2,1 --steps 4000 --max-pairs-per-scene 100 --workers 2

Writes ``loso_<name>.md`` and ``.json`` under ``--out``; fold logs go to ``<runs>/<scene>/train.log``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from network import AUC_THRESHOLDS, METHODS, _worker  # noqa: E402
from peers import CACHE, save_result, script_command, spread_pair_chunks  # noqa: E402
from settings import parse_variant  # noqa: E402

from mbp_cli.data.matches import scene_dirs  # noqa: E402
from mbp_cli.evaluation.summary import pose_metrics  # noqa: E402

LABELS = {
    "mbp-gumbel": "mbp (network, Gumbel)",
    "mbp-prosac-net": "mbp (network, PROSAC)",
    "mbp-prosac-ratio": "mbp --no-network",
    "mbp-uniform": "mbp uniform",
    "poselib": "PoseLib",
}


def train_fold(scene: str, scenes: list[str], args: argparse.Namespace) -> Path:
    """Train (or reuse, or resume) the fold that leaves ``scene`` out; returns its weights file."""
    fold = args.runs / scene
    weights = fold / "weights" / f"{args.name}-no-{scene}.safetensors"
    if weights.is_file():
        return weights
    fold.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "mbp_cli.training.init",
        "--scenes-root",
        str(args.scenes_root),
        "--train",
        ",".join(s for s in scenes if s != scene),
        "--val",
        scene,
        "--cache-dir",
        str(CACHE),
        "--name",
        f"{args.name}-no-{scene}",
        "--out",
        str(fold),
        "--runs",
        str(fold / "checkpoints"),
        "--width",
        str(args.width),
        "--blocks",
        args.blocks,
        "--steps",
        str(args.steps),
        "--label-threshold",
        str(args.label_threshold),
        "--val-pose-pairs",
        "0",
    ]
    with open(fold / "train.log", "a") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return weights


def markdown(rows: list[dict], scenes: list[str], ratios: list[float], command: str, args: argparse.Namespace) -> str:
    lines = [
        f"Leave one scene out: per scene, a `{args.name}` network (width {args.width}, blocks {args.blocks}, "
        f"{args.steps} KL-initialisation steps, labels at {args.label_threshold:g} px) trained on the other {len(scenes) - 1} scenes, measured on the left-out "
        f"one; same SIFT matches for every method, options: {args.options or 'default'} (1 px). AUC@5 = exact "
        "integral (glue-factory's "
        "`pose_auc`); time: median per pair, one thread, network included.",
        "",
    ]
    for ratio in ratios:
        sel = [r for r in rows if r["ratio"] == ratio]
        lines += [
            f"### Lowe ratio {ratio:g} ({len(sel) // len(METHODS)} pairs)",
            "",
            "| left-out scene | pairs | " + " | ".join(LABELS[m] for m in METHODS) + " | network − best other |",
            "|---|---|" + "---|" * (len(METHODS) + 1),
        ]
        for scene in [*scenes, "all"]:
            here = [r for r in sel if scene == "all" or r["scene"] == scene]
            auc = {
                m: 100 * pose_metrics([r for r in here if r["method"] == m], AUC_THRESHOLDS)["auc"][0] for m in METHODS
            }
            best_other = max(auc["mbp-prosac-ratio"], auc["mbp-uniform"], auc["poselib"])
            name = "**all (pooled)**" if scene == "all" else scene
            lines.append(
                f"| {name} | {len(here) // len(METHODS)} | "
                + " | ".join(f"{auc[m]:.1f}" for m in METHODS)
                + f" | {auc['mbp-gumbel'] - best_other:+.1f} |"
            )
        times = {m: float(np.median([r["time_ms"] for r in sel if r["method"] == m])) for m in METHODS}
        lines += [
            "| median ms, all | | " + " | ".join(f"{times[m]:.1f}" for m in METHODS) + " | |",
            "",
        ]
    lines += [f"Command: `{command}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes-root", type=Path, default=REPO.parent / "shared" / "data" / "scenes")
    parser.add_argument("--scenes", default="buddha,castle,dino,fox,kermit,kitti01,kitti06")
    parser.add_argument("--ratios", default="0.8,0.95")
    parser.add_argument(
        "--name", default="sift-kl-w32-small", help="the recipe's model name (folds append -no-<scene>)"
    )
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--blocks", default="2,2,1")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--label-threshold", type=float, default=2.0, help="GT inlier threshold of the labels, px")
    parser.add_argument("--max-pairs-per-scene", type=int, default=100, help="0: all pairs")
    parser.add_argument("--workers", type=int, default=2, help="evaluation processes")
    parser.add_argument("--train-workers", type=int, default=2, help="folds trained at once (one thread each)")
    parser.add_argument("--runs", type=Path, default=REPO / "benchmarks" / "runs" / "loso")
    parser.add_argument("--options", default="", help="RansacOptions overrides of every mbp method, as settings.py's")
    parser.add_argument("--suffix", default="", help="appended to the result files' name")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    scenes = args.scenes.split(",")
    ratios = [float(r) for r in args.ratios.split(",")]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.train_workers) as pool:
        weights = dict(zip(scenes, pool.map(lambda s: train_fold(s, scenes, args), scenes), strict=True))
    print(f"folds ready ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    overrides = parse_variant(args.options)
    tasks = []
    for ratio in ratios:
        for d, indices in spread_pair_chunks(scene_dirs(args.scenes_root, scenes), ratio, args.max_pairs_per_scene):
            tasks.append((d, ratio, indices, None, str(weights[Path(d).name]), [], overrides))  # no budgets
    rows: list[dict] = []
    with ProcessPoolExecutor(args.workers) as pool:
        for part in pool.map(_worker, tasks):
            rows += part
    command = script_command()
    text = markdown(rows, scenes, ratios, command, args)
    save_result(args.out, f"loso_{args.name}{'_' + args.suffix if args.suffix else ''}", text, command, rows)
    print(text)


if __name__ == "__main__":
    main()
