import numpy as np
import pytest
import torch

from mbp_cli.estimator import estimate_relative_pose, mean_focal
from mbp_cli.estimators import ESTIMATORS, create_estimator
from mbp_cli.io.calibration import camera_from_colmap
from mbp_cli.metrics import rotation_error_deg, translation_error_deg
from mbp_cli.robust.ransac import RansacOptions

from synthetic import make_scene


@pytest.fixture(scope="module")
def distorted_pair():
    """A synthetic scene seen through two different distorted cameras, in pixels."""
    scene = make_scene(num_points=400, outlier_ratio=0.3, seed=5)
    cam0 = camera_from_colmap("OPENCV", 1280, 960, [900.0, 905.0, 640.5, 480.5, -0.08, 0.02, 0.001, -0.0005])
    cam1 = camera_from_colmap("SIMPLE_RADIAL", 1280, 960, [1100.0, 620.0, 470.0, 0.05])
    p0 = cam0.normalized_to_pixels(scene.x0)
    p1 = cam1.normalized_to_pixels(scene.x1)
    g = torch.Generator().manual_seed(0)
    p0 = p0 + 0.3 * torch.randn(p0.shape, generator=g, dtype=torch.float64)
    p1 = p1 + 0.3 * torch.randn(p1.shape, generator=g, dtype=torch.float64)
    return scene, cam0, cam1, p0, p1


def test_estimate_relative_pose_from_pixels_with_distortion(distorted_pair):
    scene, cam0, cam1, p0, p1 = distorted_pair
    pose, info = estimate_relative_pose(p0.numpy(), p1.numpy(), cam0, cam1, RansacOptions(threshold_px=1.0))
    assert info["status"] == "ok"
    assert rotation_error_deg(pose.R, scene.R.numpy()) < 0.1
    assert translation_error_deg(pose.t, scene.t.numpy()) < 0.5
    assert np.allclose(pose.t, scene.t.numpy(), atol=0.02)  # sign fixed by cheirality
    assert info["inliers"].shape == (400,)
    inl = info["inliers"]
    assert (inl & scene.inlier.numpy()).sum() / scene.inlier.numpy().sum() > 0.95
    assert info["threshold_normalized"] == pytest.approx(1.0 / mean_focal(cam0, cam1))
    # E = [t]x R: E x0 is orthogonal to t (the epipole of image 1) for any x0
    assert np.allclose(pose.t @ pose.E, 0.0, atol=1e-12)


def test_estimate_relative_pose_rejects_bad_shapes(distorted_pair):
    _, cam0, cam1, p0, p1 = distorted_pair
    with pytest.raises(ValueError, match="shape"):
        estimate_relative_pose(p0[:, :1], p1, cam0, cam1)
    with pytest.raises(ValueError, match="differ"):
        estimate_relative_pose(p0[:10], p1[:11], cam0, cam1)


def test_too_few_points_give_no_model(distorted_pair):
    _, cam0, cam1, p0, p1 = distorted_pair
    pose, info = estimate_relative_pose(p0[:4], p1[:4], cam0, cam1)
    assert pose is None and info["status"] == "no_model"


@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_estimator_recovers_the_same_pose_on_the_same_matches(name):
    scene = make_scene(num_points=300, outlier_ratio=0.3, noise_px=0.5, seed=9)
    estimator = create_estimator(name)
    out = estimator.estimate(scene.x0.numpy(), scene.x1.numpy(), scene.focal, 1.0)
    assert out.status == "ok"
    # OpenCV returns the best minimal-sample model without a final non-linear refinement, and pymagsac's sampler
    # cannot be seeded (40 runs of this scene: rotation errors 0.03-0.25 deg, translation up to 0.83): looser bound.
    tolerance = 0.5 if name in ("opencv", "pymagsac") else 0.2
    assert rotation_error_deg(out.R, scene.R.numpy()) < tolerance
    assert translation_error_deg(out.t, scene.t.numpy()) < 5 * tolerance
    assert out.inliers.shape == (300,) and out.time_ms > 0
