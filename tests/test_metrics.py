import numpy as np
import pytest

from mbp_cli.metrics import (
    binned_map,
    paired_auc_difference,
    pose_auc,
    pose_error_deg,
    rotation_error_deg,
    translation_error_deg,
)


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


def test_paired_auc_difference_is_the_auc_difference_with_an_interval_around_it():
    rng = np.random.default_rng(3)
    base = rng.exponential(3.0, 200)
    better = base * 0.5  # every pair more accurate
    (d5, lo5, hi5), _, _ = paired_auc_difference(better, base, resamples=300)
    assert d5 == pytest.approx(pose_auc(better, (5.0,))[0] - pose_auc(base, (5.0,))[0])
    assert 0.0 < lo5 < d5 < hi5
    # swapping the methods negates the difference and mirrors the interval
    (m5, mlo5, mhi5), _, _ = paired_auc_difference(base, better, resamples=300)
    assert m5 == pytest.approx(-d5) and mlo5 == pytest.approx(-hi5) and mhi5 == pytest.approx(-lo5)
    # a method against itself: exactly zero, every draw
    assert paired_auc_difference(base, base, resamples=50) == [(0.0, 0.0, 0.0)] * 3
    # several runs (seeds) of a method: its AUC is their mean
    runs = np.stack([better, base])
    (two_runs, _, _), _, _ = paired_auc_difference(runs, base, resamples=10)
    assert two_runs == pytest.approx(d5 / 2)
    # unrelated noise on the same pairs: the interval contains zero
    noisy = base + rng.normal(0.0, 0.3, 200)
    (_, nlo, nhi), _, _ = paired_auc_difference(noisy, base, resamples=300)
    assert nlo < 0.0 < nhi
    with pytest.raises(ValueError, match="same non-zero number of pairs"):
        paired_auc_difference(base[:10], base[:11])
