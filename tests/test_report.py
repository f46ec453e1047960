"""The human summary of `mbp estimate` (report.print_summary) on real estimates of synthetic views."""

from __future__ import annotations

import torch
from rich.console import Console

from mbp_cli.estimator import estimate_relative_pose
from mbp_cli.geometry.rotation import so3_exp
from mbp_cli.io.calibration import Camera
from mbp_cli.matching.types import Matches
from mbp_cli.pipeline import EstimateConfig, PairResult
from mbp_cli.report import UNCERTAIN_DEG, print_summary, result_to_dict


def _pair_result(half_width: float, noise_px: float) -> PairResult:
    """Pixel correspondences of points seen within ``half_width`` (normalized) of the axis, estimated by mbp."""
    focal, size = 1000.0, 1000
    g = torch.Generator().manual_seed(0)
    R = so3_exp(torch.tensor([0.01, 0.03, -0.02], dtype=torch.float64))
    t = torch.tensor([1.0, 0.2, 0.1], dtype=torch.float64)
    depth = 8.0 + 4.0 * torch.rand(200, generator=g, dtype=torch.float64)
    xy = (torch.rand(200, 2, generator=g, dtype=torch.float64) - 0.5) * 2 * half_width
    X1 = torch.cat([xy * depth[:, None], depth[:, None]], 1) @ R.T + t
    x1 = X1[:, :2] / X1[:, 2:]
    camera = Camera("PINHOLE", size, size, focal, focal, size / 2, size / 2)
    pixels0 = xy * focal + size / 2
    pixels1 = x1 * focal + size / 2 + noise_px * torch.randn(200, 2, generator=g, dtype=torch.float64)
    pose, info = estimate_relative_pose(pixels0, pixels1, camera, camera)
    return PairResult("a.png", "b.png", camera, camera, Matches(pixels0, pixels1), pose, info, {"estimation": 1.0})


def _summary(result: PairResult) -> str:
    console = Console(record=True, width=200)
    print_summary(result, console)
    return console.export_text()


def test_summary_warns_when_the_matches_leave_the_pose_uncertain():
    wide, narrow = _pair_result(0.4, 0.5), _pair_result(0.02, 0.5)
    assert wide.status == narrow.status == "ok"
    assert max(wide.info["sigma_deg"]) < UNCERTAIN_DEG < max(narrow.info["sigma_deg"])
    assert "predicted error" in _summary(wide) and "uncertain" not in _summary(wide)
    assert "the matches leave the pose uncertain" in _summary(narrow)
    predicted = result_to_dict(narrow, EstimateConfig(network=False))["predicted_error_deg"]
    assert predicted["rotation"] == round(narrow.info["sigma_deg"][0], 4)
    assert predicted["translation"] == round(narrow.info["sigma_deg"][1], 4)
