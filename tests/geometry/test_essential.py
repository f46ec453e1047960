import pytest
import torch

from mbp_cli.geometry.essential import (
    decompose_essential,
    essential_from_pose,
    pose_from_essential,
    rotation_error_deg,
    sampson_squared,
    translation_error_deg,
    triangulated_depths,
)
from mbp_cli.geometry.rotation import rotation_angle, skew, so3_exp

from synthetic import make_scene


def test_skew_is_cross_product():
    v, w = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    assert torch.allclose((skew(v) @ w.unsqueeze(-1)).squeeze(-1), torch.linalg.cross(v, w))


def test_so3_exp_is_rotation_with_its_angle():
    omega = torch.tensor([[0.3, -0.2, 0.1], [1e-9, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    R = so3_exp(omega)
    eye = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.det(R), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(rotation_angle(R), omega.norm(dim=-1), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampson_zero_on_exact_correspondences(dtype):
    scene = make_scene(dtype=dtype)
    E = essential_from_pose(scene.R, scene.t)[None]
    d2 = sampson_squared(E, scene.x0, scene.x1)
    assert d2.shape == (1, 400)
    assert d2.max() < (1e-10 if dtype == torch.float64 else 1e-6)


def test_sampson_matches_first_order_distance():
    # For a small perturbation of x1 along the epipolar line's normal, the Sampson distance equals the
    # geometric distance to first order (the other image exact).
    scene = make_scene(num_points=50)
    E = essential_from_pose(scene.R, scene.t)
    line = (E @ torch.cat([scene.x0, torch.ones(50, 1, dtype=torch.float64)], 1).T).T  # lines in image 1
    normal = line[:, :2] / line[:, :2].norm(dim=-1, keepdim=True)
    eps = 1e-6
    x1 = scene.x1 + eps * normal
    d = sampson_squared(E[None], scene.x0, x1)[0].sqrt()
    # The symmetric Sampson distance spreads the error over both images.
    ratio = d / eps
    scale = line[:, :2].norm(dim=-1) / torch.sqrt(
        line[:, :2].square().sum(-1)
        + (E.T @ torch.cat([x1, torch.ones(50, 1, dtype=torch.float64)], 1).T).T[:, :2].square().sum(-1)
    )
    assert torch.allclose(ratio, scale, rtol=1e-4)


def test_sampson_batched_points_and_degenerate_model():
    scene = make_scene(num_points=20)
    E = essential_from_pose(scene.R, scene.t)[None].expand(3, 3, 3)
    shared = sampson_squared(E, scene.x0, scene.x1)
    per = sampson_squared(E, scene.x0.expand(3, 20, 2), scene.x1.expand(3, 20, 2))
    assert torch.allclose(shared, per)
    zero = sampson_squared(torch.zeros(1, 3, 3, dtype=torch.float64), scene.x0, scene.x1)
    assert torch.isinf(zero).all()


def test_decomposition_contains_true_pose_and_cheirality_picks_it():
    scene = make_scene()
    E = essential_from_pose(scene.R, scene.t)
    for sign in (1.0, -1.0):
        Rs, ts = decompose_essential(sign * E)
        assert torch.allclose(torch.det(Rs), torch.ones(4, dtype=torch.float64))
        R, t, votes = pose_from_essential((sign * E)[None], scene.x0, scene.x1)
        assert rotation_error_deg(R[0], scene.R) < 1e-6
        assert torch.allclose(t[0], scene.t, atol=1e-9)
        assert votes.item() == 400


def test_capped_voters_pick_the_same_pose_and_only_weighted_points_vote():
    """max_voters keeps evenly spread points that have a weight; the pose is the one every point votes for."""
    scene = make_scene()
    E = essential_from_pose(scene.R, scene.t)[None]
    mask = torch.zeros(1, 400, dtype=torch.float64)
    mask[0, ::4] = 1.0
    R, t, votes = pose_from_essential(E, scene.x0, scene.x1, weights=mask, max_voters=50)
    assert rotation_error_deg(R[0], scene.R) < 1e-6
    assert torch.allclose(t[0], scene.t, atol=1e-9)
    assert votes.item() == 50  # 50 voters, every one weighted (an unweighted voter would add nothing)
    R_all, t_all, votes_all = pose_from_essential(E, scene.x0, scene.x1, max_voters=1000)
    assert torch.equal(R_all, R) and torch.equal(t_all, t) and votes_all.item() == 400


def test_triangulated_depths_exact():
    scene = make_scene(num_points=30)
    d0, d1 = triangulated_depths(scene.R, scene.t, scene.x0, scene.x1)
    assert (d0 > 0).all() and (d1 > 0).all()
    X0 = torch.cat([scene.x0, torch.ones(30, 1, dtype=torch.float64)], 1) * d0[:, None]
    X1 = X0 @ scene.R.T + scene.t
    assert torch.allclose(X1[:, :2] / X1[:, 2:], scene.x1, atol=1e-10)
    assert torch.allclose(X1[:, 2], d1, atol=1e-9)


def test_pose_errors():
    R = so3_exp(torch.tensor([0.0, 0.0, torch.pi / 18], dtype=torch.float64))
    assert torch.isclose(
        rotation_error_deg(R, torch.eye(3, dtype=torch.float64)), torch.tensor(10.0, dtype=torch.float64)
    )
    t = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    assert translation_error_deg(-t, t) < 1e-6  # unsigned
    assert torch.isclose(
        translation_error_deg(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), t),
        torch.tensor(45.0, dtype=torch.float64),
    )
