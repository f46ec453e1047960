"""One interface for mbp and the classical baselines, so that they run on the very same matches.

Every estimator receives the same normalized (undistorted, ``K^-1``-applied) correspondences and a pixel
threshold with the focal length that converts it, and returns a pose in the product's convention
``x1 = R x0 + t``. Baselines that want pixels get a virtual pinhole camera with that focal length and the
principal point at the origin (or, for pymagsac, shifted so that every point has positive coordinates), which is
the same geometry. PoseLib, pycolmap and pymagsac are optional dependencies; a missing one raises
:class:`MissingDependencyError` with the install command.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from mbp_cli.errors import MbpError
from mbp_cli.matching.types import keypoint_scales, match_quality
from mbp_cli.robust.ransac import RansacOptions, ransac_essential

ESTIMATORS = ("mbp", "opencv", "poselib", "pycolmap", "pymagsac")
# A matcher's per-match side information (Matches.side): tensors or arrays by name.
Side = Mapping[str, Any]


class MissingDependencyError(MbpError):
    """An optional baseline's package is not installed."""


@dataclass
class PoseOutcome:
    """Result of one estimator on one pair (``R``/``t`` None when it found no model)."""

    R: np.ndarray | None
    t: np.ndarray | None
    inliers: np.ndarray
    status: str
    time_ms: float


class PoseEstimator(Protocol):
    """Anything that turns normalized correspondences into a relative pose."""

    name: str

    def estimate(
        self, x0: np.ndarray, x1: np.ndarray, focal: float, threshold_px: float, side: Side | None = None
    ) -> PoseOutcome:
        """Estimate from (N, 2) normalized points; ``threshold_px / focal`` is the normalized threshold.

        ``side`` is the matcher's per-match side information (:attr:`mbp_cli.matching.types.Matches.side`, tensors
        or arrays): mbp orders its PROSAC samples by it (:func:`~mbp_cli.matching.types.match_quality`) and fits
        each keypoint's noise by its scale; the baselines take the points alone.
        """
        ...


