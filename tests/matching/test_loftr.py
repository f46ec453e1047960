"""Tests of mbp_cli.matching.loftr: weight lookup and loading (never a download), and running on a small pair.

No pretrained weights are available offline, so the model tests use kornia's LoFTR with random weights, saved the
way a user would provide a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import kornia.feature as KF
import numpy as np
import pytest
import torch

from mbp_cli.errors import ExitCode, WeightsError
from mbp_cli.matching import Matches, create_matcher
from mbp_cli.matching.loftr import WEIGHTS_ENV, LoftrMatcher, resolve_weights_path

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_images" / "buddha_00001.png"


@pytest.fixture(autouse=True)
def _isolated_weights(monkeypatch, tmp_path):
    """No user weights leak in: no env variable, and torch hub's cache is an empty temporary folder."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


@pytest.fixture(scope="module")
def random_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return KF.LoFTR(pretrained=None).state_dict()


@pytest.fixture(scope="module")
def image_pair() -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping 200x150 crops of a real image (blurred noise when the sample is missing)."""
    if SAMPLE.is_file():
        image = cv2.imread(str(SAMPLE), cv2.IMREAD_GRAYSCALE)
        image = cv2.resize(image, (image.shape[1] // 3, image.shape[0] // 3), interpolation=cv2.INTER_AREA)
    else:
        rng = np.random.default_rng(0)
        noise = cv2.GaussianBlur(rng.uniform(0, 255, (256, 456)).astype(np.float32), (0, 0), 2.0)
        image = cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    y, x = image.shape[0] // 2 - 75, image.shape[1] // 2 - 100
    crop0 = np.ascontiguousarray(image[y : y + 150, x : x + 200])
    crop1 = np.ascontiguousarray(image[y + 6 : y + 156, x + 9 : x + 209])
    return crop0, crop1


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = error.value.message
    assert "\n" not in message and message == str(error.value)
    assert error.value.exit_code == ExitCode.WEIGHTS
    return message


def test_missing_weights_names_the_file_and_where_to_put_it(_isolated_weights):
    with pytest.raises(WeightsError) as error:
        LoftrMatcher()
    message = _one_line(error)
    assert "loftr_outdoor.ckpt" in message
    assert str(_isolated_weights / "checkpoints") in message
    assert "--loftr-weights" in message and WEIGHTS_ENV in message
    # the factory raises the same error, at construction, before any image is read
    with pytest.raises(WeightsError):
        create_matcher("loftr")
    # and nothing was downloaded into the cache
    assert not (_isolated_weights / "checkpoints" / "loftr_outdoor.ckpt").exists()


def test_missing_weights_from_env_or_argument(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "loftr.ckpt"
    monkeypatch.setenv(WEIGHTS_ENV, str(missing))
    with pytest.raises(WeightsError) as error:
        LoftrMatcher()
    message = _one_line(error)
    assert str(missing) in message and WEIGHTS_ENV in message
    with pytest.raises(WeightsError) as error:
        LoftrMatcher(weights_path=tmp_path / "other.ckpt")
    assert "other.ckpt" in _one_line(error) and "--loftr-weights" in error.value.message


def test_weights_lookup_order(monkeypatch, tmp_path, _isolated_weights):
    hub_file = _isolated_weights / "checkpoints" / "loftr_outdoor.ckpt"
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"x")
    env_file = tmp_path / "env.ckpt"
    env_file.write_bytes(b"x")
    arg_file = tmp_path / "arg.ckpt"
    arg_file.write_bytes(b"x")
    assert resolve_weights_path() == hub_file
    monkeypatch.setenv(WEIGHTS_ENV, str(env_file))
    assert resolve_weights_path() == env_file
    assert resolve_weights_path(arg_file) == arg_file


@pytest.mark.parametrize("layout", ["raw", "lightning"])
def test_random_weights_run_on_a_small_pair(layout, random_state, image_pair, tmp_path):
    path = tmp_path / "weights.ckpt"
    if layout == "raw":
        torch.save(random_state, path)
    else:  # kornia's / LoFTR's checkpoint format: {"state_dict": {"matcher.<name>": tensor}}
        torch.save({"state_dict": {f"matcher.{k}": v for k, v in random_state.items()}, "epoch": 3}, path)
    matcher = LoftrMatcher(weights_path=path, resize=160)
    assert matcher.name == "loftr(weights=weights.ckpt,resize=160)"
    image0, image1 = image_pair
    m = matcher(image0, image1)
    assert isinstance(m, Matches) and m.matcher == matcher.name
    n = len(m)
    assert m.keypoints0.shape == (n, 2) and m.keypoints1.shape == (n, 2)
    assert m.keypoints0.dtype == torch.float64 and m.keypoints1.dtype == torch.float64
    assert set(m.side) == {"confidence"} and m.side["confidence"].shape == (n,)
    assert m.side["confidence"].dtype == torch.float64
    assert ((m.side["confidence"] > 0.2) & (m.side["confidence"] <= 1.0)).all()
    for kp, (h, w) in ((m.keypoints0, image0.shape), (m.keypoints1, image1.shape)):
        assert (kp[:, 0] >= -0.5).all() and (kp[:, 0] <= w - 0.5).all()
        assert (kp[:, 1] >= -0.5).all() and (kp[:, 1] <= h - 0.5).all()
    # the weights really are the saved ones
    loaded = matcher._model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in random_state.items())


def test_keypoints_are_mapped_back_to_full_resolution(random_state, image_pair, tmp_path):
    """keypoints0 sit on LoFTR's stride-8 grid of the resized image: check the exact mapping back."""
    path = tmp_path / "weights.ckpt"
    torch.save(random_state, path)
    matcher = LoftrMatcher(weights_path=path, resize=160)  # 200x150 -> 160x120: scale 0.8 on both axes
    # Random weights rarely pass the 0.2 dual-softmax threshold: accept every coarse match for this check only.
    matcher._model.coarse_matching.thr = 0.0
    image0, _ = image_pair
    m = matcher(image0, image0)
    assert len(m) > 0
    # LoFTR frame (pixel centres at +0.5) in the resized image: u_loftr = 8 k; original: u = u_loftr / 0.8 - 0.5
    grid = (m.keypoints0 + 0.5) * 0.8 / 8.0
    torch.testing.assert_close(grid, grid.round(), atol=1e-9, rtol=0)


def test_corrupt_or_mismatched_weights(random_state, tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(WeightsError) as error:
        LoftrMatcher(weights_path=corrupt)
    assert "corrupt.ckpt" in _one_line(error)

    truncated = tmp_path / "truncated.ckpt"
    torch.save(random_state, truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(WeightsError) as error:
        LoftrMatcher(weights_path=truncated)
    _one_line(error)

    not_a_state = tmp_path / "list.ckpt"
    torch.save([1, 2, 3], not_a_state)
    with pytest.raises(WeightsError) as error:
        LoftrMatcher(weights_path=not_a_state)
    _one_line(error)

    missing_key = tmp_path / "missing_key.ckpt"
    torch.save({k: v for i, (k, v) in enumerate(random_state.items()) if i != 0}, missing_key)
    with pytest.raises(WeightsError) as error:
        LoftrMatcher(weights_path=missing_key)
    assert "missing" in _one_line(error)

    wrong_shape = tmp_path / "wrong_shape.ckpt"
    first = next(iter(random_state))
    torch.save({**random_state, first: torch.zeros(3)}, wrong_shape)
    with pytest.raises(WeightsError) as error:
        LoftrMatcher(weights_path=wrong_shape)
    _one_line(error)
