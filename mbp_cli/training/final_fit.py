"""Train the fit head: the final LM's correspondence weights, end to end through the LM's optimum (IFT).

On pairs that RANSAC gets right the pose error left is the final fit's (``benchmarks/final_fit.py``). This recipe
trains :class:`mbp_cli.network.fit_head.FitHead` on top of a trained consensus network (kept frozen) with the loss
on the **refined** pose:

1. every pair of the training scenes, at Lowe ratios 0.8 and 0.95 (``--ratios``), runs mbp's RANSAC at the product's defaults
   (network-guided Gumbel sampling, MAGSAC++, local optimisation) without its final LM, once: the start pose and
   the correspondences within the refinement margin, with their fit-head features, network logits and keypoint
   noise, are kept;
2. each step, the head weighs those correspondences (the network's probability, corrected: an untrained head is
   the product's fit), the product's final LM (Cauchy at ``refine_scale`` times the threshold, heteroscedastic
   Sampson distances of the keypoints' noise) runs to its optimum, and
   :func:`mbp_cli.robust.refine.refine_pose_implicit` gives the optimum's derivative w.r.t. the weights by the
   implicit function theorem; the loss (``--loss``) is the rotation plus the translation angular error (degrees)
   to the ground truth, or the larger of the two capped at 5 degrees (``auc5``: its mean is exactly
   ``5 (1 - AUC@5)``), averaged over the batch's pairs. Pairs whose start is more than ``--max-start-error``
   degrees off are RANSAC failures the fit cannot mend, and are left out.

Adam with a cosine learning-rate schedule for a fixed number of epochs (no early stopping: the validation scenes
are only measured, each epoch, from the same kind of starts). Checkpoints are written atomically each epoch and a
run resumes from its checkpoint; the prepared starts are cached in the run folder.

Usage::

    python -m mbp_cli.training.final_fit --scenes-root ../shared/data/scenes --train buddha,castle,fox,kitti01 \\
        --val dino,kermit,kitti06 --cache-dir benchmarks/cache/matches --base sift-kl-w32-small-label1px \\
        --name sift-kl-w32-small-label1px-fit
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mbp_cli.data.matches import PairMatches, load_scene_matches, scene_dirs
from mbp_cli.errors import WeightsError
from mbp_cli.geometry.essential import (
    rotation_error_deg,
    translation_error_deg,
)
from mbp_cli.matching.types import keypoint_scales
from mbp_cli.metrics import pose_auc
from mbp_cli.network.consensus import ConsensusNetwork, count_parameters
from mbp_cli.network.features import network_inputs, sampling_quality, score_correspondences
from mbp_cli.network.fit_head import FitHead, fit_feature_names, fit_features
from mbp_cli.network.weights import file_sha256, load_model, load_weights, model_card, save_weights, write_model_card
from mbp_cli.robust.ransac import RansacOptions, final_fit_set, ransac_essential
from mbp_cli.robust.refine import KeypointNoise, refine_pose, refine_pose_implicit
from mbp_cli.training.init import atomic_torch_save, cosine_schedule, restore_checkpoint, start_recipe


@dataclass
class FitPair:
    """One pair's RANSAC start and the correspondences of its final fit (within the refinement margin)."""

    scene: str
    ratio: float
    x0: torch.Tensor  # (M, 2) float64
    x1: torch.Tensor
    features: torch.Tensor  # (M, F) float32
    logits: torch.Tensor  # (M,) float64, the consensus network's
    noise: KeypointNoise | None  # the keypoints' relative localisation noise (SIFT), as the product's final LM
    R_start: torch.Tensor  # (3, 3)
    t_start: torch.Tensor  # (3,)
    R_gt: torch.Tensor
    t_gt: torch.Tensor
    scale: float  # the final LM's robust scale, normalized units
    start_error_deg: float


def angular_errors_deg(R: torch.Tensor, t: torch.Tensor, R_gt: torch.Tensor, t_gt: torch.Tensor) -> torch.Tensor:
    """Rotation and (unsigned) translation-direction errors in degrees, differentiable, shape (2,)."""
    return torch.stack([rotation_error_deg(R, R_gt), translation_error_deg(t, t_gt)])


