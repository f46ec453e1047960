"""The whole estimator under several inference settings (``RansacOptions`` overrides) on the same matches.

Validation for the defaults: run it on the training scenes of the shipped model, not on the held-out ones that the
other tables report on. Every pair is estimated once per variant with the network-guided Gumbel sampler (seed 0,
1 px unless a variant says otherwise); the time is the median per pair, one thread, network included.

A variant is ``name`` (the defaults) or ``key=value[,key=value...]`` with keys of ``RansacOptions`` (ints, floats
and booleans are parsed; ``sampler=uniform`` drops the network's guidance and its time) or ``refine.<key>`` for the
final LM's ``RefineOptions`` (e.g. ``refine.cost_tol=1e-4``); a tuple is given with ``/`` (``basin_hops=0.1/0.2``,
``basin_hops=`` for none). Variants are separated by ``;``.

Usage::

    python benchmarks/settings.py --scenes buddha,castle,fox,kitti01 --ratio 0.95 --max-pairs-per-scene 100 \\
        --variants "default;refine_scale=0.5;lo_candidates=1" --name lo

Writes ``settings_<name>_ratio<r>.md`` and ``.json`` under ``--out``.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import CACHE, auc_rows, publish, scene_parser, single_thread, spread_pair_chunks  # noqa: E402

from mbp_cli.data.matches import load_scene_matches, scene_dirs  # noqa: E402
from mbp_cli.network.weights import DEFAULT_MODEL  # noqa: E402
from mbp_cli.robust.ransac import RansacOptions  # noqa: E402
from mbp_cli.robust.refine import RefineOptions  # noqa: E402


def parse_variant(text: str) -> dict:
    """``"default"`` (or nothing) -> ``{}``; ``"lo_candidates=1,refine_scale=0.5"`` -> typed ``RansacOptions`` overrides."""
    text = text.strip()
    if text in ("", "default"):
        return {}
    fields = {f.name: f for f in dataclasses.fields(RansacOptions)}
    refine_fields = {f.name for f in dataclasses.fields(RefineOptions)}
    overrides: dict = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key.startswith("refine.") and key[7:] in refine_fields and value:
            default = getattr(RefineOptions(), key[7:])
            refine = overrides.get("refine", RefineOptions())
            overrides["refine"] = dataclasses.replace(refine, **{key[7:]: type(default)(value.strip())})
            continue
        if key not in fields or (not value and not isinstance(getattr(RansacOptions(), key, None), tuple)):
            raise SystemExit(f"bad variant item {item!r}: use key=value with a RansacOptions field")
        default = getattr(RansacOptions(), key)
        if isinstance(default, bool):
            overrides[key] = value.strip().lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float, str)):
            overrides[key] = type(default)(value.strip())
        elif isinstance(default, tuple):  # numbers separated by '/', empty for ()
            overrides[key] = tuple(float(v) for v in value.strip().split("/") if v)
        else:
            raise SystemExit(f"{key} cannot be set from the command line")
    return overrides


def _worker(task: tuple) -> list[dict]:
    scene_dir, ratio, indices, variants, model, weights, max_points = task
    single_thread()
    import torch

    from mbp_cli.matching.types import keypoint_scales
    from mbp_cli.metrics import pose_error_deg
    from mbp_cli.network.features import fit_weighting, network_inputs, sampling_quality, score_correspondences
    from mbp_cli.network.weights import load_model, load_weights
    from mbp_cli.robust.ransac import ransac_essential

    net = load_weights(weights) if weights else load_model(model)
    pairs = load_scene_matches(Path(scene_dir), ratio, cache_dir=CACHE)
    options = {
        name: RansacOptions(**({"threshold_px": 1.0, "sampler": "gumbel", "seed": 0} | o)) for name, o in variants
    }
    rows = []
    for n, i in enumerate(indices):
        pair = pairs[i]
        x0, x1 = torch.from_numpy(pair.x0), torch.from_numpy(pair.x1)
        side = {k: torch.from_numpy(v) for k, v in pair.side.items()}
        scales = keypoint_scales(side)
        start = time.perf_counter()
        inputs = network_inputs(x0, x1, side, net.config)
        logits = score_correspondences(net, inputs, max_points=max_points)
        network_ms = (time.perf_counter() - start) * 1e3
        row: dict = {"scene": pair.scene, "image0": pair.image0, "image1": pair.image1, "num_matches": len(pair)}
        for name, opts in options.items():
            guided = opts.sampler != "uniform"
            quality = sampling_quality(logits, opts.sampler) if guided else None
            weights = fit_weighting(net, inputs, logits, opts.probability_weights) if guided else None
            threshold = opts.threshold_px / pair.focal
            if n == 0:  # one-off set-up (first calls of each code path) out of the timings
                ransac_essential(x0, x1, threshold, opts, quality, refinement_weights=weights, keypoint_scales=scales)
            start = time.perf_counter()
            res = ransac_essential(x0, x1, threshold, opts, quality, refinement_weights=weights, keypoint_scales=scales)
            row[f"{name} ms"] = (time.perf_counter() - start) * 1e3 + (network_ms if guided else 0.0)
            error = 180.0
            if res.R is not None and res.t is not None:
                error = max(pose_error_deg(res.R.numpy(), res.t.numpy(), pair.R, pair.t))
            row[name] = error
        rows.append(row)
    return rows


def main() -> None:
    # default scenes: the shipped model's training scenes
    parser = scene_parser(__doc__.split("\n\n")[0], "buddha,castle,fox,kitti01", 0.95, 100)
    parser.add_argument("--variants", default="default;refine_scale=0.5", help="';'-separated, see the docstring")
    parser.add_argument("--name", default="variants", help="the result files' name")
    parser.add_argument("--model", default=None, help="shipped model (default: the default model)")
    parser.add_argument("--weights", default=None, help="a weights file instead")
    parser.add_argument("--max-points", type=int, default=None, help="the network's group size (default: its own)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    scenes = args.scenes.split(",")
    variants = [(v.strip(), parse_variant(v)) for v in args.variants.split(";")]
    chunks = spread_pair_chunks(scene_dirs(args.scenes_root, scenes), args.ratio, args.max_pairs_per_scene)
    model = args.model or DEFAULT_MODEL
    tasks = [(d, args.ratio, indices, variants, model, args.weights, args.max_points) for d, indices in chunks]
    rows: list[dict] = []
    with ProcessPoolExecutor(args.workers) as pool:
        for part in pool.map(_worker, tasks):
            rows += part
    names = [name for name, _ in variants]
    table = auc_rows(rows, names, scenes, "variant", digits=2)
    table[0] += " median ms |"
    table[1] += "---|"
    for k, name in enumerate(names, start=2):
        table[k] += f" {statistics.median(r[f'{name} ms'] for r in rows):.1f} |"
    lines = [
        f"The whole estimator (network `{args.weights or model}`, Gumbel sampling, seed 0) under {len(names)} "
        f"settings, Lowe ratio "
        f"{args.ratio:g}, {len(rows)} pairs of {', '.join(scenes)} (median {statistics.median(r['num_matches'] for r in rows):.0f} "
        "matches); time: median per pair, one thread, network included.",
        "",
        *table,
    ]
    publish(args.out, f"settings_{args.name}_ratio{args.ratio:g}", lines, rows)


if __name__ == "__main__":
    main()
