"""End-to-end training step: network → Gumbel sampler → 5-point solver → losses (method.md §3, §5, §7).

One forward pass over a batch of pairs:

1. the consensus network gives first and final logits per correspondence (padded with a mask);
2. ``H`` minimal samples per pair are drawn by Gumbel top-k on ``logsigmoid(final logits)`` with straight-through
   weights that multiply the drawn coordinates (value 1, gradient to the logits);
3. the batched 5-point solver returns every real root; its gradient comes from the IFT, DDN or autograd
   (:mod:`mbp_cli.geometry.backprop`);
4. per hypothesis, the root nearest the ground truth (sign handled) is scored by the epipolar and pose losses,
   averaged over hypotheses or taken in expectation under score-based selection (DSAC);
5. classification (BCE) of both heads and the eigendecomposition-free loss act on the logits directly.

With ``self_supervised`` the ground truth is replaced by the pose the robust estimator finds from the network's
own scores (iMatching, method.md §7): held constant (envelope theorem), it defines pseudo labels for the
eigendecomposition-free loss, whose second term keeps the weights from collapsing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from mbp_cli.data.matches import PairMatches
from mbp_cli.geometry.backprop import BACKPROP_MODES, five_point_differentiable, select_root
from mbp_cli.geometry.essential import essential_from_pose
from mbp_cli.geometry.solver import SAMPLE_SIZE
from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.features import network_inputs, sampling_quality
from mbp_cli.robust.ransac import RansacOptions, ransac_essential
from mbp_cli.robust.samplers import gumbel_topk_st
from mbp_cli.training.losses import eigen_free_loss, epipolar_loss, expected_loss, pose_loss, soft_inlier_score
from mbp_cli.training.targets import bce_loss, gt_inlier_labels


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms of the training loss (0 switches a term off)."""

    epipolar: float = 1.0
    pose: float = 0.0
    classification: float = 0.1
    eigen_free: float = 0.0


