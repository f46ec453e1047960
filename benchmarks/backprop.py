"""Backpropagation through the 5-point solver: IFT vs DDN vs autograd (MinBackProp's table, on our data).

Two measurements per mode (``mbp_cli.geometry.backprop``):

1. **Backward time of one training batch**: ``--pairs`` real pairs x ``--hypotheses`` Gumbel minimal samples
   (32 x 128 as in MinBackProp), the full forward of ``mbp train`` (network, sampler, solver, losses), then
   ``loss.backward()``, timed; the solver's own share is timed separately as the vector-Jacobian product from
   the roots to the sampled points (``torch.autograd.grad``). Median of ``--repeats`` runs, single thread.
2. **Stability**: ``--runs`` seeded short training runs per mode (``--steps`` steps each, a fresh network per
   seed, the same data); a run is stable when no step had a non-finite loss or gradient and nothing crashed.

Usage::

    python benchmarks/backprop.py --scenes castle --out benchmarks/results

Writes ``backprop.md`` and ``backprop.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mbp_cli.data.matches import load_scene_matches  # noqa: E402
from mbp_cli.geometry.backprop import BACKPROP_MODES, five_point_differentiable, select_root  # noqa: E402
from mbp_cli.geometry.essential import essential_from_pose  # noqa: E402
from mbp_cli.geometry.solver import SAMPLE_SIZE  # noqa: E402
from mbp_cli.network.config import NetworkConfig  # noqa: E402
from mbp_cli.network.consensus import ConsensusNetwork  # noqa: E402
from mbp_cli.robust.samplers import gumbel_topk_st  # noqa: E402
from mbp_cli.training.end_to_end import EndToEndConfig, make_batch, seeded_generator, step_losses  # noqa: E402


def time_backward(mode: str, pairs: list, network: NetworkConfig, hypotheses: int, repeats: int) -> dict:
    """Median seconds of the whole step's backward and of the solver's backward alone."""
    recipe = EndToEndConfig(hypotheses=hypotheses, backprop=mode, max_points=network.max_points)
    step_s, solver_s = [], []
    for r in range(repeats):
        torch.manual_seed(r)
        model = ConsensusNetwork(network).train()
        batch = make_batch(pairs, network, recipe, seeded_generator(r, 0))
        loss, _ = step_losses(model.forward_both, batch, recipe, seeded_generator(r, 1))
        start = time.perf_counter()
        loss.backward()
        step_s.append(time.perf_counter() - start)

        # The solver alone: roots of the same kind of samples, VJP of a fixed upstream gradient.
        B = batch.mask.shape[0]
        log_probs = torch.where(batch.mask, 0.0, float("-inf")).double()
        index, _ = gumbel_topk_st(log_probs, hypotheses, SAMPLE_SIZE, 1.0, seeded_generator(r, 2))
        rows = torch.arange(B)[:, None, None]
        p0 = batch.x0[rows, index].reshape(-1, SAMPLE_SIZE, 2).requires_grad_(True)
        p1 = batch.x1[rows, index].reshape(-1, SAMPLE_SIZE, 2).requires_grad_(True)
        E, valid = five_point_differentiable(p0, p1, mode)
        E_gt = essential_from_pose(batch.R, batch.t).repeat_interleave(hypotheses, 0)
        E_best, _ = select_root(E, valid, E_gt)
        upstream = torch.randn(E_best.shape, generator=seeded_generator(r, 3), dtype=E_best.dtype)
        start = time.perf_counter()
        torch.autograd.grad((E_best * upstream).sum(), (p0, p1), allow_unused=True)
        solver_s.append(time.perf_counter() - start)
    return {"step_backward_s": statistics.median(step_s), "solver_backward_s": statistics.median(solver_s)}


def stability(mode: str, pairs: list, network: NetworkConfig, args: argparse.Namespace) -> dict:
    """Share of seeded short runs without a non-finite loss or gradient and without a crash."""
    recipe = EndToEndConfig(hypotheses=args.stability_hypotheses, backprop=mode, max_points=network.max_points)
    stable, crashes, bad_steps = 0, 0, 0
    for seed in range(args.runs):
        torch.manual_seed(seed)
        model = ConsensusNetwork(network).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        bad = 0
        try:
            for step in range(args.steps):
                chosen = torch.randperm(len(pairs), generator=seeded_generator(seed, step))[: args.stability_pairs]
                batch = make_batch([pairs[i] for i in chosen], network, recipe, seeded_generator(seed, step, 1))
                loss, _ = step_losses(model.forward_both, batch, recipe, seeded_generator(seed, step, 2))
                optimizer.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    bad += 1
                    continue
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                if not torch.isfinite(norm):
                    bad += 1
                    continue
                optimizer.step()
        except Exception as exc:  # noqa: BLE001 - a crash is what this counts
            crashes += 1
            print(f"  {mode} seed {seed}: crashed: {type(exc).__name__}: {str(exc)[:120]}", file=sys.stderr)
            continue
        bad_steps += bad
        stable += bad == 0
    return {"runs": args.runs, "stable": stable, "crashes": crashes, "non_finite_steps": bad_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes-root", type=Path, default=REPO.parent / "shared" / "data" / "scenes")
    parser.add_argument("--scenes", default="castle")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "benchmarks" / "cache" / "matches")
    parser.add_argument("--modes", default=",".join(BACKPROP_MODES))
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--hypotheses", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--max-points", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--stability-pairs", type=int, default=4)
    parser.add_argument("--stability-hypotheses", type=int, default=32)
    parser.add_argument("--stability-width", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pairs = []
    for scene in args.scenes.split(","):
        pairs += [p for p in load_scene_matches(args.scenes_root / scene, 0.8, cache_dir=args.cache_dir) if len(p) >= 8]
    batch_pairs = pairs[: args.pairs]
    network = NetworkConfig(width=args.width, max_points=args.max_points)
    small = NetworkConfig(width=args.stability_width, max_points=min(args.max_points, 512))
    results = {}
    for mode in args.modes.split(","):
        print(f"{mode}: timing", file=sys.stderr)
        timing = time_backward(mode, batch_pairs, network, args.hypotheses, args.repeats)
        print(f"{mode}: {timing}; stability", file=sys.stderr)
        results[mode] = timing | stability(mode, pairs, small, args)
        print(f"{mode}: {results[mode]}", file=sys.stderr)

    command = "python benchmarks/backprop.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    ift = results.get("ift", {})
    lines = [
        f"Backward through the 5-point solver, one batch of {len(batch_pairs)} real pairs ({args.scenes}, SIFT ratio 0.8) "
        f"x {args.hypotheses} Gumbel minimal samples, {args.threads} CPU thread(s), median of {args.repeats}; "
        f"stability over {args.runs} seeded runs of {args.steps} steps ({args.stability_pairs} pairs x "
        f"{args.stability_hypotheses} samples, width {args.stability_width}).",
        "",
        "| mode | solver backward (s) | vs IFT | whole-step backward (s) | stable runs | crashes | non-finite steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        ratio = r["solver_backward_s"] / ift["solver_backward_s"] if ift else float("nan")
        lines.append(
            f"| {mode} | {r['solver_backward_s']:.3f} | {ratio:.1f}x | {r['step_backward_s']:.3f} | "
            f"{r['stable']}/{r['runs']} | {r['crashes']} | {r['non_finite_steps']} |"
        )
    lines += ["", f"Command: `{command}`"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backprop.md").write_text("\n".join(lines) + "\n")
    (args.out / "backprop.json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
