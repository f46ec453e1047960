"""Fit a per-match noise model to the ground-truth epipolar residuals of the training scenes.

The final LM can weigh each correspondence by its expected localisation noise (``RansacOptions.scale_noise``: the
keypoints' SIFT detection scales, ``sigma ∝ scale``). This asks what the data say: for every ground-truth inlier
(Sampson distance to the true pose below 2 px, in front of both cameras) of the training scenes, the epipolar residual
``e = x1^T E x0`` has, under independent keypoint noise ``sigma0``, ``sigma1``, the variance
``sigma1^2 |(E x0)_12|^2 + sigma0^2 |(E^T x1)_12|^2``. Three models of ``sigma`` are fitted by the likelihood of a
Student t (3 degrees of freedom: the 2 px gate keeps some wrong matches and the poses have their own error):

* ``equal``: one sigma for every keypoint (the plain Sampson distance);
* ``scale``: ``sigma = c * scale^a``;
* ``scale-ratio``: ``sigma = c * scale^a * exp(b * lowe_ratio)``, the same for both keypoints of a match.

Reports the fitted ``a``, ``b`` and the mean negative log-likelihood per scene and pooled. Feed the pooled ``a,b`` to
``final_fit.py --noise-models`` to see what they do to the pose.

Usage::

    python benchmarks/noise_fit.py --scenes buddha,castle,fox,kitti01 --ratio 0.95 --max-pairs-per-scene 100
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import CACHE, publish, scene_parser, single_thread, spread_pair_chunks  # noqa: E402

from mbp_cli.data.matches import load_scene_matches, scene_dirs  # noqa: E402

MODELS = ("equal", "scale", "scale-ratio")
DOF = 3.0
GATE_PX = 2.0


def residual_statistics(scene_dir: Path, ratio: float, indices: list[int]):
    """(M, 6) float64 rows ``(e^2 in px^2, |(E x0)_12|^2, |(E^T x1)_12|^2, scale0, scale1, ratio)`` of the ground-truth
    inliers of the given pairs; scales divided by each pair's median keypoint scale (:func:`keypoint_noise`)."""
    import torch

    from mbp_cli.geometry.essential import essential_from_pose, triangulated_depths
    from mbp_cli.robust.refine import epipolar_design, keypoint_noise

    pairs = load_scene_matches(scene_dir, ratio, cache_dir=CACHE)
    rows = []
    for i in indices:
        pair = pairs[i]
        x0, x1 = torch.from_numpy(pair.x0).double(), torch.from_numpy(pair.x1).double()
        R = torch.from_numpy(pair.R).double()
        t = torch.from_numpy(pair.t).double()
        t = t / t.norm()
        E = essential_from_pose(R[None], t[None])[0]
        # (x1^T E x0, (E x0)_1, (E x0)_2, (E^T x1)_1, (E^T x1)_2) per correspondence, as the final LM sees them
        e, *derivatives = epipolar_design(x0, x1) @ E.reshape(9)
        g1 = derivatives[0].square() + derivatives[1].square()
        g0 = derivatives[2].square() + derivatives[3].square()
        d0, d1 = triangulated_depths(R[None], t[None], x0, x1)
        inlier = (e.square() / (g0 + g1) < (GATE_PX / pair.focal) ** 2) & (d0[0] > 0) & (d1[0] > 0)
        s0, s1 = keypoint_noise(*(torch.from_numpy(pair.side[k]).double() for k in ("scale0", "scale1")))
        lowe = torch.from_numpy(pair.side["ratio"]).double()
        stats = torch.stack([e.square() * pair.focal**2, g1, g0, s0, s1, lowe], 1)
        rows.append(stats[inlier])
    return torch.cat(rows) if rows else torch.zeros(0, 6, dtype=torch.float64)


def fit_model(stats, model: str) -> dict:
    """Maximum-likelihood ``(log c, a, b)`` of one noise model on residual statistics; returns them and the NLL."""
    import torch

    e2, g1, g0, s0, s1, lowe = stats.T
    free = {"equal": (1, 0, 0), "scale": (1, 1, 0), "scale-ratio": (1, 1, 1)}[model]
    mask = torch.tensor(free, dtype=torch.float64)
    params = torch.tensor([0.0, 1.0 if free[1] else 0.0, 0.0], dtype=torch.float64, requires_grad=True)

    def nll():
        log_c, a, b = params * mask
        log_sigma_shared = log_c + b * lowe
        var = torch.exp(2 * log_sigma_shared) * (g1 * s1 ** (2 * a) + g0 * s0 ** (2 * a))
        return (0.5 * (DOF + 1) * torch.log1p(e2 / (DOF * var)) + 0.5 * torch.log(var)).mean()

    optimizer = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = nll()
        value.backward()
        return value

    optimizer.step(closure)
    log_c, a, b = (params * mask).tolist()
    return {"log_c": log_c, "a": a, "b": b, "nll": float(nll().detach()), "inliers": int(stats.shape[0])}


def main() -> None:
    import torch

    # default: the shipped model's training scenes
    args = scene_parser(__doc__.split("\n\n")[0], "buddha,castle,fox,kitti01", 0.95, 100).parse_args()
    single_thread()
    scenes = args.scenes.split(",")
    per_scene: dict[str, list] = {s: [] for s in scenes}
    for scene_dir, indices in spread_pair_chunks(
        scene_dirs(args.scenes_root, scenes), args.ratio, args.max_pairs_per_scene
    ):
        per_scene[Path(scene_dir).name].append(residual_statistics(Path(scene_dir), args.ratio, indices))
    stats = {s: torch.cat(parts) for s, parts in per_scene.items()}
    stats["pooled"] = torch.cat(list(stats.values()))
    rows = [{"scene": s, "model": m, **fit_model(x, m)} for s, x in stats.items() for m in MODELS]
    lines = [
        f"Noise models fitted to the ground-truth epipolar residuals (inliers: Sampson < {GATE_PX:g} px to the true "
        f"pose, in front of both cameras), Lowe ratio {args.ratio:g}, Student t with {DOF:g} degrees of freedom; "
        "sigma = c * scale^a * exp(b * lowe_ratio) (see the module docstring). Lower NLL is a better fit.",
        "",
        "| scene | inliers | NLL equal | NLL scale | a (scale) | NLL scale-ratio | a | b |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in stats:
        fits = {r["model"]: r for r in rows if r["scene"] == s}
        lines.append(
            f"| {s} | {fits['equal']['inliers']} | {fits['equal']['nll']:.4f} | {fits['scale']['nll']:.4f} | "
            f"{fits['scale']['a']:.2f} | {fits['scale-ratio']['nll']:.4f} | {fits['scale-ratio']['a']:.2f} | "
            f"{fits['scale-ratio']['b']:.2f} |"
        )
    publish(args.out, f"noise_fit_ratio{args.ratio:g}", lines, rows)


if __name__ == "__main__":
    main()
