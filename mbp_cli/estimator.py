"""Public solver surface, in PoseLib's style: pixels and cameras in, a relative pose and an info dict out.

Convention: ``x1 = R x0 + t`` (cam1_from_cam0), ``||t|| = 1``, ``E = [t]x R``, ``F = K1^-T E K0^-1``.
Keypoints are pixel coordinates of the stored images with the centre of the top-left pixel at (0, 0); the
cameras undistort them. The pixel threshold is converted with the mean focal ``(fx0 + fy0 + fx1 + fy1) / 4``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mbp_cli import CONVENTION
from mbp_cli.io.calibration import Camera
from mbp_cli.matching.types import keypoint_scales
from mbp_cli.robust.ransac import RansacOptions, ransac_essential

if TYPE_CHECKING:
    from mbp_cli.network.consensus import ConsensusNetwork


@dataclass(frozen=True)
class RelativePose:
    """A relative pose cam1_from_cam0: ``x1 = R x0 + t`` with ``||t|| = 1``.

    Attributes:
        R: (3, 3) float64 rotation. t: (3,) float64 unit translation.
    """

    R: np.ndarray
    t: np.ndarray

    @property
    def E(self) -> np.ndarray:
        """``[t]x R`` (3, 3), unit Frobenius norm since ``||t|| = 1`` and R is orthogonal (up to sqrt 2)."""
        tx = np.array([[0.0, -self.t[2], self.t[1]], [self.t[2], 0.0, -self.t[0]], [-self.t[1], self.t[0], 0.0]])
        return tx @ self.R

    def F(self, camera0: Camera, camera1: Camera) -> np.ndarray:
        """Fundamental matrix ``K1^-T E K0^-1`` for pixel coordinates (pixel centre at 0), scaled to unit norm.

        Only exact for undistorted cameras; with lens distortion, apply the epipolar constraint to the
        normalized coordinates instead.
        """
        F = np.linalg.inv(camera1.K).T @ self.E @ np.linalg.inv(camera0.K)
        return F / np.linalg.norm(F)


def mean_focal(camera0: Camera, camera1: Camera) -> float:
    """``(fx0 + fy0 + fx1 + fy1) / 4``: converts pixel thresholds to normalized units and back."""
    return (camera0.fx + camera0.fy + camera1.fx + camera1.fy) / 4.0


def _as_tensor(points: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(points, dtype=np.float64) if not isinstance(points, torch.Tensor) else points)
    t = t.double()
    if t.dim() != 2 or t.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {tuple(t.shape)}")
    return t


def estimate_relative_pose(
    points0: Any,
    points1: Any,
    camera0: Camera,
    camera1: Camera,
    options: RansacOptions = RansacOptions(),
    quality: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    network: ConsensusNetwork | None = None,
    side: Mapping[str, Any] | None = None,
) -> tuple[RelativePose | None, dict[str, Any]]:
    """Robustly estimate the relative pose of two calibrated views from pixel correspondences.

    Args:
        points0: (N, 2) pixel coordinates in image 0 (array-like or tensor), distorted as stored.
        points1: (N, 2) pixel coordinates in image 1.
        camera0, camera1: calibrations of image 0 and image 1 (with lens distortion, if any).
        options: robust-estimation options; ``options.threshold_px`` is in pixels.
        quality: optional (N,) per-match quality (higher is better) for PROSAC, e.g. ``-ratio``; replaced by the
            network's scores when a ``network`` is given.
        device: where the estimator's tensors live (``cpu`` or ``cuda``).
        network: the consensus network (:func:`mbp_cli.pipeline.create_network`). It scores the
            undistorted, normalized correspondences with their ``side`` information, and its scores drive the
            sampler: Gumbel top-k on ``logsigmoid(logits)`` (``options.sampler == "gumbel"``) or PROSAC ordered
            by the logits (``"prosac"``); ``uniform`` ignores them. Its time is ``timings_ms["network"]``.
            A model with a fit head (or its probabilities, ``options.probability_weights``) also weighs the final
            LM's correspondences (:func:`fit_weighting`).
        side: the matcher's per-match side information (:attr:`Matches.side`): the network's inputs (needed with a
            network) and, from SIFT, the keypoint scales that set each match's noise in the final fit
            (``options.scale_noise``).

    Returns:
        ``(pose, info)``: ``pose`` is None when no model was found. ``info`` holds ``status`` (``ok``,
        ``no_model``, ``degenerate``), ``inliers`` ((N,) bool numpy), ``num_inliers``, ``inlier_ratio``,
        ``iterations``, ``models``, ``lo_runs``, ``score``, ``median_parallax_deg``, ``sigma_deg`` (the final fit's
        predicted root-mean-square rotation and translation-direction errors in degrees,
        :attr:`~mbp_cli.robust.ransac.EssentialResult.sigma_deg`, or None), ``threshold_normalized``, ``timings_ms``
        and ``convention``.
    """
    p0 = _as_tensor(points0, "points0")
    p1 = _as_tensor(points1, "points1")
    if p0.shape != p1.shape:
        raise ValueError(f"points0 and points1 differ in shape: {tuple(p0.shape)} vs {tuple(p1.shape)}")
    x0 = camera0.pixels_to_normalized(p0).to(device)
    x1 = camera1.pixels_to_normalized(p1).to(device)
    threshold = options.threshold_px / mean_focal(camera0, camera1)
    network_ms = None
    refinement_weights = None
    if network is not None and options.sampler != "uniform":
        from mbp_cli.network.features import fit_weighting, network_inputs, sampling_quality, score_correspondences

        start = time.perf_counter()
        side_t = {k: torch.as_tensor(v) for k, v in (side or {}).items()}
        inputs = network_inputs(x0, x1, side_t, network.config)
        logits = score_correspondences(network, inputs, seed=options.seed)
        quality = sampling_quality(logits, options.sampler)
        refinement_weights = fit_weighting(network, inputs, logits, options.probability_weights)
        network_ms = (time.perf_counter() - start) * 1e3
    elif options.sampler == "gumbel":
        raise ValueError("the gumbel sampler draws by the network's scores; give a network or choose prosac/uniform")
    result = ransac_essential(
        x0,
        x1,
        threshold,
        options,
        quality=quality,
        refinement_weights=refinement_weights,
        keypoint_scales=None if side is None else keypoint_scales(side),  # moved to the points' device there
    )
    timings = result.timings_ms if network_ms is None else {"network": network_ms, **result.timings_ms}
    n = int(p0.shape[0])
    num_inliers = int(result.inliers.sum())
    info: dict[str, Any] = {
        "status": result.status,
        "inliers": result.inliers.cpu().numpy(),
        "num_inliers": num_inliers,
        "inlier_ratio": num_inliers / n if n else 0.0,
        "iterations": result.iterations,
        "models": result.models,
        "lo_runs": result.lo_runs,
        "score": result.score,
        "median_parallax_deg": result.median_parallax_deg,
        "sigma_deg": result.sigma_deg,
        "threshold_normalized": threshold,
        "timings_ms": timings,
        "convention": CONVENTION,
    }
    if result.R is None or result.t is None:
        return None, info
    return RelativePose(result.R.cpu().numpy(), result.t.cpu().numpy()), info
