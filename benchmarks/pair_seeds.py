"""One pair under several RANSAC seeds: is a seed's worse pose a search failure or an ambiguity of the objective?

For each given pair (cached matches, the default model's Gumbel sampler at default options), prints for every seed
the result's pose error against the ground truth and its MAGSAC++ score on all matches (lower is better), and the
same for the ground-truth pose polished by the product's final LM. A seed whose pose is far off **and** scores
clearly worse than another seed's pose is a search failure (more or better samples would find the better basin);
a far-off pose that scores best is an ambiguity of the objective (no search fixes it).

Usage::

    python benchmarks/pair_seeds.py --scene dino --ratio 0.95 --pairs dino0037.png:dino0038.png,dino0014.png:dino0015.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import CACHE, single_thread  # noqa: E402

from mbp_cli.data.matches import load_scene_matches  # noqa: E402


def _describe(R, t, pair, x0, x1, threshold: float) -> str:
    """MAGSAC++ score on all matches, inliers and pose error of one pose (R, t) of ``pair``."""
    from mbp_cli.geometry.essential import essential_from_pose, sampson_squared
    from mbp_cli.metrics import pose_error_deg
    from mbp_cli.robust.scoring import robust_loss

    r2 = sampson_squared(essential_from_pose(R[None], t[None]), x0, x1)[0]
    score = float(robust_loss("magsac", r2, threshold).sum())
    err_R, err_t = pose_error_deg(R.numpy(), t.numpy(), pair.R, pair.t)
    inliers = int((r2 < threshold**2).sum())
    return f"score {score:8.2f}  inliers {inliers:5d}  error R {err_R:6.2f}  t {err_t:6.2f} deg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes-root", type=Path, default=REPO.parent / "shared" / "data" / "scenes")
    parser.add_argument("--scene", required=True)
    parser.add_argument("--ratio", type=float, default=0.95)
    parser.add_argument("--pairs", required=True, help="image0:image1 names, comma-separated")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    parser.add_argument("--model", default=None, help="shipped model (default: the default model)")
    args = parser.parse_args()
    single_thread()
    import torch

    from mbp_cli.geometry.essential import essential_from_pose, sampson_squared
    from mbp_cli.matching.types import keypoint_scales
    from mbp_cli.network.features import network_inputs, sampling_quality, score_correspondences
    from mbp_cli.network.weights import DEFAULT_MODEL, load_model
    from mbp_cli.robust.ransac import RansacOptions, ransac_essential
    from mbp_cli.robust.refine import keypoint_noise, refine_pose

    net = load_model(args.model or DEFAULT_MODEL)
    wanted = [tuple(p.split(":")) for p in args.pairs.split(",")]
    pairs = {
        (p.image0, p.image1): p for p in load_scene_matches(args.scenes_root / args.scene, args.ratio, cache_dir=CACHE)
    }
    defaults = RansacOptions(sampler="gumbel")
    for key in wanted:
        if key not in pairs:
            raise SystemExit(f"no pair {key[0]}:{key[1]} in the cached matches of {args.scene} at ratio {args.ratio}")
        pair = pairs[key]
        x0, x1 = torch.from_numpy(pair.x0).double(), torch.from_numpy(pair.x1).double()
        side = {k: torch.from_numpy(v) for k, v in pair.side.items()}
        scales = keypoint_scales(side)
        quality = sampling_quality(score_correspondences(net, network_inputs(x0, x1, side, net.config)), "gumbel")
        threshold = defaults.threshold_px / pair.focal

        print(f"{pair.image0} {pair.image1}: {len(pair)} matches")
        R_gt, t_gt = torch.from_numpy(pair.R).double(), torch.from_numpy(pair.t).double()
        near = (
            sampson_squared(essential_from_pose(R_gt[None], t_gt[None]), x0, x1)[0]
            < (defaults.refine_margin * threshold) ** 2
        )
        noise = None if scales is None else keypoint_noise(scales[0][near], scales[1][near])
        R_opt, t_opt, _ = refine_pose(
            R_gt[None], t_gt[None], x0[near], x1[near], threshold * defaults.refine_scale, defaults.refine, None, noise
        )
        print(f"  ground truth + final LM  {_describe(R_opt[0], t_opt[0], pair, x0, x1, threshold)}")
        for seed in range(args.seeds):
            res = ransac_essential(
                x0, x1, threshold, RansacOptions(sampler="gumbel", seed=seed), quality, keypoint_scales=scales
            )
            if res.R is None or res.t is None:
                print(f"  seed {seed}                   {res.status}")
                continue
            print(f"  seed {seed}                   {_describe(res.R, res.t, pair, x0, x1, threshold)}")


if __name__ == "__main__":
    main()
