"""The training augmentation maps a pair to a pair of other cameras: labels, residuals and side info stay right."""

import math
import random

import pytest
import torch

from mbp_cli.geometry.essential import essential_from_pose, sampson_squared
from mbp_cli.network.config import INPUT_CHANNELS, NetworkConfig
from mbp_cli.network.features import network_inputs
from mbp_cli.training import init
from mbp_cli.training.augment import Augmentation, augment_inputs, transform_inputs

from paths import SCENES
from synthetic import make_scene

SIFT = INPUT_CHANNELS["sift"]


def _roll(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _pair(seed: int = 0):
    scene = make_scene(num_points=120, outlier_ratio=0.3, noise_px=1.0, seed=seed)
    g = torch.Generator().manual_seed(seed)
    side = {
        "ratio": torch.rand(120, generator=g, dtype=torch.float64),
        "scale_ratio": torch.exp(0.5 * torch.randn(120, generator=g, dtype=torch.float64)),
        "orientation_diff": (torch.rand(120, generator=g, dtype=torch.float64) * 2 - 1) * math.pi,
    }
    inputs = network_inputs(scene.x0, scene.x1, side, NetworkConfig()).double()
    return scene, side, inputs


@pytest.mark.parametrize(
    ("roll0", "roll1", "swap", "mirror"),
    [(0.3, 0.3, False, False), (-0.2, 1.1, False, False), (0.0, 0.0, True, False), (0.0, 0.0, False, True),
     (2.5, -0.7, True, True)],
)  # fmt: skip
def test_transformed_pair_is_the_pair_of_other_cameras_with_the_same_residuals(roll0, roll1, swap, mirror):
    scene, side, inputs = _pair()
    E = essential_from_pose(scene.R[None], scene.t[None])[0]
    out = transform_inputs(inputs, SIFT, roll0, roll1, swap, mirror)
    # The essential matrix those cameras have: swapped (E^T), mirrored (D E D), rolled (Rz(b) E Rz(a)^T).
    D = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    E_new = E.T if swap else E
    if mirror:
        E_new = D @ E_new @ D
    E_new = _roll(roll1) @ E_new @ _roll(roll0).T
    singular = torch.linalg.svdvals(E_new)
    assert float(singular[2]) < 1e-12 and math.isclose(float(singular[0]), float(singular[1]), rel_tol=1e-9)
    before = sampson_squared(E[None], inputs[:2].T, inputs[2:4].T)[0]  # the float32 inputs, as the network sees them
    after = sampson_squared(E_new[None], out[:2].T, out[2:4].T)[0]
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-18)
    # Side information: the orientation difference o1 - o0 grows by the rolls' difference and changes sign with a
    # swap or a mirror; the log scale ratio changes sign with a swap only; the Lowe ratio is kept.
    sign = (-1.0) ** (swap + mirror)
    expected = sign * side["orientation_diff"] + (roll1 - roll0)
    got = torch.atan2(out[SIFT.index("sin_orientation_diff")], out[SIFT.index("cos_orientation_diff")])
    wrapped = torch.remainder(got - expected + math.pi, 2 * math.pi) - math.pi
    assert float(wrapped.abs().max()) < 1e-6
    log_scale = inputs[SIFT.index("log_scale_ratio")]
    torch.testing.assert_close(out[SIFT.index("log_scale_ratio")], -log_scale if swap else log_scale)
    torch.testing.assert_close(out[SIFT.index("ratio")], inputs[SIFT.index("ratio")])


def test_loftr_inputs_keep_their_confidence():
    scene, _, _ = _pair(1)
    confidence = torch.rand(120, dtype=torch.float64)
    inputs = network_inputs(scene.x0, scene.x1, {"confidence": confidence}, NetworkConfig(inputs="loftr")).double()
    out = transform_inputs(inputs, INPUT_CHANNELS["loftr"], 0.4, -0.1, True, True)
    torch.testing.assert_close(out[4], inputs[4])
    assert not torch.allclose(out[:4], inputs[:4])


def test_random_draws_are_seeded_and_an_inactive_augmentation_draws_nothing():
    _, _, inputs = _pair(2)
    rng = random.Random(5)
    assert augment_inputs(inputs, SIFT, Augmentation(), rng) is inputs
    assert rng.random() == random.Random(5).random()  # no draw was taken
    augmentation = Augmentation(roll_deg=20, relative_roll_deg=5, swap=True, mirror=True)
    first = augment_inputs(inputs, SIFT, augmentation, random.Random(7))
    torch.testing.assert_close(first, augment_inputs(inputs, SIFT, augmentation, random.Random(7)))
    assert not torch.allclose(first, inputs)


def test_rolls_beyond_half_a_turn_are_rejected_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="roll_deg"):
        Augmentation(roll_deg=200)
    argv = ["--scenes-root", str(SCENES), "--train", "kermit", "--val", "dino", "--name", "x", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="bad augmentation: relative_roll_deg"):
        init.main([*argv, "--augment-relative-roll", "-3"])
    assert not any(tmp_path.iterdir())
