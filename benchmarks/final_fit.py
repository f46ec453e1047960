"""How much AUC the final fit leaves on the table: refinement variants and oracle inlier sets.

Every pair runs mbp's RANSAC once (network-guided Gumbel sampling, 1 px, local optimisation) **without** its final
refinement; each variant then fits the final pose from that same starting point, on the same matches:

* ``lm``: the product's final LM (Cauchy loss at the threshold, matches within 3 thresholds of the start);
* ``lm-scale-0.5``: the same with the Cauchy scale at half the threshold;
* ``lm-scale-0.5-keypoint-noise``: the product's LM (half-threshold Cauchy scale) on the heteroscedastic Sampson
  distance, each keypoint's noise proportional to its SIFT detection scale (``RansacOptions.scale_noise``);
* ``lm-network-weights``: the product's LM with every match's cost multiplied by the network's inlier probability;
* ``lm-keypoint-noise-network-weights``: the shipped final LM (half-threshold scale, keypoint noise) with the same
  network weights;
* ``lm-scale-0.5-noise-a<a>-b<b>`` (one per ``--noise-models a,b``): the keypoint-noise LM with each keypoint's noise
  ``scale^a * exp(b * lowe_ratio)`` instead of ``scale`` (a = 1, b = 0 is the product's; fitted values come from
  ``noise_fit.py``);
* ``oracle-1px`` / ``oracle-1px-from-gt``: LM on the **ground-truth inliers** (Sampson distance to the true E below
  1 px and in front of both cameras), from the RANSAC pose or from the true pose;
* ``oracle-0.5px-from-gt``: the same with ground-truth inliers below 0.5 px.

The oracles are not methods: they bound what perfect inlier classification could give with this matcher and this
fit (the 0.5 px one partly by construction, since its set is chosen with the true pose). A consensus network acts
on the pose only through the matches it favours, so the gap between ``lm`` and ``oracle-1px`` is the room a
learned estimator has above a classical one on these pairs.

Usage::

    python benchmarks/final_fit.py --scenes dino,kermit,kitti06 --ratio 0.95 --max-pairs-per-scene 150

Writes ``final_fit_ratio<r>.md`` and ``.json`` under ``--out``.
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import CACHE, auc_rows, publish, scene_parser, single_thread, spread_pair_chunks  # noqa: E402

from mbp_cli.data.matches import load_scene_matches, scene_dirs  # noqa: E402
from mbp_cli.network.weights import DEFAULT_MODEL  # noqa: E402

VARIANTS = (
    "lm",
    "lm-scale-0.5",
    "lm-scale-0.5-keypoint-noise",
    "lm-network-weights",
    "lm-keypoint-noise-network-weights",
    "oracle-1px",
    "oracle-1px-from-gt",
    "oracle-0.5px-from-gt",
)


def noise_variant(a: float, b: float) -> str:
    return f"lm-scale-0.5-noise-a{a:g}-b{b:g}"


def variant_names(noise_models: list[tuple[float, float]]) -> list[str]:
    """Every reported variant: the fixed ones, then one per ``--noise-models`` entry."""
    return [*VARIANTS, *(noise_variant(a, b) for a, b in noise_models)]


def _worker(task: tuple) -> list[dict]:
    scene_dir, ratio, indices, model, weights, noise_models = task
    single_thread()
    import torch

    from mbp_cli.geometry.essential import essential_from_pose, sampson_squared, triangulated_depths
    from mbp_cli.matching.types import keypoint_scales
    from mbp_cli.metrics import pose_error_deg
    from mbp_cli.network.features import network_inputs, sampling_quality, score_correspondences
    from mbp_cli.network.weights import load_model, load_weights
    from mbp_cli.robust.ransac import RansacOptions, ransac_essential
    from mbp_cli.robust.refine import RefineOptions, keypoint_noise, refine_pose

    net = load_weights(weights) if weights else load_model(model)
    pairs = load_scene_matches(Path(scene_dir), ratio, cache_dir=CACHE)
    rows = []
    for i in indices:
        pair = pairs[i]
        x0, x1 = torch.from_numpy(pair.x0).double(), torch.from_numpy(pair.x1).double()
        side = {k: torch.from_numpy(v) for k, v in pair.side.items()}
        logits = score_correspondences(net, network_inputs(x0, x1, side, net.config))
        thr = 1.0 / pair.focal
        options = RansacOptions(threshold_px=1.0, sampler="gumbel", seed=0, final_refinement=False)
        res = ransac_essential(x0, x1, thr, options, sampling_quality(logits, "gumbel"))
        row: dict = {"scene": pair.scene, "image0": pair.image0, "image1": pair.image1, "matches": len(pair)}
        if res.R is None or res.t is None:
            rows.append({**row, **{v: 180.0 for v in variant_names(noise_models)}})
            continue
        R_gt = torch.from_numpy(pair.R).double()
        t_gt = torch.from_numpy(pair.t).double()
        t_gt = t_gt / t_gt.norm()

        def fit(start, mask, scale, weights=None, scales=None, x0=x0, x1=x1, pair=pair):
            if int(mask.sum()) < 5:
                return 180.0
            w = None if weights is None else weights[mask][None]
            noise = None if scales is None else keypoint_noise(scales[0][mask], scales[1][mask])
            R, t, _ = refine_pose(start[0][None], start[1][None], x0[mask], x1[mask], scale, RefineOptions(), w, noise)
            return max(pose_error_deg(R[0].numpy(), t[0].numpy(), pair.R, pair.t))

        ransac = (res.R, res.t)
        scales = keypoint_scales(pair.side)
        probabilities = torch.sigmoid(logits.double())
        near = sampson_squared(essential_from_pose(res.R[None], res.t[None]), x0, x1)[0] < (3.0 * thr) ** 2
        r2_gt = sampson_squared(essential_from_pose(R_gt[None], t_gt[None]), x0, x1)[0]
        d0, d1 = triangulated_depths(R_gt[None], t_gt[None], x0, x1)
        front = (d0[0] > 0) & (d1[0] > 0)
        gt1 = (r2_gt < thr**2) & front
        gt05 = (r2_gt < (0.5 * thr) ** 2) & front
        row.update(
            {
                "lm": fit(ransac, near, thr),
                "lm-scale-0.5": fit(ransac, near, 0.5 * thr),
                "lm-scale-0.5-keypoint-noise": fit(ransac, near, 0.5 * thr, scales=scales),
                "lm-network-weights": fit(ransac, near, thr, probabilities),
                "lm-keypoint-noise-network-weights": fit(ransac, near, 0.5 * thr, probabilities, scales),
                "oracle-1px": fit(ransac, gt1, thr),
                "oracle-1px-from-gt": fit((R_gt, t_gt), gt1, thr),
                "oracle-0.5px-from-gt": fit((R_gt, t_gt), gt05, thr),
                "gt_inliers_1px": int(gt1.sum()),
            }
        )
        lowe = torch.from_numpy(pair.side["ratio"]).double()
        for a, b in noise_models:
            shared = torch.exp(b * lowe)
            row[noise_variant(a, b)] = fit(ransac, near, 0.5 * thr, scales=tuple(s**a * shared for s in scales))
        rows.append(row)
    return rows


def main() -> None:
    parser = scene_parser(__doc__.split("\n\n")[0], "dino,kermit,kitti06", 0.95, 150)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="shipped model (default: the default model)")
    parser.add_argument("--weights", default=None, help="a weights file instead of --model")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--name", default="", help="appended to the result files' name")
    parser.add_argument(
        "--noise-models", default="", help="'a,b;a,b': extra keypoint-noise variants scale^a * exp(b * lowe_ratio)"
    )
    args = parser.parse_args()
    scenes = args.scenes.split(",")
    chunks = spread_pair_chunks(scene_dirs(args.scenes_root, scenes), args.ratio, args.max_pairs_per_scene)
    try:
        noise_models = [(float(a), float(b)) for a, b in (m.split(",") for m in args.noise_models.split(";") if m)]
    except ValueError:
        parser.error(f"--noise-models takes 'a,b;a,b' (numbers), got {args.noise_models!r}")
    tasks = [(d, args.ratio, indices, args.model, args.weights, noise_models) for d, indices in chunks]
    rows: list[dict] = []
    with ProcessPoolExecutor(args.workers) as pool:
        for part in pool.map(_worker, tasks):
            rows += part
    lines = [
        f"Final-fit variants and oracle inlier sets, Lowe ratio {args.ratio:g}, {len(rows)} pairs of "
        f"{', '.join(scenes)}; the same RANSAC start for every variant (see the module docstring).",
        "",
        *auc_rows(rows, variant_names(noise_models), scenes, "variant"),
    ]
    stem = f"final_fit{'_' + args.name if args.name else ''}_ratio{args.ratio:g}"
    stem += f"_{Path(args.weights).stem}" if args.weights else ""
    publish(args.out, stem, lines, rows)


if __name__ == "__main__":
    main()
