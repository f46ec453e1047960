"""The tentative correspondences that every matcher returns and every estimator consumes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Matches:
    """Tentative correspondences between image 0 and image 1.

    Attributes:
        keypoints0: (N, 2) float64 pixel coordinates in image 0 **as stored on disk** (full resolution,
            distorted), OpenCV/kornia convention: the centre of the top-left pixel is (0, 0).
        keypoints1: (N, 2) float64 pixel coordinates in image 1, same convention.
        side: per-match side information, each a (N,) float64 tensor. SIFT matchers give ``ratio``
            (Lowe ratio, 1st/2nd nearest-neighbour descriptor distance, in [0, 1]), ``scale_ratio``
            (``s1 / s0``), ``orientation_diff`` (radians, wrapped to (-pi, pi]) and the keypoint scales ``scale0``
            and ``scale1`` (full-resolution pixels, in the backend's unit); LoFTR gives ``confidence``.
        matcher: name of the matcher and its settings, for reports.
    """

    keypoints0: torch.Tensor
    keypoints1: torch.Tensor
    side: dict[str, torch.Tensor] = field(default_factory=dict)
    matcher: str = ""

    def __len__(self) -> int:
        return int(self.keypoints0.shape[0])

    def subset(self, index: torch.Tensor) -> Matches:
        """The matches selected by a boolean mask or an index tensor."""
        return Matches(
            self.keypoints0[index],
            self.keypoints1[index],
            {k: v[index] for k, v in self.side.items()},
            self.matcher,
        )


def match_quality(side: Mapping[str, Any]) -> torch.Tensor | None:
    """Per-match quality for PROSAC ordering (higher is better) from a matcher's side information (tensors or
    arrays): minus the Lowe ratio (SIFT) or the confidence (LoFTR); None when there is neither."""
    if "ratio" in side:
        return -torch.as_tensor(side["ratio"]).double()
    if "confidence" in side:
        return torch.as_tensor(side["confidence"]).double()
    return None


def keypoint_scales(side: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The detection scales ``(scale0, scale1)`` of the matched keypoints, each (N,) float64, from a matcher's side
    information (tensors or arrays); None when the matcher gives none (LoFTR)."""
    if "scale0" not in side or "scale1" not in side:
        return None
    return torch.as_tensor(side["scale0"]).double(), torch.as_tensor(side["scale1"]).double()
