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
* ``oracle-0.5px-from-gt``: the same with ground-truth inliers below 0.5 px;
* ``decoy-1px`` / ``decoy-1px-from-decoy``: the control of the two 1 px oracles, with the true pose replaced by a
  **decoy**: a pose the shipped fit (``lm-keypoint-noise-network-weights``) finds exactly as plausible as the truth
  and as far from its estimate (:func:`matched_decoy`). The inliers are chosen by their residual to the decoy and
  the error is measured against the decoy.

The oracles are not methods: they bound what perfect inlier classification could give with this matcher and this
fit. But a set chosen by its residual to a pose keeps the matches whose noise happens to agree with that pose, so a
fit on it leans towards that pose, whichever it is: the decoy rows measure how much of an oracle's gain is that
selection alone. Where the decoy scores as well as the oracle, the matches hold no more evidence for the truth than
for any pose the fit finds as plausible, and better inlier classification has nothing to find; what an oracle scores
above its decoy is evidence the estimator leaves unused. A consensus network acts on the pose only through the
matches it favours, so that difference is the room a learned estimator has above a classical one on these pairs.

Usage::

    python benchmarks/final_fit.py --scenes dino,kermit,kitti06 --ratio 0.95 --max-pairs-per-scene 150

Writes ``final_fit_ratio<r>.md`` and ``.json`` under ``--out``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import CACHE, auc_rows, publish, scene_parser, single_thread, spread_pair_chunks  # noqa: E402

from mbp_cli.data.matches import load_scene_matches, scene_dirs  # noqa: E402
from mbp_cli.network.weights import DEFAULT_MODEL  # noqa: E402

if TYPE_CHECKING:
    import torch

VARIANTS = (
    "lm",
    "lm-scale-0.5",
    "lm-scale-0.5-keypoint-noise",
    "lm-network-weights",
    "lm-keypoint-noise-network-weights",
    "oracle-1px",
    "oracle-1px-from-gt",
    "oracle-0.5px-from-gt",
    "decoy-1px",
    "decoy-1px-from-decoy",
)


def noise_variant(a: float, b: float) -> str:
    return f"lm-scale-0.5-noise-a{a:g}-b{b:g}"


def variant_names(noise_models: list[tuple[float, float]]) -> list[str]:
    """Every reported variant: the fixed ones, then one per ``--noise-models`` entry."""
    return [*VARIANTS, *(noise_variant(a, b) for a, b in noise_models)]


