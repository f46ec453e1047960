import torch

from mbp_cli.geometry.essential import essential_from_pose
from mbp_cli.training.losses import (
    eigen_free_loss,
    epipolar_loss,
    expected_loss,
    pose_from_essential_aligned,
    pose_loss,
)

from synthetic import make_scene


def test_pose_from_essential_recovers_the_pose_for_either_sign_of_E():
    for seed in range(8):
        s = make_scene(num_points=10, seed=seed)
        E = essential_from_pose(s.R, s.t)
        for sign in (1.0, -1.0):
            R, t = pose_from_essential_aligned(sign * 3.0 * E, s.t)
            # E and -E share t up to sign; t is aligned with the reference, and R is the rotation of that branch
            assert torch.allclose(t, s.t, atol=1e-10)
            if sign > 0:
                assert torch.allclose(R, s.R, atol=1e-10)
            else:  # the twisted pair: R rotated by 180 degrees about t
                twisted = (2 * torch.outer(s.t, s.t) - torch.eye(3, dtype=torch.float64)) @ s.R
                assert torch.allclose(R, twisted, atol=1e-10)


def test_pose_loss_is_zero_at_the_truth_and_grows_with_the_error():
    s = make_scene(num_points=10, seed=3)
    E = essential_from_pose(s.R, s.t)
    assert pose_loss(E, s.R, s.t) < 1e-6
    off = make_scene(num_points=10, seed=4)
    assert pose_loss(essential_from_pose(off.R, off.t), s.R, s.t) > 5.0


def test_pose_loss_has_finite_gradients_at_zero_error():
    s = make_scene(num_points=10, seed=5)
    E = essential_from_pose(s.R, s.t).clone().requires_grad_(True)
    pose_loss(E, s.R, s.t).backward()
    assert torch.isfinite(E.grad).all()


def test_epipolar_loss_is_zero_for_the_true_model_on_its_inliers():
    s = make_scene(num_points=50, outlier_ratio=0.3, seed=6)
    E = essential_from_pose(s.R, s.t)[None, None]
    wrong = essential_from_pose(make_scene(seed=7).R, s.t)[None, None]
    clamp = 2.0 / s.focal
    loss = epipolar_loss(torch.cat([E, wrong], 1), s.x0[None], s.x1[None], s.inlier[None], clamp)
    assert loss[0, 0] < 1e-6 and loss[0, 1] > 0.5


def test_expected_loss_weights_hypotheses_by_softmax_of_scores_and_ignores_invalid_ones():
    losses = torch.tensor([[1.0, 2.0, 100.0]], dtype=torch.float64)
    scores = torch.tensor([[0.0, 1.0, 50.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, False]])
    p = torch.softmax(torch.tensor([0.0, 1.0]), 0).double()
    assert torch.allclose(expected_loss(losses, scores, valid, 1.0), (p * losses[0, :2]).sum()[None])
    assert expected_loss(losses, scores, torch.zeros_like(valid), 1.0).item() == 0.0


def test_eigen_free_loss_prefers_weights_on_inliers():
    s = make_scene(num_points=200, outlier_ratio=0.5, seed=8)
    E = essential_from_pose(s.R, s.t)[None]
    on_inliers = s.inlier.double()[None]
    on_outliers = (~s.inlier).double()[None]
    assert eigen_free_loss(on_inliers, s.x0[None], s.x1[None], E) < eigen_free_loss(
        on_outliers, s.x0[None], s.x1[None], E
    )
    # with all weight on exact inliers the data term vanishes and only the regulariser remains
    data_free = eigen_free_loss(on_inliers, s.x0[None], s.x1[None], E, alpha=0.0)
    assert data_free.abs() < 1e-12