def prepare(pair: PairMatches, ratio: float, network: ConsensusNetwork, options: RansacOptions) -> FitPair | None:
    """The RANSAC start of one pair (the product's options, without the final LM) and its fit's inputs."""
    x0, x1 = torch.from_numpy(pair.x0).double(), torch.from_numpy(pair.x1).double()
    side = {k: torch.from_numpy(v) for k, v in pair.side.items()}
    inputs = network_inputs(x0, x1, side, network.config)
    logits = score_correspondences(network, inputs, seed=options.seed)
    threshold = options.threshold_px / pair.focal
    start_options = replace(options, final_refinement=False)
    result = ransac_essential(x0, x1, threshold, start_options, sampling_quality(logits, options.sampler))
    if result.R is None or result.t is None:
        return None
    near, r2_near, noise = final_fit_set(
        result.R[None], result.t[None], x0, x1, threshold, options, keypoint_scales(pair.side)
    )
    if int(near.sum()) < 5:
        return None
    R_gt = torch.from_numpy(pair.R).double()
    t_gt = torch.from_numpy(pair.t).double()
    t_gt = t_gt / t_gt.norm()
    return FitPair(
        pair.scene,
        ratio,
        x0[near],
        x1[near],
        fit_features(inputs[:, near], logits[near], r2_near, network.config.inputs),
        logits[near].double(),
        noise,
        result.R,
        result.t,
        R_gt,
        t_gt,
        threshold * options.refine_scale,
        float(angular_errors_deg(result.R, result.t, R_gt, t_gt).max()),
    )


# How the final fit is weighed when it is measured (auc5): unweighted, by the network's probabilities (the
# product without a head), or by the head.
WEIGHINGS = ("plain_lm", "probability_weights", "fit_head")


def fit_weights(pair: FitPair, weighing: str, head: FitHead | None) -> torch.Tensor | None:
    """The final LM's (M,) weights of one pair for a weighing of :data:`WEIGHINGS` (differentiable for the head)."""
    if weighing == "plain_lm":
        return None
    if weighing == "probability_weights":
        return torch.sigmoid(pair.logits)
    assert head is not None
    return head(pair.features, pair.logits)


