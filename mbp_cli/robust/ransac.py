"""Batched RANSAC for the essential matrix in torch: sample -> 5-point -> score -> local optimisation -> LM.

The loop draws minimal samples in batches, solves them all at once with the batched 5-point solver, scores
every real root against every correspondence (MAGSAC++ or MSAC), runs local optimisation on each new best
model, stops adaptively once the confidence is reached, and polishes the winner with robust
Levenberg–Marquardt on the essential manifold.

Convention: ``x1 = R x0 + t`` (cam1_from_cam0), ``||t|| = 1``, ``E = [t]x R``, ``x1^T E x0 = 0`` on
normalized coordinates. Thresholds here are in normalized units; :mod:`mbp_cli.estimator` converts pixels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

from mbp_cli.geometry.essential import (
    essential_from_pose,
    homogeneous,
    pose_from_essential,
    sampson_squared,
    triangulated_depths,
)
from mbp_cli.geometry.solver import SAMPLE_SIZE, five_point
from mbp_cli.robust.refine import (
    KeypointNoise,
    RefineOptions,
    keypoint_noise,
    normal_matrix,
    perturb_pose,
    pose_covariance,
    pose_sigma_deg,
    refine_pose,
)
from mbp_cli.robust.samplers import GumbelSampler, ProsacSampler, Sampler, UniformSampler
from mbp_cli.robust.scoring import msac_loss, robust_loss

SAMPLERS = ("prosac", "uniform", "gumbel")
SCORINGS = ("magsac", "msac")
STATUSES = ("ok", "no_model", "degenerate")
# Step lengths (radians) of the basin hops when they are on (``RansacOptions.basin_hops``, ``--basin-hops``).
BASIN_HOPS = (0.05, 0.1, 0.2)
# Inliers that vote for the factorisation of an essential matrix (pose_from_essential's max_voters).
CHEIRALITY_VOTERS = 128
# (N,) bool mask of the correspondences the final LM fits, (M,) their squared residuals in thresholds -> (M,) weights
RefinementWeights = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RansacOptions:
    """Options of the robust estimator (thresholds in pixels; converted with the mean focal length).

    Attributes:
        threshold_px: inlier threshold on the Sampson distance, pixels. Also the MAGSAC++ maximum threshold
            and the robust scale of the refinement. 1 px by validation: 0.75 px gains 0.8 / 1.8 AUC@5 with the
            network on the training scenes at Lowe ratios 0.8 / 0.95 (``settings_threshold_ratio*.md``, mostly
            fewer failures on fox) but loses 0.5 / 0.3 on the held-out validation scenes, which have no failures
            (README, Benchmarks).
        confidence: stop once a better model would have been found with this probability.
        min_iterations / max_iterations: bounds on the number of minimal samples.
        ill_conditioned_iterations: when sampling would stop with a best model whose fit is ill-conditioned (as
            for ``basin_hops``, by ``hop_condition``: a narrow view's valley of near-equal scores, where 128
            samples leave the result to chance), it goes on to this many samples (0: never). 512 by validation:
            held-out AUC@5 +0.43 / +0.17 at Lowe ratios 0.95 / 0.8 (seeds 0-2, dino +1.5 / +0.5), training scenes
            +0.30 at 0.95 (seeds 0-1), for ~12 % more median time (``settings_ill_conditioned_*_ratio*.md``).
        batch_size: minimal samples solved together in one batched 5-point call. Batches of 64 (at least 64
            samples) gained AUC@5 0.8 / 1.3 on the training scenes at Lowe ratios 0.8 / 0.95 (fox: each batch's
            best models are polished, so more batches polish more candidates) but lost 0.8 / 0.6 on the held-out
            ones (dino); 128 samples in batches of 64 kept the held-out AUC at 1.5x the time
            (``settings_min_iterations_lm_ratio*.md``, ``settings_batch_ratio*.md``,
            ``network_sift-kl-w32-small_batch64.md``, ``..._min128_batch64.md``): 128 and 128 stay.
        sampler: ``prosac`` (ordered by the per-match quality: minus the Lowe ratio, or the consensus network's
            logits), ``uniform``, or ``gumbel`` (Gumbel top-k on the quality taken as log-probabilities, e.g.
            ``logsigmoid`` of the network's logits; uniform when no quality is given).
        gumbel_temperature: the Gumbel sampler draws by ``p^(1 / temperature)``: 1 follows the probabilities,
            larger is closer to uniform.
        scoring: ``magsac`` (MAGSAC++) or ``msac``.
        local_optimization: refine each new best model on its inliers (LM with a truncated loss).
        lo_iterations: LM iterations of one local optimisation.
        lo_cost_tol: relative cost change that ends a local optimisation. 1e-4 gives the same AUC@5 on the
            training scenes as 1e-6 (poses within 1e-5 degree) in fewer LM evaluations; the final LM keeps
            ``refine.cost_tol`` = 1e-6, whose loosening to 1e-4 moved some poses by tenths of a degree
            (``settings_tolerances_ratio*.md``).
        lo_candidates / lo_margin: each batch's best ``lo_candidates`` models whose score is below
            ``lo_margin`` times the best score so far are polished by local optimisation.
        final_refinement: robust LM at the end.
        refine_margin: local optimisation and the final LM fit only the correspondences within this many
            thresholds of a model they start from: farther ones weigh nothing under the truncated loss of LO and
            almost nothing under the final LM's Cauchy loss, but cost as much as the others.
        refine: options of the final LM.
        refine_scale: the final LM's robust-loss (Cauchy) scale as a fraction of the threshold. 0.5 weighs the
            matches near the threshold less: +0.11 to +0.23 AUC@5 over 1 on 369 pairs of the training scenes at
            Lowe ratios 0.8 and 0.95 (Gumbel and uniform sampling; ``benchmarks/settings.py``), +0.6 on the
            held-out ones (``benchmarks/final_fit.py``).
        min_parallax_deg: below this median inlier parallax the translation is unobservable (pure rotation
            or no baseline) and the result is flagged ``degenerate``.
        cheirality_scoring: when comparing polished candidates, count correspondences that triangulate behind
            either camera as outliers.
        prosac_growth: samples after which PROSAC has grown to all correspondences (its ``T_N``); smaller
            values fall back to uniform sampling sooner when the best-ranked matches hold a wrong structure.
        preview_points / preview_keep: preemptive scoring: each batch's models are ranked on this many random
            correspondences and only the best ``preview_keep`` are scored on all of them.
        basin_hops / hop_condition: when the final fit is ill-conditioned (the smallest eigenvalue of its normal
            matrix below ``hop_condition`` times the next: a narrow field of view's rotation-translation
            ambiguity), the final LM also starts from the result moved by each of these step lengths (radians)
            both ways along the weakest direction, and the lowest minimum of the final LM's own cost wins (a hop
            only ever lowers the objective the fit minimises). On by default (``BASIN_HOPS``) since issue 6: with
            ill-conditioned sampling, held-out AUC@5 +0.64 / +0.52 at Lowe ratios 0.95 / 0.8 (seeds 0-2; dino +1.9
            / +1.5), the training scenes unchanged (+0.005 / +0.055, seeds 0-1; their wide views rarely trigger it),
            1-5 % more median time (``settings_basin_hops_cost_*_ratio*.md``). Choosing the hop by the MAGSAC++
            score instead, which disagrees with the weighted fit inside the valley, gained +0.23 at 0.95 but lost
            0.43 at 0.8 (``settings_ill_conditioned_hops_heldout_ratio*.md``).
        scale_noise: when the matcher gives keypoint scales (SIFT), the final LM (and basin hops) fit the
            heteroscedastic Sampson distance with each keypoint's localisation noise proportional to its detection
            scale (:func:`mbp_cli.robust.refine.keypoint_noise`) instead of equal noise everywhere. Through the
            whole estimator: +0.56 / +0.52 AUC@5 on the held-out scenes at Lowe ratios 0.95 / 0.8 (seeds 0-2, every
            seed gained), +0.09 / 0.00 on the training scenes (seeds 0-1; fox loses a little), 1-3 % more time
            (``settings_scale_noise*_ratio*.md``, ``final_fit_{heldout,training}_ratio*.md``).
        probability_weights: when a consensus network without a fit head guides the estimate, its inlier
            probabilities ``sigmoid(logit)`` multiply the final LM's robust costs
            (:func:`mbp_cli.network.features.fit_weighting`; read by the callers that run the network, which pass
            the weights as ``refinement_weights``). With ``sift-kl-w32-small``, keypoint noise and the half-threshold
            scale: +0.61 AUC@5 [+0.26, +1.01] at Lowe ratio 0.95 and +0.15 [−0.07, +0.40] at 0.8 leaving one scene
            out (seven folds, 582 pairs, the same folds on and off); on the held-out scenes +0.37 at 0.95 (seeds 0-2,
            every seed) and −0.01 at 0.8; on the training scenes +1.1 / +0.4; no time cost
            (``loso_sift-kl-w32-small_probability_weights*.md``, ``settings_probability_weights_*_ratio*.md``).
            Without keypoint noise and at the full-threshold scale the same weights lost 0.2 (``final_fit_*.md``).
        seed: seed of the sampler's generator; equal seeds give identical results.
    """

    threshold_px: float = 1.0
    confidence: float = 0.9999
    min_iterations: int = 128
    ill_conditioned_iterations: int = 512
    max_iterations: int = 10_000
    batch_size: int = 128
    sampler: str = "uniform"
    scoring: str = "magsac"
    local_optimization: bool = True
    lo_iterations: int = 10
    lo_cost_tol: float = 1e-4
    final_refinement: bool = True
    refine_margin: float = 3.0
    refine: RefineOptions = field(default_factory=RefineOptions)
    refine_scale: float = 0.5
    min_parallax_deg: float = 0.2
    lo_candidates: int = 4
    cheirality_scoring: bool = True
    lo_margin: float = 1.25
    prosac_growth: int = 20_000
    gumbel_temperature: float = 1.0
    preview_points: int = 256
    preview_keep: int = 8
    basin_hops: tuple[float, ...] = BASIN_HOPS
    hop_condition: float = 0.1
    scale_noise: bool = True
    probability_weights: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.threshold_px > 0 and math.isfinite(self.threshold_px)):
            raise ValueError(f"threshold must be a positive number of pixels, got {self.threshold_px}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"unknown scoring {self.scoring!r}; choose one of {', '.join(SCORINGS)}")
        if not (self.gumbel_temperature > 0 and math.isfinite(self.gumbel_temperature)):
            raise ValueError(f"gumbel temperature must be a positive number, got {self.gumbel_temperature}")
        if not 1 <= self.min_iterations <= self.max_iterations:
            raise ValueError("need 1 <= min_iterations <= max_iterations")
        if self.ill_conditioned_iterations < 0:
            raise ValueError(f"ill-conditioned samples must be 0 or more, got {self.ill_conditioned_iterations}")
        if any(not (step > 0 and math.isfinite(step)) for step in self.basin_hops):
            raise ValueError(f"basin hops must be positive step lengths in radians, got {self.basin_hops}")
        if not (self.refine_scale > 0 and math.isfinite(self.refine_scale)):
            raise ValueError(f"refine scale must be a positive fraction of the threshold, got {self.refine_scale}")


@dataclass(frozen=True)
class FitProblem:
    """What the final LM fitted: its correspondences (M, 2) each, robust scale and loss, weights and noise."""

    x0: torch.Tensor
    x1: torch.Tensor
    scale: float
    loss: str
    weights: torch.Tensor | None  # (1, M)
    noise: KeypointNoise | None

    def covariance(self, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(5, 5) covariance of this fit's optimum at the pose R (3, 3), t (3,): :func:`pose_covariance`."""
        return pose_covariance(R[None], t[None], self.x0, self.x1, self.scale, self.loss, self.weights, self.noise)[0]


