"""The initialisation recipe of the consensus network (method.md §7), on cached matches of posed scenes.

Losses, per pair of a batch, over its real (unpadded) correspondences:

* NG-RANSAC's KL initialisation on the final logits: ``KL(p || softmax(logits))`` with
  ``p_i ∝ exp(-e_i / (2 s^2))``, ``e_i`` the squared Sampson distance under the ground truth and ``s`` one pixel
  in normalized units (``1 / focal``, the recipe's 1e-3 at a focal of 1000 px);
* binary cross-entropy of the final **and** of the first logits against the ground-truth inliers (Sampson
  distance below ``--label-threshold`` pixels and in front of both cameras). It anchors the logits so that
  ``sigmoid`` is an inlier probability (which the Gumbel sampler draws by), and it is the loss that makes the first
  head, whose logits shape the global block's adjacency, learn.

Data: the ratio-0.95 SIFT matches of the training scenes (a superset of the ratio-0.8 ones); each time a pair is
drawn it is restricted to its ratio-0.8 matches with probability 1/2, so that the network sees both regimes, and
subsampled at random to at most ``--max-points`` correspondences (padded with a mask in the batch). AdamW with a
cosine learning-rate schedule, gradient-norm clipping, seeded; a fixed number of steps (no early stopping: the
validation scenes are only measured). ``--augment-*`` transform each drawn pair as other cameras would have seen it
(rolled, swapped, mirrored: :mod:`mbp_cli.training.augment`, labels exact). Checkpoints are written atomically and
a run resumes from its checkpoint.

Usage::

    python -m mbp_cli.training.init --scenes-root ../shared/data/scenes --train buddha,castle,fox,kitti01 \\
        --val dino,kermit,kitti06 --cache-dir benchmarks/cache/matches --name sift-kl-w64 --width 64
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import json
import math
import random
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbp_cli.data.matches import PairMatches, load_scene_matches, scene_dirs
from mbp_cli.io.output import atomic_write_bytes
from mbp_cli.metrics import pose_auc, pose_error_deg
from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.consensus import ConsensusNetwork, count_parameters
from mbp_cli.network.features import network_inputs, sampling_quality, score_correspondences
from mbp_cli.network.weights import file_sha256, save_weights, write_model_card
from mbp_cli.robust.ransac import RansacOptions, ransac_essential
from mbp_cli.training.augment import NO_AUGMENTATION, Augmentation, augment_inputs
from mbp_cli.training.targets import bce_loss, gt_inlier_labels, gt_residuals, kl_loss, kl_target

RATIO_ALL = 0.95
RATIO_STRICT = 0.8


@dataclass
class TrainPair:
    """One pair ready for training: inputs (C, N), labels (N,), GT residuals (N,), Lowe ratios (N,), focal."""

    name: str
    inputs: torch.Tensor
    labels: torch.Tensor
    residuals: torch.Tensor
    ratio: torch.Tensor
    focal: float


def prepare(pair: PairMatches, config: NetworkConfig, label_threshold_px: float) -> TrainPair:
    x0, x1 = torch.from_numpy(pair.x0), torch.from_numpy(pair.x1)
    R, t = torch.from_numpy(pair.R), torch.from_numpy(pair.t)
    side = {k: torch.from_numpy(v) for k, v in pair.side.items()}
    return TrainPair(
        f"{pair.scene}/{pair.image0}-{pair.image1}",
        network_inputs(x0, x1, side, config),
        gt_inlier_labels(R, t, x0, x1, label_threshold_px / pair.focal),
        gt_residuals(R, t, x0, x1).float(),
        side["ratio"].float(),
        pair.focal,
    )


def make_batch(
    pairs: Sequence[TrainPair],
    max_points: int,
    strict_probability: float,
    rng: random.Random,
    generator: torch.Generator,
    augmentation: Augmentation = NO_AUGMENTATION,
    channels: tuple[str, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A padded batch: inputs (B, C, M), mask (B, M), labels (B, M), KL targets (B, M).

    Each pair's inputs (with C ``channels``) are transformed by one draw of ``augmentation``
    (:mod:`mbp_cli.training.augment`: the labels and residuals stay exact).
    """
    chosen = []
    for p in pairs:
        keep = torch.arange(p.inputs.shape[1])
        if rng.random() < strict_probability:
            keep = keep[p.ratio < RATIO_STRICT]
        if keep.numel() > max_points:
            keep = keep[torch.randperm(keep.numel(), generator=generator)[:max_points]]
        chosen.append(keep)
    M = max(k.numel() for k in chosen)
    B, C = len(pairs), pairs[0].inputs.shape[0]
    inputs = torch.zeros(B, C, M)
    mask = torch.zeros(B, M, dtype=torch.bool)
    labels = torch.zeros(B, M, dtype=torch.bool)
    residuals = torch.zeros(B, M)
    scales = torch.tensor([1.0 / p.focal for p in pairs])
    for b, (p, keep) in enumerate(zip(pairs, chosen, strict=True)):
        n = keep.numel()
        inputs[b, :, :n] = augment_inputs(p.inputs[:, keep], channels, augmentation, rng)
        mask[b, :n] = True
        labels[b, :n] = p.labels[keep]
        residuals[b, :n] = p.residuals[keep]
    target = kl_target(residuals / scales[:, None] ** 2, 1.0, mask)  # e / (2 s^2) with s = 1 px per pair
    return inputs, mask, labels, target