def fitted_pose(pair: FitPair, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The product's final LM from the pair's start (no gradient)."""
    weights = None if weights is None else weights.detach()[None]
    R, t, _ = refine_pose(
        pair.R_start[None], pair.t_start[None], pair.x0, pair.x1, pair.scale, point_weights=weights, noise=pair.noise
    )
    return R[0], t[0]


def pose_loss(errors_deg: torch.Tensor, loss: str) -> torch.Tensor:
    """One pair's training loss from its (2,) rotation and translation errors in degrees (see the module doc)."""
    if loss == "degrees":
        return errors_deg.sum()
    return errors_deg.max().clamp_max(5.0)


def auc5(pairs: Sequence[FitPair], weighing: str, head: FitHead | None = None) -> dict[str, float]:
    """AUC@5 (percent) of the final fit over all pairs and per scene."""
    errors: dict[str, list[float]] = {}
    for p in pairs:
        with torch.no_grad():
            R, t = fitted_pose(p, fit_weights(p, weighing, head))
        errors.setdefault(p.scene, []).append(float(angular_errors_deg(R, t, p.R_gt, p.t_gt).max()))
    every = [e for v in errors.values() for e in v]
    out = {"all": round(100 * pose_auc(every, (5.0,))[0], 2)}
    out.update({s: round(100 * pose_auc(v, (5.0,))[0], 2) for s, v in errors.items()})
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes-root", type=Path, required=True)
    parser.add_argument("--train", required=True, help="comma-separated training scenes")
    parser.add_argument("--val", default="", help="comma-separated validation scenes (measured only); none if empty")
    parser.add_argument("--ratios", default="0.8,0.95", help="Lowe ratios of the matches to train and validate on")
    parser.add_argument("--cache-dir", type=Path, default=None, help="match cache (mbp_cli.data.matches)")
    parser.add_argument("--base", required=True, help="shipped model name (or a .safetensors file) to add a head to")
    parser.add_argument("--name", required=True, help="writes weights/<name>.safetensors and models/<name>.json")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder holding weights/ and models/")
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/runs"), help="checkpoints and prepared starts")
    parser.add_argument("--width", type=int, default=32, help="hidden width of the fit head")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16, help="pairs per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--loss", choices=("degrees", "auc5"), default="degrees", help="per-pair loss (module doc)")
    parser.add_argument("--max-start-error", type=float, default=10.0, help="degrees; worse starts are left out")
    parser.add_argument("--val-pairs-per-scene", type=int, default=150, help="0: all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def _load_base(base: str) -> tuple[ConsensusNetwork, dict | None]:
    try:
        if base.endswith(".safetensors"):
            return load_weights(base), None
        return load_model(base), model_card(base)
    except WeightsError as exc:
        raise SystemExit(f"--base: {exc}") from None


def _prepare_all(
    args: argparse.Namespace, names: list[str], network: ConsensusNetwork, per_scene: int, cache: Path
) -> list[FitPair]:
    if not names:
        return []
    if cache.is_file():
        return torch.load(cache, weights_only=False)
    options = RansacOptions(sampler="gumbel")
    out: list[FitPair] = []
    start = time.perf_counter()
    for ratio in args.ratio_values:
        for scene_dir in scene_dirs(args.scenes_root, names):
            pairs = [p for p in load_scene_matches(scene_dir, ratio, cache_dir=args.cache_dir) if len(p) >= 5]
            if per_scene and len(pairs) > per_scene:  # evenly spread, the benchmarks' choice
                pairs = [pairs[round(i * (len(pairs) - 1) / (per_scene - 1))] for i in range(per_scene)]
            out += [fp for p in pairs if (fp := prepare(p, ratio, network, options)) is not None]
        print(f"prepared {len(out)} starts ({time.perf_counter() - start:.0f} s)", flush=True)
    atomic_torch_save(out, cache)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command, rng = start_recipe("mbp_cli.training.final_fit", argv, args.threads, args.seed)
    train_names, val_names = args.train.split(","), [s for s in args.val.split(",") if s]
    if set(train_names) & set(val_names):
        raise SystemExit("a scene cannot be in both --train and --val")
    try:
        args.ratio_values = [float(r) for r in args.ratios.split(",")]
    except ValueError:
        raise SystemExit(f"--ratios takes comma-separated Lowe ratios, got {args.ratios!r}") from None
    if not all(0.0 < r <= 1.0 for r in args.ratio_values):
        raise SystemExit(f"Lowe ratios must be in (0, 1], got {args.ratios!r}")
    if args.width < 1 or args.epochs < 1 or args.batch < 1:
        raise SystemExit("--width, --epochs and --batch must be positive")
    base, base_card = _load_base(args.base)
    run = args.runs / args.name
    train_all = _prepare_all(args, train_names, base, 0, run / "train_starts.pt")
    train = [p for p in train_all if p.start_error_deg < args.max_start_error]
    print(f"data: {len(train)} of {len(train_all)} training starts within {args.max_start_error:g} deg", flush=True)
    if not train:
        raise SystemExit(
            f"no training pair has a RANSAC start within {args.max_start_error:g} deg: nothing to train on"
        )

    head = FitHead(len(fit_feature_names(base.config.inputs)), args.width)
    optimizer = torch.optim.Adam(head.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(train) / args.batch)
    total_steps = args.epochs * steps_per_epoch
    schedule = cosine_schedule(optimizer, total_steps)
    checkpoint = run / "checkpoint.pt"
    epoch, history = 0, []
    state = restore_checkpoint(checkpoint, {"head": head, "optimizer": optimizer, "schedule": schedule}, rng)
    if state is not None:
        epoch, history = state["epoch"], state["history"]
        print(f"resumed from {checkpoint} after epoch {epoch}")

    while epoch < args.epochs:
        start = time.perf_counter()
        order = list(range(len(train)))
        rng.shuffle(order)
        total = 0.0
        for b in range(0, len(order), args.batch):
            optimizer.zero_grad(set_to_none=True)
            batch = [train[i] for i in order[b : b + args.batch]]
            loss = torch.zeros((), dtype=torch.float64)
            for p in batch:
                weights = head(p.features, p.logits)
                R, t = refine_pose_implicit(p.R_start, p.t_start, p.x0, p.x1, p.scale, weights, noise=p.noise)
                loss = loss + pose_loss(angular_errors_deg(R, t, p.R_gt, p.t_gt), args.loss) / len(batch)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        epoch += 1
        seconds = round(time.perf_counter() - start, 1)
        record = {"epoch": epoch, "train_loss_deg": round(total / len(train), 4), "seconds": seconds}
        history.append(record)
        print(json.dumps(record), flush=True)
        atomic_torch_save(
            {
                "head": head.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": rng.getstate(),
                "epoch": epoch,
                "history": history,
            },
            checkpoint,
        )
    train_seconds = sum(h["seconds"] for h in history)
    head.eval()

    # The validation scenes are read only now: they play no part in training.
    val = _prepare_all(args, val_names, base, args.val_pairs_per_scene, run / "val_starts.pt")
    metrics: dict[str, object] = {}
    for ratio in args.ratio_values:
        for split, pairs in (("validation", val), ("training", train_all)):
            chosen = [p for p in pairs if p.ratio == ratio]
            if not chosen:
                continue
            metrics[f"{split}_ratio{ratio:g}"] = {"pairs": len(chosen)} | {
                f"auc5_{weighing}": auc5(chosen, weighing, head) for weighing in WEIGHINGS
            }
    print(json.dumps(metrics, indent=1))

    config = replace(base.config, fit_head_width=args.width)
    model = ConsensusNetwork(config)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not k.startswith("fit_head.") for k in missing):
        raise SystemExit(f"the base network does not fit its own architecture: {missing} {unexpected}")
    assert model.fit_head is not None
    model.fit_head.load_state_dict(head.state_dict())
    weights_path = args.out / "weights" / f"{args.name}.safetensors"
    sha = save_weights(model.eval(), weights_path, {"name": args.name})
    card = dict(base_card or {})
    card.update(
        {
            "name": args.name,
            "weights": {"file": weights_path.name, "sha256": sha, "bytes": weights_path.stat().st_size},
            "architecture": {
                **card.get("architecture", {}),
                "config": config.to_dict(),
                "parameters": count_parameters(model),
                "fit_head": f"MLP {len(fit_feature_names(config.inputs))} -> {args.width} -> {args.width} -> 1, "
                f"features {', '.join(fit_feature_names(config.inputs))} (mbp_cli.network.fit_head)",
            },
            "base_model": args.base,
            "final_fit_recipe": {
                "what": "the consensus network of base_model, frozen; the fit head (a correction of the network's "
                "logit) trained through the final LM's optimum (implicit function theorem, keypoint noise) with the "
                f"loss {args.loss!r} of the refined pose; starts: mbp's RANSAC at defaults without its final LM, "
                "Lowe ratios " + args.ratios,
                "training_scenes": train_names,
                "training_starts": len(train),
                "optimizer": f"Adam lr {args.lr} (cosine to 0), batch {args.batch} pairs, {args.epochs} epochs",
                "max_start_error_deg": args.max_start_error,
                "seed": args.seed,
                "threads": args.threads,
                "train_seconds": round(train_seconds, 1),
                "history": history,
                "command": command,
            },
            "final_fit_validation_notes": "AUC@5 of the final LM from the same RANSAC starts, unweighted, weighted "
            "by the network's probabilities (the base model's fit) and by the head; validation scenes measured "
            "only, no model selection",
            "final_fit_validation": metrics,
        }
    )
    card.pop("selection", None)
    card_path = write_model_card(args.out, args.name, card)
    print(f"wrote {weights_path} ({file_sha256(weights_path)[:12]}) and {card_path}")


if __name__ == "__main__":
    main()
