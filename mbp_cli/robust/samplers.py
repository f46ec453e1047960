"""Minimal-sample generators for RANSAC: uniform, PROSAC (ordered by a per-match quality) and the learned
Gumbel top-k sampler (method.md §3), plus its differentiable straight-through form for training.

Every sampler draws batches of distinct indices ``(S, 5)`` from a seeded ``torch.Generator`` so that a run is
deterministic for a given seed, and says which fraction of its draws land on a given inlier set, which the
adaptive termination of RANSAC uses.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from mbp_cli.geometry.solver import SAMPLE_SIZE


class Sampler(Protocol):
    """Draws minimal samples of distinct correspondence indices."""

    def sample(self, num_samples: int) -> torch.Tensor:
        """(num_samples, 5) int64 indices, distinct within each row."""
        ...

    def inlier_ratio(self, inliers: torch.Tensor) -> float:
        """Probability that one draw is an inlier, for the (N,) bool ``inliers`` of the best model so far."""
        ...


def _distinct_from_prefix(
    prefix_sizes: torch.Tensor, k: int, num_points: int, generator: torch.Generator
) -> torch.Tensor:
    """For each row b, ``k`` distinct indices drawn uniformly from ``range(prefix_sizes[b])``."""
    S = prefix_sizes.shape[0]
    keys = torch.rand(S, num_points, generator=generator)
    outside = torch.arange(num_points).unsqueeze(0) >= prefix_sizes.unsqueeze(1)
    keys = keys.masked_fill(outside, -1.0)
    return keys.topk(k, dim=1).indices


class UniformSampler:
    """Uniform minimal samples over ``num_points`` correspondences."""

    def __init__(self, num_points: int, generator: torch.Generator) -> None:
        self.num_points = num_points
        self.generator = generator

    def sample(self, num_samples: int) -> torch.Tensor:
        keys = torch.rand(num_samples, self.num_points, generator=self.generator)
        return keys.topk(SAMPLE_SIZE, dim=1).indices

    def inlier_ratio(self, inliers: torch.Tensor) -> float:
        return float(inliers.double().mean())


class ProsacSampler:
    """PROSAC (Chum & Matas 2005): samples grow from the best-ranked correspondences to all of them.

    The t-th sample is drawn from the ``n`` best correspondences, where ``n`` grows on the schedule of the
    growth function ``T'_n``; while the schedule says so, the ``n``-th correspondence is forced into the sample
    and the other four come from the ``n - 1`` better ones. After ``max_growth_samples`` samples PROSAC
    equals uniform sampling.

    Args:
        quality: (N,) per-correspondence quality, higher is better (e.g. ``-ratio`` or a network score).
        generator: seeded generator.
        max_growth_samples: ``T_N`` of the paper, the number of samples after which all points are used.
    """

    def __init__(self, quality: torch.Tensor, generator: torch.Generator, max_growth_samples: int = 200_000) -> None:
        N = int(quality.shape[0])
        m = SAMPLE_SIZE
        if N < m:
            raise ValueError(f"PROSAC needs at least {m} correspondences, got {N}")
        self.order = torch.argsort(quality.detach().cpu(), descending=True, stable=True)
        self.num_points = N
        self.generator = generator
        # T_n for n = m: the expected number of samples drawn only from the m best among T_N uniform samples.
        self._T_n = max_growth_samples * math.prod((m - i) / (N - i) for i in range(m))
        self._T_n_prime = 1
        self._n = m
        self._t = 0

    def _advance(self) -> tuple[int, bool]:
        """Step the schedule by one sample; return (prefix size n, whether the n-th point is forced)."""
        m = SAMPLE_SIZE
        self._t += 1
        if self._t > self._T_n_prime and self._n < self.num_points:
            T_next = self._T_n * (self._n + 1) / (self._n + 1 - m)
            self._T_n_prime += math.ceil(T_next - self._T_n)
            self._T_n = T_next
            self._n += 1
        forced = self._T_n_prime >= self._t and self._n > m
        return self._n, forced

    def inlier_ratio(self, inliers: torch.Tensor) -> float:
        """The plain inlier fraction: PROSAC ends as uniform sampling, so this is the conservative figure."""
        return float(inliers.double().mean())

    def sample(self, num_samples: int) -> torch.Tensor:
        steps = [self._advance() for _ in range(num_samples)]
        sizes = torch.tensor([n - 1 if forced else n for n, forced in steps])
        forced = torch.tensor([forced for _, forced in steps])
        free = _distinct_from_prefix(sizes, SAMPLE_SIZE, self.num_points, self.generator)
        # Where the n-th point is forced, it replaces the last of the five free draws (which came from the
        # first n - 1, so the sample stays distinct).
        free[:, -1] = torch.where(forced, sizes, free[:, -1])
        return self.order[free]


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None, **kwargs: object) -> torch.Tensor:
    """I.i.d. standard Gumbel samples ``-log(-log U)``, ``U`` uniform in (0, 1), drawn on the CPU generator."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    tiny = torch.finfo(torch.float64).tiny
    return (-torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-16)))).to(**kwargs)  # type: ignore[arg-type]