@dataclass(frozen=True)
class EndToEndConfig:
    """The recipe of one training step (saved with every run).

    Attributes:
        hypotheses: minimal samples per pair (H).
        tau: relaxation temperature of the straight-through Gumbel weights.
        backprop: gradient through the solver, ``ift``, ``ddn`` or ``autograd``.
        threshold_px: inlier threshold (pixels) of the ground-truth labels, the epipolar-loss clamp and the
            differentiable score.
        expected: average the hypothesis losses in expectation under ``softmax(alpha * score)`` (DSAC) instead of
            uniformly.
        alpha: inverse temperature of that selection, per unit of soft inlier count.
        max_points: correspondences per pair at most (a random subset each time a pair is drawn).
        self_supervised: no ground truth; pseudo-poses from the estimator (see the module docstring).
        losses: the weights of the loss terms.
    """

    hypotheses: int = 128
    tau: float = 1.0
    backprop: str = "ift"
    threshold_px: float = 1.0
    expected: bool = False
    alpha: float = 0.1
    max_points: int = 2000
    self_supervised: bool = False
    losses: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.backprop not in BACKPROP_MODES:
            raise ValueError(f"unknown backprop mode {self.backprop!r}; choose one of {', '.join(BACKPROP_MODES)}")
        if self.hypotheses < 1 or self.max_points < 8 or not self.tau > 0 or not self.threshold_px > 0:
            raise ValueError("need hypotheses >= 1, max_points >= 8, tau > 0 and threshold_px > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> EndToEndConfig:
        d = dict(d)
        d["losses"] = LossWeights(**d.get("losses", {}))
        return EndToEndConfig(**d)


@dataclass
class Batch:
    """A padded batch of pairs (B pairs, at most M correspondences each).

    Attributes:
        inputs: (B, C, M) float32 network inputs; mask: (B, M) bool real correspondences.
        x0, x1: (B, M, 2) float64 normalized points (zeros at padding).
        R, t: (B, 3, 3), (B, 3) ground truth cam1_from_cam0 (pseudo ground truth when self-supervised).
        focal: (B,) mean focal length in pixels; labels: (B, M) bool ground-truth inliers.
    """

    inputs: torch.Tensor
    mask: torch.Tensor
    x0: torch.Tensor
    x1: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    focal: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def make_batch(
    pairs: Sequence[PairMatches], network: NetworkConfig, config: EndToEndConfig, generator: torch.Generator
) -> Batch:
    """Collate pairs, each restricted to a random subset of at most ``config.max_points`` correspondences."""
    chosen = []
    for p in pairs:
        n = len(p)
        keep = torch.randperm(n, generator=generator)[: config.max_points] if n > config.max_points else None
        chosen.append(p if keep is None else p.subset(keep.numpy()))
    B, M = len(chosen), max(len(p) for p in chosen)
    inputs = torch.zeros(B, network.in_channels, M)
    mask = torch.zeros(B, M, dtype=torch.bool)
    x0 = torch.zeros(B, M, 2, dtype=torch.float64)
    x1 = torch.zeros(B, M, 2, dtype=torch.float64)
    labels = torch.zeros(B, M, dtype=torch.bool)
    for b, p in enumerate(chosen):
        n = len(p)
        p0, p1 = torch.from_numpy(p.x0), torch.from_numpy(p.x1)
        inputs[b, :, :n] = network_inputs(p0, p1, {k: torch.from_numpy(v) for k, v in p.side.items()}, network)
        mask[b, :n] = True
        x0[b, :n], x1[b, :n] = p0, p1
        labels[b, :n] = gt_inlier_labels(
            torch.from_numpy(p.R), torch.from_numpy(p.t), p0, p1, config.threshold_px / p.focal
        )
    R = torch.stack([torch.from_numpy(p.R) for p in chosen])
    t = torch.stack([torch.from_numpy(p.t) for p in chosen])
    focal = torch.tensor([p.focal for p in chosen], dtype=torch.float64)
    return Batch(inputs, mask, x0, x1, R, t, focal, labels)


Heads = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def pseudo_ground_truth(network: Heads, batch: Batch, config: EndToEndConfig) -> tuple[Batch, torch.Tensor]:
    """Self-supervision: replace the batch's poses by what mbp's estimator finds with the network's scores.

    Args:
        network: ``(inputs, mask) -> (first logits, final logits)``, e.g. ``model.forward_both``.

    Returns:
        The batch with pseudo poses and labels, and (B,) bool: pairs where the estimator found a pose.
    """
    with torch.no_grad():
        logits = network(batch.inputs, batch.mask)[1]
    # Pairs where the estimator finds nothing keep a finite placeholder pose and are masked out of every loss.
    B = batch.R.shape[0]
    R = torch.eye(3, dtype=batch.R.dtype, device=batch.R.device).repeat(B, 1, 1)
    t = torch.tensor([0.0, 0.0, 1.0], dtype=batch.t.dtype, device=batch.t.device).repeat(B, 1)
    found = torch.zeros(B, dtype=torch.bool)
    labels = torch.zeros_like(batch.labels)
    for b in range(batch.R.shape[0]):
        m = batch.mask[b]
        x0, x1 = batch.x0[b][m].cpu(), batch.x1[b][m].cpu()
        threshold = config.threshold_px / float(batch.focal[b])
        options = RansacOptions(threshold_px=config.threshold_px, sampler="gumbel")
        result = ransac_essential(x0, x1, threshold, options, quality=sampling_quality(logits[b][m].cpu(), "gumbel"))
        if result.R is None or result.t is None or result.status != "ok":
            continue
        R[b], t[b], found[b] = result.R.to(R), result.t.to(t), True
        labels[b, : int(m.sum())] = gt_inlier_labels(result.R, result.t, x0, x1, threshold).to(labels.device)
    pseudo = Batch(batch.inputs, batch.mask, batch.x0, batch.x1, R, t, batch.focal, labels)
    return pseudo, found.to(batch.mask.device)


def step_losses(
    network: Heads, batch: Batch, config: EndToEndConfig, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch and its parts (floats, for logs).

    Args:
        network: ``(inputs, mask) -> (first logits, final logits)``: ``model.forward_both`` or its DDP wrapper
            (train or eval mode, as the caller wants).
        batch: from :func:`make_batch` (on the model's device).
        config: the recipe.
        generator: seeded CPU generator of the Gumbel noise.

    Returns:
        (loss, stats): a scalar tensor and ``{"loss", "epipolar", "pose", "classification", "eigen_free",
        "hypotheses_with_root", "pose_error_deg"}``.
    """
    weights = config.losses
    pair_ok = torch.ones(batch.R.shape[0], dtype=torch.bool, device=batch.mask.device)
    if config.self_supervised:
        batch, pair_ok = pseudo_ground_truth(network, batch, config)
    first, final = network(batch.inputs, batch.mask)
    B, M = batch.mask.shape
    H = config.hypotheses
    threshold = config.threshold_px / batch.focal  # (B,) normalized
    E_gt = essential_from_pose(batch.R, batch.t)
    stats: dict[str, float] = {}
    total = final.new_zeros((), dtype=torch.float64)

    needs_solver = weights.epipolar > 0 or weights.pose > 0
    if needs_solver:
        log_probs = F.logsigmoid(final.double()).masked_fill(~batch.mask, float("-inf"))
        index, st = gumbel_topk_st(log_probs, H, SAMPLE_SIZE, config.tau, generator)  # (B, H, 5)
        rows = torch.arange(B, device=index.device)[:, None, None]
        p0 = batch.x0[rows, index] * st[..., None]
        p1 = batch.x1[rows, index] * st[..., None]
        E, valid = five_point_differentiable(p0.reshape(B * H, 5, 2), p1.reshape(B * H, 5, 2), config.backprop)
        E_best, has_root = select_root(E, valid, E_gt.repeat_interleave(H, 0))
        E_best = E_best.view(B, H, 3, 3)
        has_root = has_root.view(B, H) & pair_ok[:, None]
        per_hypothesis = torch.zeros(B, H, dtype=torch.float64, device=E.device)
        if weights.epipolar > 0:
            epi = epipolar_loss(E_best, batch.x0, batch.x1, batch.labels, threshold)
            per_hypothesis = per_hypothesis + weights.epipolar * epi
            stats["epipolar"] = float(epi.detach()[has_root].mean()) if bool(has_root.any()) else float("nan")
        with torch.no_grad():
            pose_deg = pose_loss(E_best.detach(), batch.R[:, None], batch.t[:, None])
        if weights.pose > 0:
            per_hypothesis = (
                per_hypothesis + weights.pose * pose_loss(E_best, batch.R[:, None], batch.t[:, None]) / 180.0
            )
        stats["pose_error_deg"] = float(pose_deg[has_root].median()) if bool(has_root.any()) else float("nan")
        if config.expected:
            scores = soft_inlier_score(E_best, batch.x0, batch.x1, batch.mask, threshold)
            pair_losses = expected_loss(per_hypothesis, scores, has_root, config.alpha)
        else:
            count = has_root.sum(-1)
            pair_losses = torch.where(has_root, per_hypothesis, 0.0).sum(-1) / count.clamp_min(1)
        total = total + pair_losses.sum() / pair_ok.sum().clamp_min(1)
        stats["hypotheses_with_root"] = float(has_root.float().mean())
    if weights.classification > 0:
        labels = batch.labels & pair_ok[:, None]
        mask = batch.mask & pair_ok[:, None]
        cls = bce_loss(final, labels, mask) + bce_loss(first, labels, mask)
        total = total + weights.classification * cls.double()
        stats["classification"] = float(cls.detach())
    if weights.eigen_free > 0:
        w = torch.sigmoid(final.double()).masked_fill(~batch.mask, 0.0)
        ef = eigen_free_loss(w, batch.x0, batch.x1, E_gt)
        total = total + weights.eigen_free * (ef * pair_ok).sum() / pair_ok.sum().clamp_min(1)
        stats["eigen_free"] = float((ef.detach() * pair_ok).sum() / pair_ok.sum().clamp_min(1))
    stats["loss"] = float(total.detach())
    return total, stats


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from several integers (e.g. run seed, step, rank), the same on every run."""
    return torch.Generator().manual_seed(random.Random(repr(parts)).getrandbits(63))
