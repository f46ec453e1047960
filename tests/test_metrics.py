import numpy as np
import pytest

from mbp_cli.metrics import binned_map, pose_auc, pose_error_deg, rotation_error_deg, translation_error_deg


def test_pose_auc_hand_computed():
    # Errors 1 and 3 degrees, AUC@5: curve (0,0) (1,1/2) (3,1) (5,1) -> (0.25 + 1.5 + 2) / 5.
    assert pose_auc([1.0, 3.0], [5.0]) == pytest.approx([0.75])
    # an error beyond the threshold: (0,0) (2,1/2) then flat to 10 -> (0.5 + 4) / 10
    assert pose_auc([2.0, 50.0], [10.0]) == pytest.approx([0.45])
    assert pose_auc([180.0, 180.0], [5.0]) == [0.0]
    assert pose_auc([0.0, 0.0], [5.0, 10.0]) == pytest.approx([1.0, 1.0])
    assert pose_auc([], [5.0]) == [0.0]


def test_pose_auc_tends_to_the_step_integral():
    # With many errors the trapezoid and the step integral of the empirical CDF agree to 1/n.
    rng = np.random.default_rng(0)
    errors = np.sort(rng.exponential(4.0, 2000))
    t = 10.0
    below = errors[errors < t]
    step = (np.sum(np.diff(np.r_[below, t]) * np.arange(1, len(below) + 1) / len(errors))) / t
    assert pose_auc(errors, [t])[0] == pytest.approx(step, abs=1.0 / len(errors))


def test_binned_map():
    assert binned_map([4.0, 7.0, 30.0], [5.0, 10.0]) == pytest.approx([1 / 3, (1 / 3 + 2 / 3) / 2])


def test_angular_errors():
    Rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert rotation_error_deg(Rz, np.eye(3)) == pytest.approx(90.0)
    assert translation_error_deg(np.array([0, 0, -1.0]), np.array([0, 0, 1.0])) == pytest.approx(0.0)
    assert pose_error_deg(None, None, np.eye(3), np.ones(3)) == (180.0, 180.0)
