"""Tests of mbp_cli.matching.sift: descriptor matching, both SIFT backends, resize mapping, orientation convention."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mbp_cli.errors import ImageError
from mbp_cli.matching import MATCHERS, Matches, create_matcher
from mbp_cli.matching.sift import (
    Features,
    KorniaSift,
    OpenCVSift,
    match_descriptors,
    resize_image,
    resized_size,
    to_original_coordinates,
    wrap_angle,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_images"


def _real_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Buddha images 00001 / 00015 (a listed overlapping pair), their K (pixel centre at 0) and GT (R, t).

    Read from the repository's sample_images/ (shipped, CC BY 4.0); skipped when it is missing.
    """
    paths = [SAMPLES / "buddha_00001.png", SAMPLES / "buddha_00015.png"]
    if not all(p.is_file() for p in paths) or not (SAMPLES / "ground_truth.txt").is_file():
        pytest.skip("sample_images/ buddha pair not available")
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    cam = next(line.split() for line in (SAMPLES / "cameras.txt").read_text().splitlines() if line[:1].isdigit())
    fx, fy, cx, cy = map(float, cam[4:8])
    K = np.array([[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1.0]])
    rows = [
        list(map(float, line.split()))
        for line in (SAMPLES / "ground_truth.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return images[0], images[1], K, np.array(rows[:3]), np.array(rows[3])


def _sampson_px(kp0: np.ndarray, kp1: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Sampson distance under E = [t]x R (x1 = R x0 + t), in pixels (normalized distance times the focal)."""
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ R
    x0 = np.linalg.solve(K, np.c_[kp0, np.ones(len(kp0))].T)
    x1 = np.linalg.solve(K, np.c_[kp1, np.ones(len(kp1))].T)
    Ex0, Etx1 = E @ x0, E.T @ x1
    d2 = np.sum(x1 * Ex0, 0) ** 2 / (Ex0[0] ** 2 + Ex0[1] ** 2 + Etx1[0] ** 2 + Etx1[1] ** 2)
    return np.sqrt(d2) * (K[0, 0] + K[1, 1]) / 2


def _texture_image(h: int = 240, w: int = 320) -> np.ndarray:
    """A crop of a real image (downsampled), or blurred noise when the samples are missing."""
    path = SAMPLES / "buddha_00001.png"
    if path.is_file():
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
        y0, x0 = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        return np.ascontiguousarray(image[y0 : y0 + h, x0 : x0 + w])
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.0)
    return cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _check_matches(m: Matches, shape0: tuple[int, int], shape1: tuple[int, int], ratio: float) -> None:
    n = len(m)
    assert m.keypoints0.shape == (n, 2) and m.keypoints1.shape == (n, 2)
    assert m.keypoints0.dtype == torch.float64 and m.keypoints1.dtype == torch.float64
    assert set(m.side) == {"ratio", "scale_ratio", "orientation_diff", "scale0", "scale1"}
    for value in m.side.values():
        assert value.shape == (n,) and value.dtype == torch.float64 and torch.isfinite(value).all()
    assert ((m.side["ratio"] >= 0) & (m.side["ratio"] < ratio)).all()
    assert (m.side["scale_ratio"] > 0).all()
    assert (m.side["scale0"] > 0).all() and (m.side["scale1"] > 0).all()
    torch.testing.assert_close(m.side["scale_ratio"], m.side["scale1"] / m.side["scale0"])
    od = m.side["orientation_diff"]
    assert ((od > -math.pi) & (od <= math.pi)).all()
    for kp, (h, w) in ((m.keypoints0, shape0), (m.keypoints1, shape1)):
        assert (kp[:, 0] >= -0.5).all() and (kp[:, 0] <= w - 0.5).all()
        assert (kp[:, 1] >= -0.5).all() and (kp[:, 1] <= h - 0.5).all()


# ---------------------------------------------------------------------------------------------------------------
# match_descriptors


def _line_descriptors(positions: list[float]) -> torch.Tensor:
    """Descriptors at given positions on a line of R^2 (float64, so distances are exact enough to assert on)."""
    p = torch.tensor(positions, dtype=torch.float64)
    return torch.stack([p, torch.zeros_like(p)], dim=1)


def test_match_descriptors_mutual_and_ratio_semantics():
    # image 1 descriptors at 0, 10, 11, 20, 100 on a line; image 0 descriptors:
    #   a0 = 0.1   -> b0 (0.1), 2nd b1 (9.9): distinct, and b0's nearest is a0          -> match
    #   a1 = 10.4  -> b1 (0.4), 2nd b2 (0.6): ratio 0.667, b1's nearest is a1            -> match
    #   a2 = 10.55 -> b2 (0.45), 2nd b1 (0.55): ratio 0.818 > 0.8                         -> rejected by ratio
    #   a3 = 19.0  -> b3 (1.0), 2nd b2 (8.0): distinct, but b3's nearest is a4 (0.2)       -> rejected by mutual
    #   a4 = 20.2  -> b3 (0.2), 2nd b2 (9.2)                                               -> match
    desc1 = _line_descriptors([0.0, 10.0, 11.0, 20.0, 100.0])
    desc0 = _line_descriptors([0.1, 10.4, 10.55, 19.0, 20.2])

    idx0, idx1, ratios = match_descriptors(desc0, desc1, ratio=0.8)
    assert idx0.tolist() == [0, 1, 4]
    assert idx1.tolist() == [0, 1, 3]
    assert ratios.dtype == torch.float64
    torch.testing.assert_close(ratios, torch.tensor([0.1 / 9.9, 0.4 / 0.6, 0.2 / 9.2], dtype=torch.float64))

    idx0, idx1, _ = match_descriptors(desc0, desc1, ratio=0.8, mutual=False)
    assert idx0.tolist() == [0, 1, 3, 4]
    assert idx1.tolist() == [0, 1, 3, 3]  # one-to-many without the mutual check

    idx0, idx1, _ = match_descriptors(desc0, desc1, ratio=0.6)  # strict: 0.667 is out
    assert idx0.tolist() == [0, 4] and idx1.tolist() == [0, 3]

    idx0, idx1, _ = match_descriptors(desc0, desc1, ratio=1.0, mutual=False)
    assert idx0.tolist() == [0, 1, 2, 3, 4]


def test_match_descriptors_agrees_with_brute_force_across_chunks():
    # more rows than one chunk (512), RootSIFT-like unit descriptors in float32
    gen = torch.Generator().manual_seed(0)
    desc1 = torch.nn.functional.normalize(torch.rand(900, 128, generator=gen), dim=1)
    noisy = desc1[torch.randperm(900, generator=gen)[:700]] + 0.02 * torch.randn(700, 128, generator=gen)
    desc0 = torch.nn.functional.normalize(torch.cat([noisy, torch.rand(600, 128, generator=gen)]), dim=1)

    idx0, idx1, ratios = match_descriptors(desc0, desc1, ratio=0.8)

    dist = torch.cdist(desc0.double(), desc1.double())
    top = dist.topk(2, dim=1, largest=False)
    ref_ratio = top.values[:, 0] / top.values[:, 1]
    mutual = dist.argmin(dim=0)[top.indices[:, 0]] == torch.arange(len(desc0))
    ref_keep = (ref_ratio < 0.8) & mutual
    assert idx0.tolist() == torch.nonzero(ref_keep).flatten().tolist()
    assert idx1.tolist() == top.indices[ref_keep, 0].tolist()
    torch.testing.assert_close(ratios, ref_ratio[ref_keep], atol=1e-4, rtol=0)
    assert len(idx0) > 600  # the noisy copies match


def test_match_descriptors_identical_descriptors_give_no_nan():
    # 1 - a.b rounds to slightly negative values for identical unit vectors: the sqrt must not give NaN
    desc = torch.nn.functional.normalize(torch.rand(50, 128, generator=torch.Generator().manual_seed(1)), dim=1)
    idx0, idx1, ratios = match_descriptors(desc, desc.clone(), ratio=0.8)
    assert idx0.tolist() == list(range(50)) and idx1.tolist() == list(range(50))
    assert torch.isfinite(ratios).all() and (ratios < 1e-2).all()


def test_match_descriptors_edge_cases():
    desc = _line_descriptors([0.0, 1.0, 5.0])
    # duplicated neighbours: first and second distances equal -> ambiguous, rejected even at ratio 1
    idx0, _, _ = match_descriptors(_line_descriptors([0.0]), _line_descriptors([0.0, 0.0, 3.0]), ratio=1.0)
    assert idx0.numel() == 0
    for d0, d1 in ((desc[:0], desc), (desc, desc[:1]), (desc, desc[:0])):
        idx0, idx1, ratios = match_descriptors(d0, d1, ratio=0.8)
        assert idx0.shape == idx1.shape == ratios.shape == (0,)
    with pytest.raises(ValueError):
        match_descriptors(desc, desc, ratio=0.0)
    with pytest.raises(ValueError):
        match_descriptors(desc, torch.zeros(3, 3), ratio=0.8)


def test_wrap_angle():
    pi = math.pi
    angles = torch.tensor([0.0, pi, -pi, 3 * pi, -3 * pi / 2, 2 * pi + 0.1], dtype=torch.float64)
    expected = torch.tensor([0.0, math.pi, math.pi, math.pi, math.pi / 2, 0.1], dtype=torch.float64)
    torch.testing.assert_close(wrap_angle(angles), expected)


# ---------------------------------------------------------------------------------------------------------------
# resize helpers


def test_resized_size_and_coordinate_mapping():
    assert resized_size(770, 1368, None) == (770, 1368)
    assert resized_size(770, 1368, 640) == (360, 640)
    assert resized_size(770, 1368, 640, multiple=8) == (360, 640)
    assert resized_size(375, 1242, 640, multiple=8) == (192, 640)
    assert resized_size(120, 160, None, multiple=8) == (120, 160)
    # pixel centre convention: resized pixel 0 of a 2x downsample covers original pixels 0 and 1 -> centre 0.5
    points = torch.tensor([[0.0, 0.0], [-0.5, -0.5], [9.5, 4.5]], dtype=torch.float64)
    mapped = to_original_coordinates(points, (0.5, 0.25))
    torch.testing.assert_close(mapped, torch.tensor([[0.5, 1.5], [-0.5, -0.5], [19.5, 19.5]], dtype=torch.float64))
    # an exact 2x nearest upsampling is undone exactly by the area downsampling used for detection
    image = _texture_image(60, 80)
    up = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    down, scale = resize_image(up, (60, 80))
    assert scale == (0.5, 0.5) and np.array_equal(down, image)


# ---------------------------------------------------------------------------------------------------------------
# the two backends


@pytest.fixture(scope="module")
def kornia_small() -> KorniaSift:
    return KorniaSift(num_features=1000)


def test_opencv_real_pair_matches_agree_with_ground_truth():
    image0, image1, K, R, t = _real_pair()
    matcher = OpenCVSift()
    m = matcher(image0, image1)
    assert m.matcher == "sift-opencv(n=8000,ratio=0.8,resize=None,contrast=0.01)"
    _check_matches(m, image0.shape, image1.shape, 0.8)
    assert len(m) > 300
    err = _sampson_px(m.keypoints0.numpy(), m.keypoints1.numpy(), K, R, t)
    # most ratio-test matches lie on the GT epipolar geometry, and the good ones are sub-pixel
    assert np.mean(err < 1.0) > 0.6
    assert np.median(err) < 0.5


def test_kornia_real_pair_matches_agree_with_ground_truth():
    # kornia SIFT is slow on CPU (~10 s per full image): detect at long side 640, keypoints mapped back
    image0, image1, K, R, t = _real_pair()
    matcher = KorniaSift(num_features=2000, resize=640)
    m = matcher(image0, image1)
    assert m.matcher == "sift-kornia(n=2000,ratio=0.8,resize=640)"
    _check_matches(m, image0.shape, image1.shape, 0.8)
    assert len(m) > 100
    err = _sampson_px(m.keypoints0.numpy(), m.keypoints1.numpy(), K, R, t)
    assert np.mean(err < 2.0) > 0.5  # detection at 0.47x: errors scale up accordingly


@pytest.mark.parametrize("backend", ["opencv", "kornia"])
def test_resize_maps_keypoints_back_exactly(backend, kornia_small):
    # Detect on an image, and on its exact 2x (nearest) upsampling with resize = the original long side: the
    # detector sees the same pixels, so the mapped keypoints must be the upsampled ones, 2u + 0.5.
    image = _texture_image()
    up = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    if backend == "opencv":
        plain, resized = OpenCVSift(num_features=1000), OpenCVSift(num_features=1000, resize=max(image.shape))
    else:
        plain = kornia_small
        resized = KorniaSift(num_features=1000, resize=max(image.shape))
    f = plain.extract(image)
    f_up = resized.extract(up)
    assert isinstance(f_up, Features) and len(f) > 50 and len(f_up) == len(f)
    assert f_up.image_size == up.shape and f.image_size == image.shape
    torch.testing.assert_close(f_up.keypoints, 2.0 * f.keypoints + 0.5, atol=1e-9, rtol=0)
    torch.testing.assert_close(f_up.scales, 2.0 * f.scales)
    torch.testing.assert_close(f_up.orientations, f.orientations)
    torch.testing.assert_close(f_up.descriptors, f.descriptors)
    # RootSIFT: unit L2 norm
    torch.testing.assert_close(f.descriptors.norm(dim=1), torch.ones(len(f)), atol=1e-4, rtol=0)


def test_orientation_difference_sign_is_the_same_for_both_backends(kornia_small):
    # image 1 = image 0 rotated by +40 deg in the image frame (x right, y down: clockwise on screen), i.e.
    # x1 = A [x0, 1] with A = getRotationMatrix2D(centre, -40) (OpenCV's angle is counter-clockwise on screen)
    theta = math.radians(40.0)
    image0 = _texture_image()
    h, w = image0.shape
    A = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), -40.0, 1.0)
    side = int(math.ceil(math.hypot(h, w))) + 2
    A[:, 2] += [(side - w) / 2, (side - h) / 2]  # keep the whole rotated image in view
    image1 = cv2.warpAffine(image0, A, (side, side), flags=cv2.INTER_LINEAR)
    for matcher in (OpenCVSift(num_features=1000), kornia_small):
        m = matcher(image0, image1)
        expected = torch.from_numpy(np.c_[m.keypoints0.numpy(), np.ones(len(m))] @ A.T)
        good = (m.keypoints1 - expected).norm(dim=1) < 2.0
        assert good.sum() > 30, matcher
        residual = wrap_angle(m.side["orientation_diff"][good] - theta)
        assert residual.abs().median() < math.radians(3.0), matcher
        assert (m.side["scale_ratio"][good].median() - 1.0).abs() < 0.05


def test_extract_and_match_equal_call():
    image0 = _texture_image()
    image1 = np.ascontiguousarray(image0[10:, 7:])  # a shifted crop
    matcher = OpenCVSift(num_features=500)
    m = matcher(image0, image1)
    m2 = matcher.match(matcher.extract(image0), matcher.extract(image1))
    assert len(m) == len(m2) > 50
    torch.testing.assert_close(m.keypoints0, m2.keypoints0)
    torch.testing.assert_close(m.keypoints1, m2.keypoints1)
    shift = (m.keypoints0 - m.keypoints1 - torch.tensor([7.0, 10.0], dtype=torch.float64)).norm(dim=1)
    assert (shift < 0.5).float().mean() > 0.9
    subset = m.subset(m.side["ratio"] < 0.5)
    assert len(subset) == int((m.side["ratio"] < 0.5).sum())


def test_bad_images_raise_image_error():
    matcher = OpenCVSift()
    with pytest.raises(ImageError):
        matcher.extract(np.zeros((100, 100), dtype=np.float32))
    with pytest.raises(ImageError):
        matcher.extract(np.zeros((100, 100, 4), dtype=np.uint8))
    with pytest.raises(ImageError):
        matcher.extract(np.zeros((8, 100), dtype=np.uint8))
    # a flat image has no features: an empty result, not an error (the pipeline decides)
    m = matcher(np.full((100, 100), 128, np.uint8), _texture_image(100, 100))
    assert len(m) == 0 and m.keypoints0.shape == (0, 2) and m.side["ratio"].shape == (0,)


def test_factory():
    assert set(MATCHERS) == {"sift", "sift-opencv", "sift-kornia", "loftr"}
    assert isinstance(create_matcher("sift-opencv", num_features=100), OpenCVSift)
    assert isinstance(create_matcher("SIFT-Kornia", num_features=100, resize=320), KorniaSift)
    assert isinstance(create_matcher("sift", ratio=0.9), (OpenCVSift, KorniaSift))
    with pytest.raises(ValueError, match="sift-opencv"):
        create_matcher("orb")