def losses(
    model: ConsensusNetwork,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    first_weight: float,
) -> dict[str, torch.Tensor]:
    inputs, mask, labels, target = batch
    first, final = model.forward_both(inputs, mask)
    out = {
        "kl": kl_loss(final, target, mask),
        "bce": bce_loss(final, labels, mask),
        "bce_first": bce_loss(first, labels, mask),
    }
    out["total"] = out["kl"] + out["bce"] + first_weight * out["bce_first"]
    return out


def classification_metrics(model: ConsensusNetwork, pairs: Sequence[TrainPair], ratio: float) -> dict[str, float]:
    """Inlier classification at ``sigmoid > 0.5`` over every correspondence (Lowe ratio below ``ratio``)."""
    tp = fp = fn = n = 0
    ap = []
    for p in pairs:
        keep = p.ratio < ratio
        if int(keep.sum()) < 5:
            continue
        logits = score_correspondences(model, p.inputs[:, keep])
        pred, lab = logits > 0, p.labels[keep]
        tp += int((pred & lab).sum())
        fp += int((pred & ~lab).sum())
        fn += int((~pred & lab).sum())
        n += int(keep.sum())
        # inlier fraction among the top 10 % by score (what guided sampling draws from first)
        top = logits.topk(max(1, int(keep.sum()) // 10)).indices
        ap.append(float(lab[top].float().mean()))
    return {
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "inlier_fraction": (tp + fn) / max(n, 1),
        "top10pct_inlier_fraction": float(np.mean(ap)) if ap else 0.0,
    }


def pose_metrics(
    model: ConsensusNetwork,
    pairs: Sequence[PairMatches],
    samplers: Sequence[str],
    threshold_px: float = 1.0,
    options: RansacOptions | None = None,
    seeds: Sequence[int] = (0,),
) -> dict[str, dict[str, float]]:
    """AUC@5/10/20 and mean iterations of mbp's RANSAC with each sampler.

    Args:
        options: the estimator's settings (default: the product's defaults); sampler and threshold are set here.
        seeds: RANSAC seeds; every pair is estimated once per seed and all runs enter the AUC.
    """
    base = options or RansacOptions()
    results: dict[str, dict[str, list[float]]] = {s: {"err": [], "iterations": []} for s in samplers}
    for p in pairs:
        x0, x1 = torch.from_numpy(p.x0), torch.from_numpy(p.x1)
        logits = score_correspondences(
            model, network_inputs(x0, x1, {k: torch.from_numpy(v) for k, v in p.side.items()}, model.config)
        )
        for s, seed in itertools.product(samplers, seeds):
            options = dataclasses.replace(base, threshold_px=threshold_px, sampler=s, seed=seed)
            res = ransac_essential(x0, x1, threshold_px / p.focal, options, quality=sampling_quality(logits, s))
            R = None if res.R is None else res.R.numpy()
            t = None if res.t is None else res.t.numpy()
            results[s]["err"].append(max(pose_error_deg(R, t, p.R, p.t)))
            results[s]["iterations"].append(res.iterations)
    return {
        s: {
            **dict(zip(("auc5", "auc10", "auc20"), pose_auc(r["err"], (5.0, 10.0, 20.0)), strict=True)),
            "mean_iterations": float(np.mean(r["iterations"])),
            "pairs": len(r["err"]),
        }
        for s, r in results.items()
    }


def atomic_torch_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate from its initial value to 0 along half a cosine over ``total_steps`` steps, 0 after."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )


def restore_checkpoint(path: Path, parts: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
    """Resume a recipe: each named part (module, optimizer, schedule) and the Python RNG from ``path``.

    Returns:
        The whole saved state, for the recipe's own entries (step, history, other generators), or None when
        ``path`` does not exist (a fresh start).
    """
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=False)
    for key, part in parts.items():
        part.load_state_dict(state[key])
    rng.setstate(state["rng"])
    return state


def start_recipe(module: str, argv: Sequence[str] | None, threads: int, seed: int) -> tuple[str, random.Random]:
    """A training recipe's reproducible start: its command line as run, torch's threads and seed, a seeded RNG."""
    command = f"python -m {module} " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return command, random.Random(seed)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes-root", type=Path, required=True)
    parser.add_argument("--train", required=True, help="comma-separated training scenes")
    parser.add_argument("--val", required=True, help="comma-separated validation scenes (measured only)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="match cache (mbp_cli.data.matches)")
    parser.add_argument(
        "--name", required=True, help="model name: writes weights/<name>.safetensors, models/<name>.json"
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="folder holding weights/ and models/")
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/runs"), help="checkpoints")
    parser.add_argument("--width", type=int, default=NetworkConfig.width)
    parser.add_argument(
        "--blocks",
        default=None,
        help="residual blocks before the graph block, after it and after the global block (default 4,4,1)",
    )
    parser.add_argument("--max-points", type=int, default=1000, help="correspondences per pair and step at most")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--clip", type=float, default=5.0)
    parser.add_argument("--first-weight", type=float, default=0.5, help="weight of the first head's BCE")
    parser.add_argument("--label-threshold", type=float, default=2.0, help="GT inlier threshold, pixels")
    parser.add_argument("--strict-probability", type=float, default=0.5, help="chance of ratio-0.8 matches only")
    parser.add_argument("--augment-roll", type=float, default=0.0, help="degrees: both cameras rolled by one angle")
    parser.add_argument("--augment-relative-roll", type=float, default=0.0, help="degrees: camera 1 rolled further")
    parser.add_argument("--augment-swap", action="store_true", help="exchange the images half the time")
    parser.add_argument("--augment-mirror", action="store_true", help="mirror both images half the time")
    parser.add_argument("--val-pose-pairs", type=int, default=20, help="pairs per validation scene for AUC")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command, rng = start_recipe("mbp_cli.training.init", argv, args.threads, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    blocks = {}
    if args.blocks:
        usage = "--blocks takes three counts: before the graph block, after it, after the global block (e.g. 2,2,1)"
        try:
            counts = [int(b) for b in args.blocks.split(",")]
        except ValueError:
            raise SystemExit(usage) from None
        if len(counts) != 3:
            raise SystemExit(usage)
        blocks = dict(zip(("blocks_before_graph", "blocks_after_graph", "blocks_after_global"), counts, strict=True))
    try:
        config = NetworkConfig(width=args.width, max_points=max(args.max_points, NetworkConfig.k), **blocks)
    except ValueError as exc:
        raise SystemExit(f"bad network configuration: {exc}") from None
    try:
        augmentation = Augmentation(
            args.augment_roll, args.augment_relative_roll, args.augment_swap, args.augment_mirror
        )
    except ValueError as exc:
        raise SystemExit(f"bad augmentation: {exc}") from None
    train_names = args.train.split(",")
    val_names = args.val.split(",")
    if set(train_names) & set(val_names):
        raise SystemExit("a scene cannot be in both --train and --val")

    def load(names: list[str], ratio: float) -> list[PairMatches]:
        out = []
        for d in scene_dirs(args.scenes_root, names):
            out += load_scene_matches(d, ratio, cache_dir=args.cache_dir)
        return [p for p in out if len(p) >= 5]

    start = time.perf_counter()
    train_raw = load(train_names, RATIO_ALL)
    train = [prepare(p, config, args.label_threshold) for p in train_raw]
    print(f"data: {len(train)} training pairs ({time.perf_counter() - start:.0f} s)")

    model = ConsensusNetwork(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = cosine_schedule(optimizer, args.steps)
    checkpoint = args.runs / args.name / "checkpoint.pt"
    step = 0
    state = restore_checkpoint(checkpoint, {"model": model, "optimizer": optimizer, "schedule": schedule}, rng)
    if state is not None:
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
        print(f"resumed from {checkpoint} at step {step}")

    model.train()
    running: dict[str, float] = {}
    start = time.perf_counter()
    skipped = 0
    while step < args.steps:
        batch_pairs = [train[rng.randrange(len(train))] for _ in range(args.batch)]
        batch = make_batch(
            batch_pairs, args.max_points, args.strict_probability, rng, generator, augmentation, config.channels
        )
        out = losses(model, batch, args.first_weight)
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(out["total"]):
            skipped += 1
        else:
            out["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
        schedule.step()
        step += 1
        for k, v in out.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        if step % args.log_every == 0:
            line = "  ".join(f"{k} {v / args.log_every:.4f}" for k, v in running.items())
            print(f"step {step}/{args.steps}  {line}  {time.perf_counter() - start:.0f} s", flush=True)
            running = {}
        if step % args.checkpoint_every == 0 or step == args.steps:
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "rng": rng.getstate(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                },
                checkpoint,
            )
    train_seconds = time.perf_counter() - start
    model.eval()

    # The validation scenes are read only now: they play no part in training.
    val_raw = {r: load(val_names, r) for r in (RATIO_STRICT, RATIO_ALL)}
    val = {r: [prepare(p, config, args.label_threshold) for p in pairs] for r, pairs in val_raw.items()}

    metrics: dict[str, object] = {}
    with torch.no_grad():
        for r, pairs in val.items():
            metrics[f"classification_ratio{r:g}"] = classification_metrics(model, pairs, r)
            metrics[f"classification_train_ratio{r:g}"] = classification_metrics(
                model, train[:: max(1, len(train) // 100)], r
            )
    for r, pairs in val_raw.items():
        if args.val_pose_pairs <= 0:  # classification only (e.g. the folds of benchmarks/loso.py)
            break
        chosen = []
        for scene in val_names:
            scene_pairs = [p for p in pairs if p.scene == scene]
            idx = np.linspace(0, len(scene_pairs) - 1, min(len(scene_pairs), args.val_pose_pairs)).round().astype(int)
            chosen += [scene_pairs[i] for i in sorted(set(idx.tolist()))]
        metrics[f"pose_ratio{r:g}"] = pose_metrics(model, chosen, ("gumbel", "prosac", "uniform"))
    print(json.dumps(metrics, indent=1))

    weights_path = args.out / "weights" / f"{args.name}.safetensors"
    sha = save_weights(model, weights_path, {"name": args.name})
    licences = {
        "buddha": "CC BY 4.0",
        "castle": "research use with citation",
        "fox": "NVIDIA source code licence, non-commercial research only",
        "kitti01": "CC BY-NC-SA 3.0",
        "kitti06": "CC BY-NC-SA 3.0",
        "dino": "research use with citation",
        "kermit": "GPL (Bundler distribution)",
    }
    card = {
        "name": args.name,
        "weights": {"file": weights_path.name, "sha256": sha, "bytes": weights_path.stat().st_size},
        "architecture": {
            "kind": "CLNet-style consensus network (method.md §2), masked",
            "config": config.to_dict(),
            "parameters": count_parameters(model),
        },
        "inputs": {
            "matcher": "sift (OpenCV SIFT, RootSIFT, mutual NN + ratio test)",
            "channels": list(config.channels),
        },
        "training_data": {
            "scenes": {s: licences.get(s, "see the scene's SOURCE.md") for s in train_names},
            "pairs": len(train),
            "matches": f"sift-opencv(n=8000,ratio={RATIO_ALL},contrast=0.01), restricted to ratio < {RATIO_STRICT} half the time",
            "validation_scenes": {s: licences.get(s, "see the scene's SOURCE.md") for s in val_names},
            "split": "by scene; validation scenes are measured only (no early stopping, no model selection)",
        },
        "licence": (
            "Weights derived from data under non-commercial / research-only terms (fox, KITTI, castle): "
            "use them for research and other non-commercial purposes only. mbp's code is Apache-2.0."
        ),
        "recipe": {
            "losses": "KL(p || softmax(final logits)), p ∝ exp(-e / (2 s^2)), s = 1 px / focal; "
            f"+ BCE(final) + {args.first_weight} BCE(first head); GT inliers: Sampson < "
            f"{args.label_threshold} px and in front of both cameras",
            "optimizer": f"AdamW lr {args.lr} (cosine to 0), weight decay {args.weight_decay}, clip {args.clip}",
            "steps": args.steps,
            "batch_pairs": args.batch,
            "max_points": args.max_points,
            "augmentation": augmentation.to_dict(),
            "seed": args.seed,
            "threads": args.threads,
            "train_seconds": round(train_seconds, 1),
            "skipped_steps": skipped,
            "command": command,
        },
        "validation_notes": (
            "classification: sigmoid(logit) > 0.5 against the GT inliers of every validation pair; pose: mbp's "
            f"RANSAC at default options (1 px) on {args.val_pose_pairs} pairs per validation scene, 'prosac' ordered "
            "by the network's logits, 'gumbel' drawing by its inlier probabilities"
        ),
        "validation": metrics,
    }
    card_path = write_model_card(args.out, args.name, card)
    print(f"wrote {weights_path} ({file_sha256(weights_path)[:12]}) and {card_path}")


if __name__ == "__main__":
    main()