def _timed(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class MbpEstimator:
    """mbp's own torch RANSAC on its classical path: PROSAC by the matches' quality, MAGSAC++, LO, LM."""

    def __init__(self, options: RansacOptions = RansacOptions(), name: str = "mbp") -> None:
        self.options = options
        self.name = name

    def estimate(
        self, x0: np.ndarray, x1: np.ndarray, focal: float, threshold_px: float, side: Side | None = None
    ) -> PoseOutcome:
        start = time.perf_counter()
        options = replace(self.options, threshold_px=threshold_px)
        q, scales = (None, None) if side is None else (match_quality(side), keypoint_scales(side))
        res = ransac_essential(
            torch.from_numpy(x0), torch.from_numpy(x1), threshold_px / focal, options, quality=q, keypoint_scales=scales
        )
        elapsed = _timed(start)
        if res.R is None or res.t is None:
            return PoseOutcome(None, None, res.inliers.numpy(), res.status, elapsed)
        return PoseOutcome(res.R.numpy(), res.t.numpy(), res.inliers.numpy(), res.status, elapsed)


class OpenCVEstimator:
    """``cv2.findEssentialMat`` (USAC_MAGSAC by default) + ``cv2.recoverPose`` on normalized points."""

    def __init__(self, method: str = "USAC_MAGSAC", confidence: float = 0.9999, max_iters: int = 10_000) -> None:
        import cv2

        self._cv2 = cv2
        self.method = getattr(cv2, method)
        self.name = f"opencv-{method.lower()}"
        self.confidence = confidence
        self.max_iters = max_iters

    def estimate(
        self, x0: np.ndarray, x1: np.ndarray, focal: float, threshold_px: float, side: Side | None = None
    ) -> PoseOutcome:
        cv2 = self._cv2
        start = time.perf_counter()
        eye = np.eye(3)
        E, mask = cv2.findEssentialMat(
            x0,
            x1,
            eye,
            method=self.method,
            prob=self.confidence,
            threshold=threshold_px / focal,
            maxIters=self.max_iters,
        )
        if E is None or E.shape != (3, 3):
            # OpenCV stacks several 3x3 solutions when it cannot decide; take the first like its own recoverPose.
            if E is None or E.shape[0] < 3:
                return PoseOutcome(None, None, np.zeros(len(x0), bool), "no_model", _timed(start))
            E = E[:3]
        _, R, t, mask_pose = cv2.recoverPose(E, x0, x1, eye, mask=mask.copy())
        elapsed = _timed(start)
        return PoseOutcome(R, t.ravel() / np.linalg.norm(t), mask.ravel().astype(bool), "ok", elapsed)


class PoseLibEstimator:
    """PoseLib's ``estimate_relative_pose`` (LO-RANSAC with 5-point, then LM refinement), default options."""

    name = "poselib"

    def __init__(self) -> None:
        try:
            import poselib
        except ImportError as exc:
            raise MissingDependencyError("poselib is not installed: pip install poselib") from exc
        self._poselib = poselib

    def estimate(
        self, x0: np.ndarray, x1: np.ndarray, focal: float, threshold_px: float, side: Side | None = None
    ) -> PoseOutcome:
        camera = {"model": "PINHOLE", "width": 0, "height": 0, "params": [focal, focal, 0.0, 0.0]}
        start = time.perf_counter()
        pose, info = self._poselib.estimate_relative_pose(
            x0 * focal, x1 * focal, camera, camera, {"max_epipolar_error": threshold_px}, {}
        )
        elapsed = _timed(start)
        inliers = np.asarray(info.get("inliers", []), bool)
        if inliers.sum() < 5:
            return PoseOutcome(None, None, np.zeros(len(x0), bool), "no_model", elapsed)
        return PoseOutcome(np.asarray(pose.R), np.asarray(pose.t), inliers, "ok", elapsed)


class PycolmapEstimator:
    """pycolmap's ``estimate_relative_pose`` (COLMAP's LO-RANSAC 5-point + refinement)."""

    name = "pycolmap"

    def __init__(self) -> None:
        try:
            import pycolmap
        except ImportError as exc:
            raise MissingDependencyError("pycolmap is not installed: pip install pycolmap") from exc
        self._pycolmap = pycolmap

    def estimate(
        self, x0: np.ndarray, x1: np.ndarray, focal: float, threshold_px: float, side: Side | None = None
    ) -> PoseOutcome:
        pc = self._pycolmap
        camera = pc.Camera(model="PINHOLE", width=1, height=1, params=[focal, focal, 0.0, 0.0])
        options = pc.RANSACOptions()
        options.max_error = threshold_px
        start = time.perf_counter()
        answer = pc.estimate_relative_pose(camera, x0 * focal, camera, x1 * focal, options)
        elapsed = _timed(start)
        if answer is None:
            return PoseOutcome(None, None, np.zeros(len(x0), bool), "no_model", elapsed)
        pose = answer["cam2_from_cam1"]
        R = np.asarray(pose.rotation.matrix())
        t = np.asarray(pose.translation)
        return PoseOutcome(R, t / np.linalg.norm(t), np.asarray(answer["inlier_mask"], bool), "ok", elapsed)


class PymagsacEstimator:
    """pymagsac's ``findEssentialMatrix`` (Barath's MAGSAC++ with its own 5-point solver and LO), then the
    cheirality test of ``cv2.recoverPose`` on its inliers.

    pymagsac wants pixel coordinates inside an image (its samplers grid the image): the virtual camera's
    principal point moves the points' bounding box to start at one pixel, which changes no geometry. Uniform
    sampling (``sampler=0``): the baselines get no match quality, like PoseLib and pycolmap.
    """

    name = "pymagsac"

    def __init__(self, confidence: float = 0.9999, max_iters: int = 10_000) -> None:
        try:
            import pymagsac
        except ImportError as exc:
            raise MissingDependencyError("pymagsac is not installed: pip install pymagsac") from exc
        import cv2

        self._pymagsac = pymagsac
        self._cv2 = cv2
        self.confidence = confidence
        self.max_iters = max_iters

    def estimate(
        self, x0: np.ndarray, x1: np.ndarray, focal: float, threshold_px: float, side: Side | None = None
    ) -> PoseOutcome:
        start = time.perf_counter()
        p0, p1 = x0 * focal, x1 * focal
        origin = np.minimum(p0.min(0), p1.min(0)) - 1.0
        size = np.maximum(p0.max(0), p1.max(0)) - origin + 1.0
        K = np.array([[focal, 0.0, -origin[0]], [0.0, focal, -origin[1]], [0.0, 0.0, 1.0]])
        correspondences = np.ascontiguousarray(np.concatenate([p0 - origin, p1 - origin], 1), dtype=np.float64)
        E, mask = self._pymagsac.findEssentialMatrix(
            correspondences, K, K, float(size[0]), float(size[1]), float(size[0]), float(size[1]),
            probabilities=[], sampler=0, use_magsac_plus_plus=True, sigma_th=threshold_px,
            conf=self.confidence, max_iters=self.max_iters,
        )  # fmt: skip
        mask = np.asarray(mask, bool).ravel()
        if E is None or np.asarray(E).shape != (3, 3) or mask.sum() < 5:
            return PoseOutcome(None, None, np.zeros(len(x0), bool), "no_model", _timed(start))
        # E is on pymagsac's pixel-to-normalized conversion of the same K: our normalized points.
        _, R, t, _ = self._cv2.recoverPose(np.asarray(E), x0, x1, np.eye(3), mask=mask.astype(np.uint8)[:, None])
        elapsed = _timed(start)
        return PoseOutcome(R, t.ravel() / np.linalg.norm(t), mask, "ok", elapsed)


def create_estimator(name: str, options: RansacOptions = RansacOptions()) -> PoseEstimator:
    """Build an estimator by name: one of :data:`ESTIMATORS`, or ``mbp-msac``."""
    if name == "mbp":
        return MbpEstimator(options)
    if name == "mbp-msac":  # the same estimator scored with MSAC instead of MAGSAC++, for comparisons
        return MbpEstimator(replace(options, scoring="msac"), name=name)
    if name == "opencv":
        return OpenCVEstimator()
    if name == "poselib":
        return PoseLibEstimator()
    if name == "pycolmap":
        return PycolmapEstimator()
    if name == "pymagsac":
        return PymagsacEstimator()
    raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