class GumbelSampler:
    """Minimal samples drawn by Gumbel top-k on per-correspondence log-probabilities (method.md §3).

    ``top-k(log_probs / temperature + g)`` with ``g ~ Gumbel(0, 1)`` i.i.d. is a draw of ``k`` distinct points
    without replacement, each step picking a remaining point with probability proportional to
    ``p_i^(1 / temperature)`` (Plackett–Luce). ``temperature`` 1 samples by the probabilities themselves, larger
    values flatten them towards uniform sampling, smaller ones sharpen them towards always the same top points.

    Args:
        log_probs: (N,) log sampling weights, e.g. ``logsigmoid`` of the consensus network's logits (log inlier
            probabilities). ``-inf`` marks a point that is never drawn (unless fewer than 5 others remain).
        generator: seeded CPU generator.
        temperature: see above; positive.
    """

    def __init__(self, log_probs: torch.Tensor, generator: torch.Generator, temperature: float = 1.0) -> None:
        if not temperature > 0:
            raise ValueError(f"the Gumbel sampler's temperature must be positive, got {temperature}")
        if log_probs.dim() != 1 or log_probs.shape[0] < SAMPLE_SIZE:
            raise ValueError(f"need (N,) log-probabilities with N >= {SAMPLE_SIZE}, got {tuple(log_probs.shape)}")
        keys = log_probs.detach().cpu().double() / temperature
        self.num_points = int(log_probs.shape[0])
        self.generator = generator
        # Sampling weights normalised to sum 1, for inlier_ratio.
        self._weights = torch.softmax(keys, 0)
        # 1 / w_i with w = p^(1/T) / max: the draw below; infinite for a weight of 0.
        self._inverse_weights = torch.exp(keys.max() - keys).float()

    def sample(self, num_samples: int) -> torch.Tensor:
        # The same draw as top-k(log w + Gumbel noise), written as the exponential race of Efraimidis & Spirakis:
        # ``log w_i - log E_i`` with ``E_i = -log U_i`` ranks like ``-E_i / w_i = log(U_i) / w_i``. One logarithm
        # per key instead of two, in float32 (ties have probability ~2^-24 and only reorder equal keys).
        keys = torch.rand(num_samples, self.num_points, generator=self.generator).log_().mul_(self._inverse_weights)
        return keys.topk(SAMPLE_SIZE, dim=1).indices

    def inlier_ratio(self, inliers: torch.Tensor) -> float:
        """The sampling mass on the inliers, ``sum_inliers w_i / sum w_i`` with ``w = p^(1 / temperature)``.

        The probability of an all-inlier minimal sample is about this to the 5th power (exact for draws with
        replacement; slightly less without, negligible when no single point carries much of the mass).
        """
        return float(self._weights[inliers.cpu()].sum())


def gumbel_topk_st(
    logits: torch.Tensor,
    num_samples: int,
    k: int = SAMPLE_SIZE,
    tau: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable minimal samples: Gumbel top-k with straight-through weights (method.md §3, for training).

    For each of ``num_samples`` hypotheses, ``z = (logits + g) / tau`` with ``g ~ Gumbel(0, 1)`` i.i.d. over the N
    correspondences; the sample is ``top-k(z)`` (distinct points), the soft weights are ``softmax(z)`` and the
    straight-through weights ``y = y_hard - sg(y_soft) + y_soft`` are exactly 1 on the drawn points in the forward
    pass while their gradient is that of ``y_soft``. Multiplying the drawn coordinates by ``y`` passes gradients
    of the downstream loss to the logits.

    ``tau`` is the relaxation temperature: it shapes the soft weights and hence the gradient, never which points
    are drawn (top-k is invariant to a positive scale). Feed **log-probabilities** (e.g. ``logsigmoid`` or
    ``log_softmax`` of the network's logits), not probabilities: the Gumbel noise has standard deviation 1.28
    and would swamp values of order 1/N.

    Args:
        logits: (..., N) log sampling weights; ``-inf`` marks padded correspondences (never drawn while at least
            ``k`` real ones remain).
        num_samples: hypotheses H per item.
        k: points per sample.
        tau: relaxation temperature, positive.
        generator: seeded CPU generator (the noise is drawn on the CPU and moved to the logits' device).

    Returns:
        ``(indices, weights)``: (..., H, k) int64 indices into the last axis of ``logits`` and (..., H, k)
        straight-through weights (value 1) carrying gradients to ``logits``.
    """
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    shape = (*logits.shape[:-1], num_samples, logits.shape[-1])
    g = gumbel_noise(shape, generator, dtype=logits.dtype, device=logits.device)
    z = (logits.unsqueeze(-2) + g) / tau
    indices = z.detach().topk(k, dim=-1).indices
    soft = torch.softmax(z, dim=-1).gather(-1, indices)
    weights = soft - soft.detach() + 1.0
    return indices, weights
