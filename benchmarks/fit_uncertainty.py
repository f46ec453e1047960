"""How much of each pose error the data themselves leave open: the final fit's predicted error against the actual one.

mbp reports, with every pose, the covariance of its final fit (``EssentialResult.covariance``,
:func:`mbp_cli.robust.refine.pose_covariance`: the robust M-estimator's sandwich ``A^-1 B A^-1``, measured from the
fitted correspondences' own residuals) and the root-mean-square rotation and translation-direction errors it predicts
(``sigma_deg``). This runs the whole estimator (default model, network-guided Gumbel sampling, seed 0) on every pair
and compares those predictions with the errors against the ground truth, per scene:

* median predicted sigma and median actual error, rotation and translation direction;
* the median ``(err / sigma)^2`` (:func:`mbp_cli.evaluation.summary.predicted_error_calibration`, as ``mbp eval``
  reports it): about 0.45-1 when the errors are what the matches' noise explains (the covariance is calibrated),
  well above when something the fit cannot see dominates — ground-truth or calibration error, lens distortion,
  undetected wrong matches;
* the Spearman rank correlation of predicted and actual (larger of rotation and translation) error;
* the fraction of pairs whose predicted sigma exceeds 1 degree: there the matches leave the pose undetermined to
  that level (a narrow view's rotation-translation ambiguity), and any estimator's error is largely chance.

PoseLib's errors on the same pairs are listed beside mbp's for reference.

Usage::

    python benchmarks/fit_uncertainty.py --scenes dino,kermit,kitti06 --ratio 0.95 --max-pairs-per-scene 150

Writes ``<name>_ratio<r>.md`` and ``.json`` under ``--out`` (``--name``, default ``fit_uncertainty``).
"""

from __future__ import annotations

import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import CACHE, publish, scene_parser, single_thread, spread_pair_chunks  # noqa: E402

from mbp_cli.data.matches import load_scene_matches, scene_dirs  # noqa: E402
from mbp_cli.evaluation.summary import predicted_error_calibration  # noqa: E402
from mbp_cli.network.weights import DEFAULT_MODEL  # noqa: E402


def _worker(task: tuple) -> list[dict]:
    scene_dir, ratio, indices, model = task
    single_thread()
    import torch

    from mbp_cli.estimators import PoseLibEstimator
    from mbp_cli.matching.types import keypoint_scales
    from mbp_cli.metrics import pose_error_deg
    from mbp_cli.network.features import fit_weighting, network_inputs, sampling_quality, score_correspondences
    from mbp_cli.network.weights import load_model
    from mbp_cli.robust.ransac import RansacOptions, ransac_essential

    net = load_model(model)
    poselib = PoseLibEstimator()
    options = RansacOptions(sampler="gumbel")
    pairs = load_scene_matches(Path(scene_dir), ratio, cache_dir=CACHE)
    rows = []
    for i in indices:
        pair = pairs[i]
        x0, x1 = torch.from_numpy(pair.x0), torch.from_numpy(pair.x1)
        side = {k: torch.from_numpy(v) for k, v in pair.side.items()}
        inputs = network_inputs(x0, x1, side, net.config)
        logits = score_correspondences(net, inputs)
        weights = fit_weighting(net, inputs, logits, options.probability_weights)
        result = ransac_essential(
            x0,
            x1,
            options.threshold_px / pair.focal,
            options,
            sampling_quality(logits, options.sampler),
            refinement_weights=weights,
            keypoint_scales=keypoint_scales(side),
        )
        if result.R is None or result.t is None or result.sigma_deg is None:
            continue
        error_R, error_t = pose_error_deg(result.R.numpy(), result.t.numpy(), pair.R, pair.t)
        baseline = poselib.estimate(pair.x0, pair.x1, pair.focal, options.threshold_px)
        poselib_error = 180.0
        if baseline.R is not None and baseline.t is not None:
            poselib_error = max(pose_error_deg(baseline.R, baseline.t, pair.R, pair.t))
        rows.append(
            {
                "scene": pair.scene,
                "image0": pair.image0,
                "image1": pair.image1,
                "num_matches": len(pair),
                "status": result.status,
                "predicted_error_deg": list(result.sigma_deg),
                "err_R_deg": float(error_R),
                "err_t_deg": float(error_t),
                "poselib_error": float(poselib_error),
            }
        )
    return rows


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (ties broken by order; the errors are continuous)."""
    if len(a) < 3:
        return float("nan")
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def summary_row(name: str, rows: list[dict]) -> str:
    c = predicted_error_calibration(rows)
    assert c is not None
    larger_predicted = np.array([max(r["predicted_error_deg"]) for r in rows])
    larger_error = np.array([max(r["err_R_deg"], r["err_t_deg"]) for r in rows])
    cells = [
        name,
        str(c["pairs"]),
        f"{c['median_predicted_R_deg']:.3f} / {c['median_err_R_deg']:.3f}",
        f"{c['median_predicted_t_deg']:.3f} / {c['median_err_t_deg']:.3f}",
        f"{c['median_normalized_R']:.2f} / {c['median_normalized_t']:.2f}",
        f"{_spearman(larger_predicted, larger_error):.2f}",
        f"{100 * c['share_predicted_above_1deg']:.0f} %",
        f"{np.median(larger_error):.3f} / {statistics.median(r['poselib_error'] for r in rows):.3f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = scene_parser(__doc__.split("\n\n")[0], "dino,kermit,kitti06", 0.95, 150)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="shipped model")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--name", default="fit_uncertainty", help="the result files' name")
    args = parser.parse_args()
    scenes = args.scenes.split(",")
    chunks = spread_pair_chunks(scene_dirs(args.scenes_root, scenes), args.ratio, args.max_pairs_per_scene)
    rows: list[dict] = []
    with ProcessPoolExecutor(args.workers) as pool:
        for part in pool.map(_worker, [(d, args.ratio, indices, args.model) for d, indices in chunks]):
            rows += part
    lines = [
        f"mbp's predicted pose error (the final fit's covariance, `EssentialResult.sigma_deg`) against its actual error, "
        f"network `{args.model}`, Lowe ratio {args.ratio:g}, {len(rows)} pairs (see the script's docstring). "
        "Angles in degrees; `pred / actual` are medians; `(err/sigma)^2` is 1 where the matches' noise explains the "
        "error.",
        "",
        "| scene | pairs | rotation: pred / actual | translation: pred / actual | median (err/sigma)^2 R / t "
        "| Spearman (larger) | pred > 1 deg | mbp / PoseLib median error (larger) |",
        "|---|---|---|---|---|---|---|---|",
        *(summary_row(s, [r for r in rows if r["scene"] == s]) for s in scenes),
        summary_row("all", rows),
    ]
    publish(args.out, f"{args.name}_ratio{args.ratio:g}", lines, rows)


if __name__ == "__main__":
    main()
