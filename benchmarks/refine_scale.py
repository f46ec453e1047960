"""The whole estimator at several final-LM scales (``RansacOptions.refine_scale``) on the same matches.

Validation for the default: run it on the training scenes of the shipped model (not the held-out ones that the
other tables report on). Every pair is estimated with the network-guided Gumbel sampler and with uniform sampling
at each scale, seed 0, 1 px.

Usage::

    python benchmarks/refine_scale.py --scenes buddha,castle,fox,kitti01 --ratio 0.95 --max-pairs-per-scene 100

Writes ``refine_scale_ratio<r>.md`` and ``.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import CACHE, auc_rows, save_result, single_thread, spread_pair_chunks  # noqa: E402

from mbp_cli.data.matches import load_scene_matches, scene_dirs  # noqa: E402

SAMPLERS = ("gumbel", "uniform")


def _worker(task: tuple) -> list[dict]:
    scene_dir, ratio, indices, scales, model = task
    single_thread()
    import torch

    from mbp_cli.metrics import pose_error_deg
    from mbp_cli.network.features import network_inputs, sampling_quality, score_correspondences
    from mbp_cli.network.weights import load_model
    from mbp_cli.robust.ransac import RansacOptions, ransac_essential

    net = load_model(model)
    pairs = load_scene_matches(Path(scene_dir), ratio, cache_dir=CACHE)
    rows = []
    for i in indices:
        pair = pairs[i]
        x0, x1 = torch.from_numpy(pair.x0), torch.from_numpy(pair.x1)
        side = {k: torch.from_numpy(v) for k, v in pair.side.items()}
        quality = sampling_quality(score_correspondences(net, network_inputs(x0, x1, side, net.config)), "gumbel")
        row: dict = {"scene": pair.scene, "image0": pair.image0, "image1": pair.image1}
        for sampler in SAMPLERS:
            for scale in scales:
                options = RansacOptions(threshold_px=1.0, sampler=sampler, seed=0, refine_scale=scale)
                res = ransac_essential(
                    x0, x1, 1.0 / pair.focal, options, quality if sampler == "gumbel" else None
                )  # fmt: skip
                error = 180.0
                if res.R is not None and res.t is not None:
                    error = max(pose_error_deg(res.R.numpy(), res.t.numpy(), pair.R, pair.t))
                row[f"{sampler}@{scale:g}"] = error
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes-root", type=Path, default=REPO.parent / "shared" / "data" / "scenes")
    parser.add_argument("--scenes", default="buddha,castle,fox,kitti01", help="the shipped model's training scenes")
    parser.add_argument("--ratio", type=float, default=0.95)
    parser.add_argument("--scales", default="1,0.5")
    parser.add_argument("--model", default="sift-kl-w64")
    parser.add_argument("--max-pairs-per-scene", type=int, default=100, help="0: all pairs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    scenes = args.scenes.split(",")
    scales = [float(s) for s in args.scales.split(",")]
    chunks = spread_pair_chunks(scene_dirs(args.scenes_root, scenes), args.ratio, args.max_pairs_per_scene)
    tasks = [(d, args.ratio, indices, scales, args.model) for d, indices in chunks]
    rows: list[dict] = []
    with ProcessPoolExecutor(args.workers) as pool:
        for part in pool.map(_worker, tasks):
            rows += part
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]])
    keys = [f"{sampler}@{scale:g}" for sampler in SAMPLERS for scale in scales]
    lines = [
        f"The whole estimator at final-LM scales {args.scales} (fractions of the 1 px threshold), Lowe ratio "
        f"{args.ratio:g}, {len(rows)} pairs of {', '.join(scenes)}, seed 0.",
        "",
        *auc_rows(rows, keys, scenes, "sampler @ scale", digits=2),
        "",
        f"Command: `{command}`",
        "",
    ]
    text = "\n".join(lines)
    save_result(args.out, f"refine_scale_ratio{args.ratio:g}", text, command, rows)
    print(text)


if __name__ == "__main__":
    main()