def matched_decoy(
    R: torch.Tensor,
    t: torch.Tensor,
    covariance: torch.Tensor,
    cost_at: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    rise: float,
    distance_deg: float,
    generator: torch.Generator,
    samples: int = 4000,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """A pose the fit finds as plausible as the truth and as far from its estimate: the oracles' control.

    Draws ``samples`` poses around the fit's estimate ``R`` (3, 3), ``t`` (3,) along its covariance (5, 5)
    (:func:`mbp_cli.robust.refine.pose_covariance`, the LM's local steps) at log-uniform radii from 0.1 to 20
    standard deviations, and keeps the one whose rise of the fit's cost above the estimate's (``cost_at`` (H, 3, 3),
    (H, 3) -> (H,), minus its value at the estimate) and whose pose error from the estimate (larger of rotation and
    translation direction, degrees) best match the truth's ``rise`` and ``distance_deg`` (smallest sum of absolute
    log ratios).

    Returns:
        The decoy's R (3, 3) and t (3,), and its rise and distance as ratios of the truth's.
    """
    import torch

    from mbp_cli.robust.refine import perturb_pose

    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    radius = torch.exp(
        torch.empty(samples, 1, dtype=R.dtype).uniform_(math.log(0.1), math.log(20.0), generator=generator)
    )
    direction = torch.randn(samples, 5, dtype=R.dtype, generator=generator)
    direction = direction / direction.norm(dim=1, keepdim=True)
    steps = (direction * radius) @ (eigenvectors * eigenvalues.clamp_min(0.0).sqrt()).T
    R_s, t_s = perturb_pose(R, t, steps)
    R_all, t_all = torch.cat([R[None], R_s]), torch.cat([t[None], t_s])
    # In chunks: one evaluation of thousands of poses on a thousand matches would take gigabytes.
    costs = torch.cat([cost_at(R_all[i : i + 256], t_all[i : i + 256]) for i in range(0, len(R_all), 256)])
    rises = (costs[1:] - costs[0]).clamp_min(1e-300)
    rotation = torch.rad2deg(torch.arccos(((R_s @ R.T).diagonal(dim1=1, dim2=2).sum(1) - 1.0).div(2.0).clamp(-1, 1)))
    translation = torch.rad2deg(torch.arccos((t_s @ t).abs().clamp(max=1.0)))
    distances = torch.maximum(rotation, translation).clamp_min(1e-12)
    mismatch = (rises / max(rise, 1e-300)).log().abs() + (distances / max(distance_deg, 1e-12)).log().abs()
    k = int(mismatch.argmin())
    return R_s[k], t_s[k], float(rises[k]) / max(rise, 1e-300), float(distances[k]) / max(distance_deg, 1e-12)


def _worker(task: tuple) -> list[dict]:
    scene_dir, ratio, indices, model, weights, noise_models = task
    single_thread()
    import torch

    from mbp_cli.geometry.essential import essential_from_pose, sampson_squared, triangulated_depths
    from mbp_cli.matching.types import keypoint_scales
    from mbp_cli.metrics import pose_error_deg
    from mbp_cli.network.features import network_inputs, sampling_quality, score_correspondences
    from mbp_cli.network.weights import load_model, load_weights
    from mbp_cli.robust.ransac import FitProblem, RansacOptions, ransac_essential
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

        def fit_pose(start, mask, scale, weights=None, scales=None, x0=x0, x1=x1):
            """The LM from ``start`` on the masked matches: ``(its FitProblem, R, t, final cost)``, None below 5."""
            if int(mask.sum()) < 5:
                return None
            w = None if weights is None else weights[mask][None]
            noise = None if scales is None else keypoint_noise(scales[0][mask], scales[1][mask])
            problem = FitProblem(x0[mask], x1[mask], scale, "cauchy", w, noise)
            R, t, cost = refine_pose(
                start[0][None], start[1][None], problem.x0, problem.x1, scale, RefineOptions(), w, noise
            )
            return problem, R[0], t[0], float(cost[0])

        def error(fitted, reference=(pair.R, pair.t)):
            """A :func:`fit_pose` result's pose error from ``reference`` (180 without a fit)."""
            return 180.0 if fitted is None else max(pose_error_deg(fitted[1].numpy(), fitted[2].numpy(), *reference))

        def fit(start, mask, scale, weights=None, scales=None, reference=(pair.R, pair.t)):
            return error(fit_pose(start, mask, scale, weights, scales), reference)

        def inliers_of(R, t, threshold, x0=x0, x1=x1):
            """Matches within ``threshold`` of the pose's epipolar geometry and in front of both cameras."""
            r2 = sampson_squared(essential_from_pose(R[None], t[None]), x0, x1)[0]
            d0, d1 = triangulated_depths(R[None], t[None], x0, x1)
            return (r2 < threshold**2) & (d0[0] > 0) & (d1[0] > 0)

        ransac = (res.R, res.t)
        scales = keypoint_scales(pair.side)
        probabilities = torch.sigmoid(logits.double())
        near = sampson_squared(essential_from_pose(res.R[None], res.t[None]), x0, x1)[0] < (3.0 * thr) ** 2
        gt1 = inliers_of(R_gt, t_gt, thr)
        gt05 = inliers_of(R_gt, t_gt, 0.5 * thr)
        # The shipped final fit (keypoint noise, half scale, probability weights): a row, and the decoys' reference.
        shipped = fit_pose(ransac, near, 0.5 * thr, probabilities, scales)
        row.update(
            {
                "lm": fit(ransac, near, thr),
                "lm-scale-0.5": fit(ransac, near, 0.5 * thr),
                "lm-scale-0.5-keypoint-noise": fit(ransac, near, 0.5 * thr, scales=scales),
                "lm-network-weights": fit(ransac, near, thr, probabilities),
                "lm-keypoint-noise-network-weights": error(shipped),
                "oracle-1px": fit(ransac, gt1, thr),
                "oracle-1px-from-gt": fit((R_gt, t_gt), gt1, thr),
                "oracle-0.5px-from-gt": fit((R_gt, t_gt), gt05, thr),
                "gt_inliers_1px": int(gt1.sum()),
            }
        )
        if shipped is None:
            row.update({"decoy-1px": 180.0, "decoy-1px-from-decoy": 180.0})
        else:
            problem, R_e, t_e, cost_e = shipped
            covariance = problem.covariance(R_e, t_e)

            # An LM of no iterations returns the cost at its start.
            def cost_at(R, t, fit=problem):
                no_steps = RefineOptions(max_iterations=0)
                return refine_pose(R, t, fit.x0, fit.x1, fit.scale, no_steps, fit.weights, fit.noise)[2]

            rise = float(cost_at(R_gt[None], t_gt[None])[0]) - cost_e
            distance = max(pose_error_deg(R_gt.numpy(), t_gt.numpy(), R_e.numpy(), t_e.numpy()))
            generator = torch.Generator().manual_seed(i)
            R_d, t_d, rise_ratio, distance_ratio = matched_decoy(
                R_e, t_e, covariance, cost_at, rise, distance, generator
            )
            decoy1 = inliers_of(R_d, t_d, thr)
            decoy = (R_d.numpy(), t_d.numpy())
            row["decoy-1px"] = fit(ransac, decoy1, thr, reference=decoy)
            row["decoy-1px-from-decoy"] = fit((R_d, t_d), decoy1, thr, reference=decoy)
            row.update({"decoy_rise_ratio": rise_ratio, "decoy_distance_ratio": distance_ratio})
        lowe = torch.from_numpy(pair.side["ratio"]).double()
        for a, b in noise_models:
            shared = torch.exp(b * lowe)
            row[noise_variant(a, b)] = fit(ransac, near, 0.5 * thr, scales=tuple(s**a * shared for s in scales))
        rows.append(row)
    return rows


def decoy_row(scene: str, rows: list[dict]) -> str:
    """``| scene | pairs | median rise ratio | median distance ratio | rise within 1.5x |`` of the decoys against the
    truth (ratios of the decoy's to the truth's; the share of pairs whose rise ratio is within 1.5x of 1)."""
    rows = [r for r in rows if "decoy_rise_ratio" in r and (scene == "all" or r["scene"] == scene)]
    if not rows:
        return f"| {scene} | 0 | - | - |"
    rise = np.median([r["decoy_rise_ratio"] for r in rows])
    distance = np.median([r["decoy_distance_ratio"] for r in rows])
    within = np.mean([abs(math.log(r["decoy_rise_ratio"])) < math.log(1.5) for r in rows])
    return f"| {scene} | {len(rows)} | {rise:.2f} | {distance:.2f} | {100 * within:.0f} % |"


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
        "",
        "How closely the decoys match the truth: the rise of the shipped fit's cost above its estimate and the "
        "distance from the estimate, each as a ratio of the truth's (1 is a perfect match).",
        "",
        "| scene | pairs | median rise ratio | median distance ratio | rise within 1.5x |",
        "|---|---|---|---|---|",
        *(decoy_row(s, rows) for s in [*scenes, "all"]),
    ]
    stem = f"final_fit{'_' + args.name if args.name else ''}_ratio{args.ratio:g}"
    stem += f"_{Path(args.weights).stem}" if args.weights else ""
    publish(args.out, stem, lines, rows)


if __name__ == "__main__":
    main()