@dataclass
class EssentialResult:
    """Outcome of :func:`ransac_essential`.

    Attributes:
        status: ``ok``, ``no_model`` (R, t, E are None) or ``degenerate`` (a model, flagged unreliable).
        R: (3, 3) cam1_from_cam0 rotation; t: (3,) unit translation; E: (3, 3) = [t]x R, unit Frobenius norm.
        inliers: (N,) bool, Sampson distance below the threshold.
        score: the best model's robust loss (sum of normalised per-point losses; lower is better).
        iterations: minimal samples drawn; models: real 5-point roots scored; lo_runs: local optimisations.
        timings_ms: milliseconds per stage.
        covariance: (5, 5) covariance of the final fit at the returned pose (:func:`mbp_cli.robust.refine.pose_covariance`,
            the LM's local coordinates: rotation radians, then the translation's tangent plane), measured from the
            fitted correspondences' own residuals; None without a final refinement or a model. Computed on first
            access (about 0.3 ms for 500 fitted matches), so estimation alone does not pay for it.
        sigma_deg: ``(rotation, translation direction)`` root-mean-square errors in degrees that the covariance
            predicts (:func:`mbp_cli.robust.refine.pose_sigma_deg`); they grow along a narrow view's ambiguity. They
            cover the noise of the fitted matches only, not wrong calibration or undetected outliers.
    """

    status: str
    R: torch.Tensor | None
    t: torch.Tensor | None
    E: torch.Tensor | None
    inliers: torch.Tensor
    score: float
    iterations: int
    models: int
    lo_runs: int
    median_parallax_deg: float
    timings_ms: dict[str, float]
    fit: FitProblem | None = field(default=None, repr=False)

    @cached_property
    def covariance(self) -> torch.Tensor | None:
        if self.fit is None or self.R is None or self.t is None:
            return None
        return self.fit.covariance(self.R, self.t)

    @cached_property
    def sigma_deg(self) -> tuple[float, float] | None:
        if self.covariance is None:
            return None
        rotation, translation = pose_sigma_deg(self.covariance[None])[0].tolist()
        return rotation, translation


