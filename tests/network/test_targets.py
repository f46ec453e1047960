"""Ground-truth inlier labels (Sampson distance and cheirality) and the initialisation losses."""

import torch

from mbp_cli.training.targets import bce_loss, gt_inlier_labels, kl_loss, kl_target

from synthetic import make_scene


def test_labels_are_the_scene_inliers():
    scene = make_scene(num_points=300, outlier_ratio=0.4, noise_px=0.3, seed=0)
    labels = gt_inlier_labels(scene.R, scene.t, scene.x0, scene.x1, 2.0 / scene.focal)
    assert torch.equal(labels[scene.inlier], torch.ones(int(scene.inlier.sum()), dtype=torch.bool))
    assert labels[~scene.inlier].double().mean() < 0.05  # a random outlier rarely lies on its epipolar line


def test_points_behind_the_cameras_are_no_inliers():
    """A point behind both cameras satisfies the epipolar constraint exactly but is no inlier of the pose."""
    scene = make_scene(num_points=50, seed=1)
    X1_behind = torch.tensor([0.3, -0.2, -5.0], dtype=torch.float64)  # in camera 1, behind it
    X0 = scene.R.T @ (X1_behind - scene.t)
    assert X0[2] < 0  # and behind camera 0 too, for this pose
    x0 = torch.cat([scene.x0, (X0[:2] / X0[2])[None]])
    x1 = torch.cat([scene.x1, (X1_behind[:2] / X1_behind[2])[None]])
    labels = gt_inlier_labels(scene.R, scene.t, x0, x1, 1.0 / scene.focal)
    assert labels[:-1].all() and not labels[-1]


def test_kl_target_and_loss():
    residuals = torch.tensor([[0.0, 1.0, 4.0, 100.0], [0.0, 0.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    p = kl_target(residuals, 1.0, mask)
    torch.testing.assert_close(p.sum(-1), torch.ones(2))
    assert (p[1, 2:] == 0).all() and p[0, 0] > p[0, 1] > p[0, 2] > p[0, 3]
    logits = torch.log(p.clamp(min=1e-30)) + 5.0  # any offset: softmax is shift invariant
    assert float(kl_loss(logits, p, mask)) < 1e-6
    assert float(kl_loss(torch.zeros(2, 4), p, mask)) > 0.1


def test_bce_ignores_padding():
    logits = torch.tensor([[10.0, -10.0, float("-inf")]], requires_grad=True)
    labels = torch.tensor([[True, False, True]])
    mask = torch.tensor([[True, True, False]])
    loss = bce_loss(logits, labels, mask)
    assert float(loss.detach()) < 1e-3
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 2] == 0
