"""Minimal-sample generators for RANSAC: uniform and PROSAC (ordered by a per-match quality).

Every sampler draws batches of distinct indices ``(S, 5)`` from a seeded ``torch.Generator`` so that a run is
deterministic for a given seed. The learned Gumbel sampler plugs into the same interface.
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

    def sample(self, num_samples: int) -> torch.Tensor:
        steps = [self._advance() for _ in range(num_samples)]
        sizes = torch.tensor([n - 1 if forced else n for n, forced in steps])
        forced = torch.tensor([forced for _, forced in steps])
        free = _distinct_from_prefix(sizes, SAMPLE_SIZE, self.num_points, self.generator)
        # Where the n-th point is forced, it replaces the last of the five free draws (which came from the
        # first n - 1, so the sample stays distinct).
        free[:, -1] = torch.where(forced, sizes, free[:, -1])
        return self.order[free]