def required_iterations(inlier_ratio: float, confidence: float, sample_size: int = SAMPLE_SIZE) -> float:
    """Samples needed to draw one all-inlier sample with probability ``confidence``."""
    p_good = inlier_ratio**sample_size
    if p_good <= 0.0:
        return math.inf
    if p_good >= 1.0:
        return 0.0
    return math.log(1.0 - confidence) / math.log1p(-p_good)


def parallax_deg(R: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between the ray of x1 and the rotated ray ``R x0`` for each correspondence (N,)."""
    a = homogeneous(x0) @ R.transpose(0, 1)
    b = homogeneous(x1)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def _score_models(
    E: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    x0_32: torch.Tensor,
    x1_32: torch.Tensor,
    threshold: float,
    options: RansacOptions,
    preview: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score a batch of models, returning the fully scored ones with their squared residuals and losses.

    With many models, each is first scored with the cheap truncated quadratic on a random subset of
    ``preview`` correspondences, and only the ``options.preview_keep`` most promising get the full robust
    score on every correspondence (preemptive scoring, as in Nistér's preemptive RANSAC).
    """
    N = x0.shape[0]
    if E.shape[0] > options.preview_keep and preview < N:
        subset = torch.randperm(N, generator=gen)[:preview].to(x0.device)
        r2_sub = sampson_squared(E.float(), x0_32[subset], x1_32[subset])
        keep = msac_loss(r2_sub, threshold).sum(-1).topk(options.preview_keep, largest=False).indices
        E = E[keep]
    r2 = sampson_squared(E.float(), x0_32, x1_32)
    return E, r2, robust_loss(options.scoring, r2, threshold).sum(-1)


def _pose_scores(
    R: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, threshold: float, scoring: str
) -> torch.Tensor:
    """(H,) robust scores of poses R (H, 3, 3), t (H, 3) on all correspondences."""
    return robust_loss(scoring, sampson_squared(essential_from_pose(R, t), x0, x1), threshold).sum(-1)


def final_fit_set(
    R: torch.Tensor,
    t: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    threshold: float,
    options: RansacOptions,
    keypoint_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, KeypointNoise | None]:
    """The correspondences the final LM fits from the pose R (1, 3, 3), t (1, 3).

    Returns:
        ``near`` (N,) bool, the correspondences within ``options.refine_margin`` thresholds of the pose; their
        (M,) squared Sampson distances in squared thresholds; and their keypoint noise
        (:func:`mbp_cli.robust.refine.keypoint_noise`, with ``options.scale_noise`` and ``keypoint_scales``) or None.
    """
    r2 = sampson_squared(essential_from_pose(R, t), x0, x1)[0] / (threshold * threshold)
    near = r2 < options.refine_margin**2
    noise = None
    if options.scale_noise and keypoint_scales is not None:
        noise = keypoint_noise(*(s.to(x0)[near] for s in keypoint_scales))
    return near, r2[near], noise


def _keeps_consensus(score: float, reference: float) -> bool:
    """The final LM minimises a smooth surrogate: its result (or a hop's) is kept unless it clearly lost consensus."""
    return score <= reference * 1.05 + 1e-9


def _weakest_direction(
    R: torch.Tensor,
    t: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    scale: float,
    options: RansacOptions,
    weights: torch.Tensor | None = None,
    noise: KeypointNoise | None = None,
) -> torch.Tensor | None:
    """The (5,) weakest direction of the robust LM's normal matrix at the pose R (1, 3, 3), t (1, 3) when the fit is
    ill-conditioned (smallest eigenvalue below ``options.hop_condition`` times the next), else None."""
    eigenvalues, eigenvectors = torch.linalg.eigh(
        normal_matrix(R, t, x0, x1, scale, options.refine.loss, weights, noise)[0]
    )
    if float(eigenvalues[0]) < options.hop_condition * float(eigenvalues[1]):
        return eigenvectors[:, 0]
    return None


def _hop_basins(
    R: torch.Tensor,
    t: torch.Tensor,
    score: float,
    x0_fit: torch.Tensor,
    x1_fit: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    weights: torch.Tensor | None,
    noise: KeypointNoise | None,
    threshold: float,
    options: RansacOptions,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Restart the final LM along the weakest direction of an ill-conditioned fit; keep its lowest minimum.

    R (1, 3, 3), t (1, 3) is the final pose with its ``score`` on all correspondences; ``x0_fit``, ``x1_fit``,
    ``weights`` and ``noise`` are what the final LM fitted. The LM runs from each hop; a hop wins if its minimum
    of that same LM objective is below the pose's own cost and it keeps the consensus (the final LM's guard). The
    returned score is the result's on all correspondences. See ``RansacOptions.basin_hops``.
    """
    scale = threshold * options.refine_scale
    weakest = _weakest_direction(R, t, x0_fit, x1_fit, scale, options, weights, noise)
    if weakest is None:
        return R, t, score
    steps = torch.stack([length * sign * weakest for length in options.basin_hops for sign in (1.0, -1.0)])
    R_start, t_start = perturb_pose(R[0], t[0], steps)
    R_hop, t_hop, cost = refine_pose(R_start, t_start, x0_fit, x1_fit, scale, options.refine, weights, noise)
    # The pose's own cost under the same objective (an LM of no iterations evaluates it).
    stay = replace(options.refine, max_iterations=0)
    cost_here = float(refine_pose(R, t, x0_fit, x1_fit, scale, stay, weights, noise)[2][0])
    j = int(cost.argmin())
    if not float(cost[j]) < cost_here * (1.0 - 1e-9):
        return R, t, score
    R_best, t_best = R_hop[j : j + 1], t_hop[j : j + 1]
    score_best = float(_pose_scores(R_best, t_best, x0, x1, threshold, options.scoring)[0])
    if not _keeps_consensus(score_best, score):
        return R, t, score
    return R_best, t_best, score_best


def _make_sampler(
    options: RansacOptions, num_points: int, quality: torch.Tensor | None, gen: torch.Generator
) -> Sampler:
    if options.sampler == "prosac" and quality is not None:
        return ProsacSampler(quality, gen, max_growth_samples=options.prosac_growth)
    if options.sampler == "gumbel" and quality is not None:
        return GumbelSampler(quality, gen, temperature=options.gumbel_temperature)
    return UniformSampler(num_points, gen)


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._start = 0.0

    def __call__(self, stage: str) -> _Timer:
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.ms[self._stage] = self.ms.get(self._stage, 0.0) + (time.perf_counter() - self._start) * 1e3


def ransac_essential(
    x0: torch.Tensor,
    x1: torch.Tensor,
    threshold: float,
    options: RansacOptions = RansacOptions(),
    quality: torch.Tensor | None = None,
    sampler: Sampler | None = None,
    refinement_weights: RefinementWeights | None = None,
    keypoint_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> EssentialResult:
    """Robustly estimate the essential matrix from normalized correspondences.

    Args:
        x0: (N, 2) normalized (undistorted, ``K^-1``-applied) points of image 0, float64.
        x1: (N, 2) normalized points of image 1.
        threshold: inlier threshold on the Sampson distance in normalized units (pixels / focal length).
        options: see :class:`RansacOptions` (its ``threshold_px`` is not used here).
        quality: optional (N,) per-correspondence quality (higher is better): the PROSAC order, or the
            log-probabilities of the Gumbel sampler.
        sampler: optional sampler overriding ``options.sampler`` (e.g. the learned Gumbel sampler).
        refinement_weights: optional weights of the final LM's correspondences (e.g. the consensus network's fit
            head, :func:`mbp_cli.network.features.fit_weighting`): called with the (N,) bool mask of the
            correspondences within the refinement margin of the RANSAC pose and their (M,) squared Sampson
            distances in squared thresholds, returns (M,) non-negative weights multiplying their robust costs.
        keypoint_scales: optional ``(scale0, scale1)``, each (N,), the detection scales of the matched keypoints
            (:func:`mbp_cli.matching.types.keypoint_scales`); with ``options.scale_noise`` they set each
            correspondence's noise in the final LM.

    Returns:
        An :class:`EssentialResult`; ``status == "no_model"`` when fewer than 5 correspondences are given or
        no sample produced a real solution. Deterministic for a given ``options.seed``.
    """
    # Inference only: no autograd bookkeeping on the many small ops of the loop (a measurable share of its time).
    with torch.inference_mode():
        return _ransac(x0, x1, threshold, options, quality, sampler, refinement_weights, keypoint_scales)


def _ransac(
    x0: torch.Tensor,
    x1: torch.Tensor,
    threshold: float,
    options: RansacOptions,
    quality: torch.Tensor | None,
    sampler: Sampler | None,
    refinement_weights: RefinementWeights | None = None,
    keypoint_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> EssentialResult:
    timer = _Timer()
    N = int(x0.shape[0])
    x0 = x0.double()
    x1 = x1.double()
    empty = torch.zeros(N, dtype=torch.bool, device=x0.device)
    if N < SAMPLE_SIZE:
        return EssentialResult("no_model", None, None, None, empty, math.inf, 0, 0, 0, 0.0, timer.ms)
    if keypoint_scales is not None and any(tuple(s.shape) != (N,) for s in keypoint_scales):
        shapes = ", ".join(str(tuple(s.shape)) for s in keypoint_scales)
        raise ValueError(f"keypoint_scales must be two ({N},) tensors, one per correspondence; got {shapes}")

    gen = torch.Generator(device="cpu").manual_seed(options.seed)
    sampler = sampler or _make_sampler(options, N, quality, gen)
    thr2 = threshold * threshold
    # Scoring runs in float32 (ranking needs no more); geometry and refinement stay in float64.
    x0_32, x1_32 = x0.float(), x1.float()
    preview = min(N, options.preview_points)

    best_R: torch.Tensor | None = None
    best_t: torch.Tensor | None = None
    best_score = math.inf
    needed = float(options.max_iterations)
    iterations = models = lo_runs = 0
    floor = options.min_iterations
    while iterations < options.max_iterations:
        remaining = min(options.max_iterations, max(floor, math.ceil(needed))) - iterations
        if remaining <= 0 and floor < options.ill_conditioned_iterations and best_R is not None and best_t is not None:
            # About to stop: an ill-conditioned best model lies in a valley of near-equal scores; sample on.
            floor = options.ill_conditioned_iterations
            near, _, _ = final_fit_set(best_R, best_t, x0, x1, threshold, options)
            scale = threshold * options.refine_scale
            if _weakest_direction(best_R, best_t, x0[near], x1[near], scale, options) is not None:
                continue
        if remaining <= 0:
            break
        batch = min(options.batch_size, max(remaining, 8))
        with timer("sampling"):
            idx = sampler.sample(batch).to(x0.device)
        with timer("solver"):
            E, valid = five_point(x0[idx], x1[idx])
            E = E[valid]
        iterations += batch
        if E.shape[0] == 0:
            continue
        models += E.shape[0]
        with timer("scoring"):
            E, r2, scores = _score_models(E, x0, x1, x0_32, x1_32, threshold, options, preview, gen)
            # Local optimisation is not reserved for a new best: a model of the right basin can score a little
            # worse than a wrong model's optimum before it is polished (seen on real pairs), so the few best
            # models of the batch within a margin of the best score are all polished, batched.
            k = min(options.lo_candidates, int(scores.shape[0]))
            top_scores, top = scores.topk(k, largest=False)
            top = top[top_scores < best_score * options.lo_margin]
        if top.numel() == 0:
            continue
        with timer("local_optimization"):
            inl = r2[top] < thr2
            R, t, _ = pose_from_essential(E[top], x0, x1, weights=inl.double(), max_voters=CHEIRALITY_VOTERS)
            if options.local_optimization:
                lo_runs += int(top.numel())
                lo = RefineOptions(max_iterations=options.lo_iterations, loss="truncated", cost_tol=options.lo_cost_tol)
                near = (r2[top] < thr2 * options.refine_margin**2).any(0)
                R_lo, t_lo, _ = refine_pose(R, t, x0[near], x1[near], threshold, lo)
                R, t = torch.cat([R, R_lo]), torch.cat([t, t_lo])
            E_c = essential_from_pose(R, t)
            r2_c = sampson_squared(E_c.float(), x0_32, x1_32)
            losses = robust_loss(options.scoring, r2_c, threshold)
            if options.cheirality_scoring:
                # A correspondence that fits E but triangulates behind a camera is no inlier of the pose. This
                # separates the true model from rotation-dominated ones whose free translation fits extra points.
                d0, d1 = triangulated_depths(R, t, x0, x1)
                losses = torch.where((d0 > 0) & (d1 > 0), losses, torch.ones_like(losses))
            scores_c = losses.sum(-1)
            j = int(scores_c.argmin())
            score = float(scores_c[j])
        if score >= best_score:
            continue
        best_R, best_t, best_score = R[j : j + 1], t[j : j + 1], score
        best_inliers = r2_c[j] < thr2
        # A guided sampler draws inliers more often than their fraction: it reports its own probability.
        needed = required_iterations(sampler.inlier_ratio(best_inliers), options.confidence)

    if best_R is None or best_t is None:
        return EssentialResult(
            "no_model", None, None, None, empty, math.inf, iterations, models, lo_runs, 0.0, timer.ms
        )

    R, t = best_R, best_t
    if options.final_refinement:
        with timer("refinement"):
            near, r2_near, noise = final_fit_set(R, t, x0, x1, threshold, options, keypoint_scales)
            weights = None if refinement_weights is None else refinement_weights(near, r2_near).to(x0)[None]
            x0_fit, x1_fit = x0[near], x1[near]
            R_ref, t_ref, _ = refine_pose(
                R, t, x0_fit, x1_fit, threshold * options.refine_scale, options.refine, weights, noise
            )
            score_ref = float(_pose_scores(R_ref, t_ref, x0, x1, threshold, options.scoring)[0])
            if _keeps_consensus(score_ref, best_score):
                R, t, best_score = R_ref, t_ref, score_ref
        if options.basin_hops:
            with timer("basin_hopping"):
                R, t, best_score = _hop_basins(
                    R, t, best_score, x0_fit, x1_fit, x0, x1, weights, noise, threshold, options
                )
    with timer("scoring"):
        E = essential_from_pose(R, t)[0]
        E = E / E.norm()
        inliers = sampson_squared(E[None], x0, x1)[0] < thr2
        # Re-check cheirality on the final inliers: refinement keeps the branch, but a sign flip of t is free.
        R_c, t_c, _ = pose_from_essential(E[None], x0[inliers], x1[inliers], max_voters=CHEIRALITY_VOTERS)
        R, t = R_c[0], t_c[0]
        parallax = float(parallax_deg(R, x0[inliers], x1[inliers]).median()) if bool(inliers.any()) else 0.0
    status = "degenerate" if parallax < options.min_parallax_deg or int(inliers.sum()) < 2 * SAMPLE_SIZE else "ok"
    fit = None
    if options.final_refinement:
        fit = FitProblem(x0_fit, x1_fit, threshold * options.refine_scale, options.refine.loss, weights, noise)
    return EssentialResult(
        status,
        R,
        t,
        essential_from_pose(R, t),
        inliers,
        best_score,
        iterations,
        models,
        lo_runs,
        parallax,
        timer.ms,
        fit,
    )
