"""The robust estimator on real pairs that once failed, from the development scenes in shared/."""

import numpy as np
import pytest

from mbp_cli.estimator import estimate_relative_pose
from mbp_cli.io.colmap import read_scene, relative_pose
from mbp_cli.io.images import load_image
from mbp_cli.matching import create_matcher
from mbp_cli.metrics import rotation_error_deg, translation_error_deg

from paths import SCENES

FOX = SCENES / "fox"


@pytest.mark.skipif(not FOX.is_dir(), reason="development scenes not available")
@pytest.mark.parametrize(
    "pair",
    [
        ("0046.jpg", "0049.jpg"),
        ("0019.jpg", "0022.jpg"),
        # Batches of 256 samples picked a rotation-dominated model here for 2 seeds of 8 (90 deg); batches of 128
        # pick the true one for all 8.
        ("0089.jpg", "0094.jpg"),
    ],
)
def test_small_baseline_phone_pair_does_not_pick_a_rotation_dominated_model(pair):
    # On these frames (OPENCV lens distortion, little parallax) a wrong model whose inliers are mostly explained by
    # the rotation alone scores better under MAGSAC++ than the true pose; comparing candidates with the inliers
    # that triangulate behind a camera counted as outliers picks the true one (PoseLib: 0.6, 0.2 and 0.3 deg).
    scene = read_scene(FOX)
    name0, name1 = pair
    matcher = create_matcher("sift")
    matches = matcher(load_image(scene.image_path(name0)), load_image(scene.image_path(name1)))
    pose, info = estimate_relative_pose(
        matches.keypoints0, matches.keypoints1, scene.camera_of(name0), scene.camera_of(name1)
    )
    R_gt, t_gt = relative_pose(scene, name0, name1)
    assert info["status"] == "ok"
    assert rotation_error_deg(pose.R, R_gt) < 2.0
    assert translation_error_deg(pose.t, t_gt / np.linalg.norm(t_gt)) < 2.0
