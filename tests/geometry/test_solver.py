import pytest
import torch

from mbp_cli.geometry.essential import essential_from_pose
from mbp_cli.geometry.solver import five_point

from synthetic import make_scene


def _closest_root_error(E: torch.Tensor, valid: torch.Tensor, E_gt: torch.Tensor) -> torch.Tensor:
    E_gt = (E_gt / E_gt.flatten(-2).norm(dim=-1)[..., None, None]).unsqueeze(1)
    err = torch.minimum((E - E_gt).flatten(-2).norm(dim=-1), (E + E_gt).flatten(-2).norm(dim=-1))
    return err.masked_fill(~valid, float("inf")).amin(-1)


def test_five_point_exact_without_noise_batched():
    scenes = [make_scene(num_points=5, seed=s) for s in range(16)]
    x0 = torch.stack([s.x0 for s in scenes])
    x1 = torch.stack([s.x1 for s in scenes])
    E, valid = five_point(x0, x1)
    assert E.shape == (16, 10, 3, 3) and valid.shape == (16, 10)
    assert valid.any(-1).all()
    E_gt = torch.stack([essential_from_pose(s.R, s.t) for s in scenes])
    assert _closest_root_error(E, valid, E_gt).max() < 1e-8
    # every real root satisfies the five epipolar constraints and has unit norm
    X0 = torch.cat([x0, torch.ones(16, 5, 1, dtype=torch.float64)], -1)
    X1 = torch.cat([x1, torch.ones(16, 5, 1, dtype=torch.float64)], -1)
    residual = torch.einsum("bni,bkij,bnj->bkn", X1, E, X0).abs().amax(-1)
    assert residual[valid].max() < 1e-9
    assert torch.allclose(E[valid].flatten(-2).norm(dim=-1), torch.ones(int(valid.sum()), dtype=torch.float64))


def test_five_point_invalid_slots_are_zero_never_nan():
    x = torch.zeros(2, 5, 2, dtype=torch.float64)
    E, valid = five_point(x, x)
    assert not valid.any()
    assert torch.isfinite(E).all() and (E == 0).all()


def test_five_point_rejects_wrong_shape():
    with pytest.raises(ValueError, match="B, 5, 2"):
        five_point(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2))
