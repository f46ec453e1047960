"""PoseLib's AUC@5 spread over RANSAC seeds, on the same matches as the other benchmarks.

mbp's spread over seeds comes from ``settings.py`` (variants ``seed=0;seed=1;...``); this is the peer's side, so
that the two compare by their means over seeds rather than by one lucky or unlucky seed each. PoseLib runs at its
default options with ``max_epipolar_error`` 1 px and ``seed`` k, one thread.

Usage::

    python benchmarks/poselib_seeds.py --scenes dino,kermit,kitti06 --ratio 0.95 --seeds 5 --max-pairs-per-scene 150

Writes ``poselib_seeds_ratio<r>.md`` and ``.json`` under ``--out``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import CACHE, auc_rows, publish, scene_parser, single_thread, spread_pair_chunks  # noqa: E402

from mbp_cli.data.matches import load_scene_matches, scene_dirs  # noqa: E402
from mbp_cli.metrics import pose_auc, pose_error_deg  # noqa: E402


def main() -> None:
    parser = scene_parser(__doc__.split("\n\n")[0], "dino,kermit,kitti06", 0.95, 150)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    single_thread()
    import poselib

    scenes = args.scenes.split(",")
    rows = []
    chunks = spread_pair_chunks(scene_dirs(args.scenes_root, scenes), args.ratio, args.max_pairs_per_scene)
    for scene_dir, indices in chunks:
        pairs = load_scene_matches(Path(scene_dir), args.ratio, cache_dir=CACHE)
        for i in indices:
            p = pairs[i]
            camera = {"model": "PINHOLE", "width": 0, "height": 0, "params": [p.focal, p.focal, 0.0, 0.0]}
            row = {"scene": p.scene, "image0": p.image0, "image1": p.image1}
            for seed in range(args.seeds):
                options = {"max_epipolar_error": 1.0, "seed": seed}
                pose, _ = poselib.estimate_relative_pose(p.x0 * p.focal, p.x1 * p.focal, camera, camera, options, {})
                row[f"seed={seed}"] = max(pose_error_deg(np.asarray(pose.R), np.asarray(pose.t), p.R, p.t))
            rows.append(row)

    keys = [f"seed={seed}" for seed in range(args.seeds)]
    mean = statistics.mean(100 * pose_auc([r[k] for r in rows], (5.0,))[0] for k in keys)
    lines = [
        f"PoseLib (1 px, default options) over {args.seeds} RANSAC seeds, Lowe ratio {args.ratio:g}, {len(rows)} pairs "
        f"of {', '.join(scenes)}.",
        "",
        *auc_rows(rows, keys, scenes, "seed", digits=2),
        "",
        f"Mean AUC@5 over the seeds: **{mean:.2f}**.",
    ]
    publish(args.out, f"poselib_seeds_ratio{args.ratio:g}", lines, rows)


if __name__ == "__main__":
    main()
