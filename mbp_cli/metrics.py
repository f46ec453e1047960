"""Pose-evaluation metrics (method.md §8): angular errors, exact AUC and the 5-degree-bin mAA-style figure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FAILURE_ERROR_DEG = 180.0


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle of ``R_est R_gt^T`` in degrees."""
    cos = (np.trace(R_est @ R_gt.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def translation_error_deg(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    """Unsigned angle between translation directions, ``min(theta, 180 - theta)``, in degrees."""
    cos = float(np.dot(t_est, t_gt) / max(np.linalg.norm(t_est) * np.linalg.norm(t_gt), 1e-300))
    theta = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return min(theta, 180.0 - theta)


def pose_error_deg(
    R_est: np.ndarray | None, t_est: np.ndarray | None, R_gt: np.ndarray, t_gt: np.ndarray
) -> tuple[float, float]:
    """(rotation error, translation error) in degrees; a missing pose counts as 180 for both."""
    if R_est is None or t_est is None:
        return FAILURE_ERROR_DEG, FAILURE_ERROR_DEG
    return rotation_error_deg(R_est, R_gt), translation_error_deg(t_est, t_gt)


def pose_auc(errors: Sequence[float] | np.ndarray, thresholds: Sequence[float] = (5.0, 10.0, 20.0)) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, normalised to [0, 1].

    Exactly SuperGlue/LoFTR/glue-factory's ``pose_auc``, so our numbers compare with published ones: the
    curve through (0, 0) and (e_i, i/n) for the sorted errors, held flat from the last error below the
    threshold up to it, integrated with the trapezoid rule.
    """
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    n = len(errors)
    if n == 0:
        return [0.0 for _ in thresholds]
    recall = np.r_[0.0, np.arange(1, n + 1) / n]
    errors = np.r_[0.0, errors]
    aucs = []
    for t in thresholds:
        last = int(np.searchsorted(errors, t))
        e = np.r_[errors[:last], t]
        r = np.r_[recall[:last], recall[last - 1]]
        aucs.append(float(np.sum((e[1:] - e[:-1]) * (r[1:] + r[:-1]) / 2.0) / t))
    return aucs


def paired_auc_difference(
    errors_a: Sequence[Sequence[float]] | np.ndarray,
    errors_b: Sequence[Sequence[float]] | np.ndarray,
    thresholds: Sequence[float] = (5.0, 10.0, 20.0),
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> list[tuple[float, float, float]]:
    """AUC of method a minus AUC of method b on the same pairs, with a paired bootstrap confidence interval.

    Each method may have several runs of the same pairs (e.g. RANSAC seeds): its AUC is the mean of its runs' AUCs.
    The pairs are resampled with replacement, the same draw for both methods and for every run, so the interval
    covers the choice of pairs (and, through the runs, part of the seed spread); it does not cover other scenes.

    Args:
        errors_a: (runs_a, P) pose errors in degrees of method a on P pairs (a 1-D sequence is one run).
        errors_b: (runs_b, P) errors of method b on the same P pairs, in the same order.
        thresholds: AUC thresholds in degrees.
        resamples: bootstrap draws.
        level: two-sided coverage of the interval.
        seed: seed of the draws; equal seeds give equal intervals.

    Returns:
        One ``(difference, low, high)`` per threshold, in AUC units ([0, 1] scale, as :func:`pose_auc`).
    """
    a = np.atleast_2d(np.asarray(errors_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(errors_b, dtype=np.float64))
    if a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"need the same non-zero number of pairs for both methods, got {a.shape[1]} and {b.shape[1]}")

    def difference(index: np.ndarray) -> np.ndarray:
        auc_a = np.mean([pose_auc(run[index], thresholds) for run in a], axis=0)
        auc_b = np.mean([pose_auc(run[index], thresholds) for run in b], axis=0)
        return auc_a - auc_b

    pairs = a.shape[1]
    observed = difference(np.arange(pairs))
    rng = np.random.default_rng(seed)
    draws = np.array([difference(rng.integers(0, pairs, pairs)) for _ in range(resamples)])
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(draws, [tail, 100.0 - tail], axis=0)
    return [(float(d), float(lo), float(hi)) for d, lo, hi in zip(observed, low, high, strict=True)]


def binned_map(
    errors: Sequence[float] | np.ndarray, thresholds: Sequence[float] = (5.0, 10.0, 20.0), bin_deg: float = 5.0
) -> list[float]:
    """The mAA-style figure of the ∇-RANSAC papers: mean recall at 5, 10, ... degrees up to each threshold.

    Reads higher than :func:`pose_auc`; report both, labelled.
    """
    errors = np.asarray(errors, dtype=np.float64)
    out = []
    for t in thresholds:
        bins = np.arange(bin_deg, t + 1e-9, bin_deg)
        out.append(float(np.mean([(errors < b).mean() if len(errors) else 0.0 for b in bins])))
    return out
