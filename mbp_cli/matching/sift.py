"""SIFT matchers: RootSIFT features (kornia or OpenCV) + mutual nearest neighbours + Lowe's ratio test.

Conventions shared by both backends (so that the consensus network sees the same side information whatever
backend produced it):

* Keypoints are ``(u, v)`` pixel coordinates of the image **as given** (full resolution), with the centre of the
  top-left pixel at ``(0, 0)`` (OpenCV/kornia convention), float64.
* Orientations are radians in the **image frame** (x right, y down): an angle ``o`` is the direction
  ``(cos o, sin o)`` in pixel coordinates, i.e. it grows *clockwise on screen*. This is OpenCV's ``KeyPoint.angle``
  convention; kornia's LAF orientation grows counter-clockwise on screen and is negated. With this convention, if
  image 1 is image 0 rotated by ``theta`` in pixel coordinates (``x1 = R(theta) x0 + c``, ``R`` the usual
  ``[[cos, -sin], [sin, cos]]``; ``cv2.ROTATE_90_CLOCKWISE`` is ``theta = +pi/2``), the orientation difference
  ``o1 - o0`` of a correct match is ``theta``.
* Scales are in backend-specific units (OpenCV: keypoint diameter ``KeyPoint.size``; kornia: ``sqrt(det A)`` of the
  LAF), so only ratios ``s1 / s0`` of the same backend are comparable.
* Descriptors are RootSIFT (Arandjelovic & Zisserman 2012): L1-normalised, element-wise square root, hence unit L2
  norm, compared with the Euclidean distance.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from mbp_cli.errors import ImageError
from mbp_cli.matching.types import Matches

DEFAULT_NUM_FEATURES = 8000
DEFAULT_RATIO = 0.8
# OpenCV SIFT's contrast threshold. OpenCV's (Lowe's) 0.04 leaves 180 keypoints on a 640x480 low-texture image
# (dino) and 1000 on a 1368x770 one (buddha); 0.01 keeps 450 / 5800 and raised PoseLib's pose AUC@5 from 80.4 to
# 88.3 over 80 pairs of 4 scenes (dino 45 -> 76), no scene losing more than the RANSAC noise
# (benchmarks/results/matchers.md).
DEFAULT_CONTRAST_THRESHOLD = 0.01

# Rows of desc0 compared at once: bounds the distance matrix to 512 x N1 (16 MB in float32 for N1 = 8000) whatever
# the number of features; small blocks stay in cache (measured 0.47 s vs 1.0 s with 4096 rows, 8000 x 8000, 1 thread).
_MATCH_CHUNK = 512


@dataclass
class Features:
    """Local features of one image, in the coordinates of the image as given (see the module conventions).

    Attributes:
        keypoints: (N, 2) float64 ``(u, v)`` pixel coordinates, pixel centre at (0, 0), full resolution.
        scales: (N,) float64 keypoint scales in full-resolution pixels, backend-specific units.
        orientations: (N,) float64 radians in the image frame (clockwise on screen), in (-pi, pi].
        descriptors: (N, 128) float32 RootSIFT descriptors, unit L2 norm.
        image_size: ``(height, width)`` of the image the features were extracted from (before any resize).
    """

    keypoints: torch.Tensor
    scales: torch.Tensor
    orientations: torch.Tensor
    descriptors: torch.Tensor
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])


def wrap_angle(angle: torch.Tensor) -> torch.Tensor:
    """Wrap angles in radians to (-pi, pi].

    Args:
        angle: tensor of any shape, radians.

    Returns:
        Tensor of the same shape and dtype with values in (-pi, pi] (``pi`` stays ``pi``, ``-pi`` becomes ``pi``).
    """
    # remainder() is in [0, 2 pi), so pi - remainder(pi - a) is in (-pi, pi].
    return math.pi - torch.remainder(math.pi - angle, 2.0 * math.pi)


def match_descriptors(
    desc0: torch.Tensor, desc1: torch.Tensor, ratio: float, mutual: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match descriptors by nearest neighbour with Lowe's ratio test and, optionally, a mutual check.

    A descriptor ``i`` of image 0 is matched to its nearest neighbour ``j`` in image 1 (Euclidean distance) when
    ``d1 / d2 < ratio``, with ``d1`` and ``d2`` the distances to its first and second nearest neighbours in
    image 1, and, if ``mutual``, when ``i`` is also the nearest neighbour of ``j`` in image 0. The ratio test is
    applied in the 0 -> 1 direction only (as OpenCV's ``knnMatch`` + ratio + cross-check does).

    Distances come from ``|a|^2 + |b|^2 - 2 a.b`` (one matrix product), clamped at 0 before the square root since
    rounding makes it slightly negative for (near-)identical descriptors (the ranking uses the unclamped values).
    For unit-norm descriptors such as RootSIFT this is ``2 - 2 a.b``. The distance matrix is built in chunks of
    rows, so memory stays bounded.

    Args:
        desc0: (N0, D) descriptors of image 0 (any float dtype).
        desc1: (N1, D) descriptors of image 1, same D and device.
        ratio: Lowe ratio threshold in (0, 1]; a match needs ``d1 / d2 < ratio`` strictly.
        mutual: also require mutual nearest neighbours.

    Returns:
        ``(idx0, idx1, ratio_values)``: (M,) int64 indices into desc0 and desc1 of the matches, sorted by idx0, and
        (M,) float64 ``d1 / d2`` of each match in [0, ratio). Empty when N0 == 0 or N1 < 2 (the ratio test needs two
        neighbours). A zero second distance (duplicate descriptors in image 1) gives ratio 1: ambiguous, rejected.

    Raises:
        ValueError: on mismatched shapes or a ratio outside (0, 1].
    """
    if desc0.ndim != 2 or desc1.ndim != 2 or desc0.shape[1] != desc1.shape[1]:
        raise ValueError(f"descriptors must be (N0, D) and (N1, D), got {tuple(desc0.shape)} and {tuple(desc1.shape)}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    device = desc0.device
    n0, n1 = desc0.shape[0], desc1.shape[0]
    if n0 == 0 or n1 < 2:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty.clone(), torch.zeros(0, dtype=torch.float64, device=device)

    # float32 at least: float16 squared distances lose the precision the ratio test needs.
    dtype = torch.promote_types(torch.promote_types(desc0.dtype, desc1.dtype), torch.float32)
    d0 = desc0.to(dtype)
    d1 = desc1.to(dtype)
    sq0 = (d0 * d0).sum(dim=1)
    sq1 = (d1 * d1).sum(dim=1)

    best_sq = torch.empty(n0, 2, dtype=dtype, device=device)  # 1st and 2nd squared distance of each row
    nn01 = torch.empty(n0, dtype=torch.int64, device=device)  # nearest neighbour in image 1 of each row
    col_best = torch.full((n1,), math.inf, dtype=dtype, device=device)  # nearest distance of each column so far
    nn10 = torch.zeros(n1, dtype=torch.int64, device=device)  # nearest neighbour in image 0 of each column
    for start in range(0, n0, _MATCH_CHUNK):
        stop = min(start + _MATCH_CHUNK, n0)
        # one fused GEMM into a fresh buffer plus an in-place add: no full-size temporaries (2x faster than the
        # naive expression at 8000 x 8000 on one thread)
        dist_sq = torch.addmm(sq1[None, :], d0[start:stop], d1.T, alpha=-2.0).add_(sq0[start:stop, None])
        values, indices = torch.topk(dist_sq, k=2, dim=1, largest=False, sorted=True)
        best_sq[start:stop] = values.clamp(min=0.0)
        nn01[start:stop] = indices[:, 0]
        if mutual:
            chunk_best, chunk_arg = dist_sq.min(dim=0)
            # strict < keeps the first (lowest) index on ties, as a single argmin over all rows would
            better = chunk_best < col_best
            col_best = torch.where(better, chunk_best, col_best)
            nn10 = torch.where(better, chunk_arg + start, nn10)

    dist = best_sq.to(torch.float64).sqrt()
    ratios = torch.where(dist[:, 1] > 0, dist[:, 0] / dist[:, 1].clamp(min=torch.finfo(torch.float64).tiny), 1.0)
    keep = ratios < ratio
    idx0_all = torch.arange(n0, device=device)
    if mutual:
        keep &= nn10[nn01] == idx0_all
    idx0 = idx0_all[keep]
    return idx0, nn01[keep], ratios[keep]


def resized_size(height: int, width: int, long_side: int | None, multiple: int = 1) -> tuple[int, int]:
    """Integer size ``(height, width)`` of an image resized so that its longer side is ``long_side``.

    Args:
        height: original height in pixels.
        width: original width in pixels.
        long_side: target length of the longer side in pixels; ``None`` keeps the original size (still rounded to
            ``multiple``).
        multiple: both output sides are rounded to a multiple of this (e.g. 8 for LoFTR), at least ``multiple``.

    Returns:
        ``(new_height, new_width)``; the aspect ratio is kept up to the rounding.
    """
    factor = 1.0 if long_side is None else long_side / max(height, width)
    new_h = max(multiple, int(round(height * factor / multiple)) * multiple)
    new_w = max(multiple, int(round(width * factor / multiple)) * multiple)
    return new_h, new_w


def resize_image(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize an image to ``size`` and return the per-axis scale factors.

    Downsampling uses area averaging (anti-aliased; an exact block mean for integer factors), upsampling bilinear
    interpolation.

    Args:
        image: (H, W) image.
        size: ``(new_height, new_width)``.

    Returns:
        The resized (new_height, new_width) image and ``(sx, sy) = (new_width / W, new_height / H)``.
    """
    height, width = image.shape[:2]
    new_h, new_w = size
    scale = (new_w / width, new_h / height)
    if (new_h, new_w) == (height, width):
        return image, scale
    interpolation = cv2.INTER_AREA if new_h * new_w < height * width else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation), scale


def to_original_coordinates(points: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """Map pixel coordinates of a resized image back to the original image, pixel centre at (0, 0).

    Pixel ``i`` of the original covers ``[i - 0.5, i + 0.5]``; resizing by ``s`` maps pixel *edges* linearly, so
    ``u_resized + 0.5 = s (u_orig + 0.5)`` and ``u_orig = (u_resized + 0.5) / s - 0.5``.

    Args:
        points: (N, 2) ``(u, v)`` coordinates in the resized image.
        scale: ``(sx, sy)`` from :func:`resize_image` (new size / old size per axis).

    Returns:
        (N, 2) float64 coordinates in the original image.
    """
    if scale == (1.0, 1.0):  # no resize: skip the +0.5/-0.5 round trip so coordinates stay bit-exact
        return points.to(torch.float64)
    s = torch.tensor(scale, dtype=torch.float64, device=points.device)
    return (points.to(torch.float64) + 0.5) / s - 0.5


def as_grayscale_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check an input image and return it as a contiguous (H, W) uint8 array.

    Args:
        image: (H, W) uint8 grayscale, or (H, W, 3) uint8 BGR (OpenCV's channel order), converted to grayscale.
        name: how to call the image in an error message.

    Returns:
        (H, W) uint8 C-contiguous array.

    Raises:
        ImageError: wrong type, dtype or shape, or an image too small to find features in.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"{name} must be an 8-bit image (uint8), got {image.dtype}: convert it to 8 bits")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise ImageError(f"{name} must be (H, W) grayscale or (H, W, 3) BGR, got shape {image.shape}")
    if min(image.shape) < 16:
        height, width = image.shape
        raise ImageError(f"{name} is {width}x{height} pixels: too small, use an image of at least 16x16")
    return np.ascontiguousarray(image)


def match_features(features0: Features, features1: Features, ratio: float, mutual: bool, matcher: str) -> Matches:
    """Match two feature sets and build :class:`Matches` with SIFT side information.

    Args:
        features0: features of image 0.
        features1: features of image 1 (same backend).
        ratio: Lowe ratio threshold.
        mutual: require mutual nearest neighbours.
        matcher: the name stored in ``Matches.matcher``.

    Returns:
        Matches with side ``ratio`` (d1/d2), ``scale_ratio`` (s1/s0), ``orientation_diff`` (o1 - o0 wrapped to
        (-pi, pi]) and the keypoint scales ``scale0`` (s0) and ``scale1`` (s1), all (M,) float64.
    """
    idx0, idx1, ratios = match_descriptors(features0.descriptors, features1.descriptors, ratio, mutual)
    scale0, scale1 = features0.scales[idx0], features1.scales[idx1]
    side = {
        "ratio": ratios,
        "scale_ratio": scale1 / scale0,
        "orientation_diff": wrap_angle(features1.orientations[idx1] - features0.orientations[idx0]),
        "scale0": scale0,
        "scale1": scale1,
    }
    return Matches(features0.keypoints[idx0], features1.keypoints[idx1], side, matcher)


class _SiftMatcher(ABC):
    """Shared resize / match / naming logic of the two SIFT backends; a backend implements :meth:`_detect`."""

    backend = ""

    def __init__(
        self,
        num_features: int = DEFAULT_NUM_FEATURES,
        ratio: float = DEFAULT_RATIO,
        resize: int | None = None,
        mutual: bool = True,
    ) -> None:
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        if resize is not None and resize < 16:
            raise ValueError(f"resize (long side in pixels) must be at least 16 or None, got {resize}")
        self.num_features = int(num_features)
        self.ratio = float(ratio)
        self.resize = None if resize is None else int(resize)
        self.mutual = bool(mutual)

    def _extra_settings(self) -> str:
        """Non-default backend settings appended to :attr:`name`, each starting with a comma."""
        return "" if self.mutual else ",mutual=False"

    @property
    def name(self) -> str:
        """Name and settings, e.g. ``sift-opencv(n=8000,ratio=0.8,resize=None,contrast=0.01)``."""
        settings = f"n={self.num_features},ratio={self.ratio:g},resize={self.resize}{self._extra_settings()}"
        return f"sift-{self.backend}({settings})"

    def __repr__(self) -> str:
        return self.name

    @abstractmethod
    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Backend detection on a (H, W) uint8 image, in its own pixel frame.

        Returns:
            keypoints (N, 2), scales (N,), orientations (N,) in radians (image frame), RootSIFT descriptors (N, 128).
        """

    def extract(self, image: np.ndarray) -> Features:
        """Detect and describe RootSIFT features of one image.

        Args:
            image: (H, W) uint8 grayscale (or (H, W, 3) uint8 BGR), as stored on disk.

        Returns:
            Features in the coordinates of ``image`` (full resolution), whatever ``resize`` is.

        Raises:
            ImageError: the image is not an 8-bit grayscale/BGR array or is too small.
        """
        gray = as_grayscale_uint8(image)
        height, width = gray.shape
        work, scale = resize_image(gray, resized_size(height, width, self.resize))
        keypoints, scales, orientations, descriptors = self._detect(work)
        return Features(
            keypoints=to_original_coordinates(torch.from_numpy(keypoints).reshape(-1, 2), scale),
            # the scale of a blob is a length, so it maps back with the (geometric mean) size factor
            scales=torch.from_numpy(scales).to(torch.float64) / math.sqrt(scale[0] * scale[1]),
            orientations=wrap_angle(torch.from_numpy(orientations).to(torch.float64)),
            descriptors=torch.from_numpy(descriptors).to(torch.float32).reshape(-1, 128),
            image_size=(height, width),
        )

    def match(self, features0: Features, features1: Features) -> Matches:
        """Match precomputed features of image 0 and image 1 (from :meth:`extract` of this matcher).

        Returns:
            Matches in full-resolution pixel coordinates with side ``ratio``, ``scale_ratio``, ``orientation_diff``.
        """
        return match_features(features0, features1, self.ratio, self.mutual, self.name)

    def __call__(self, image0: np.ndarray, image1: np.ndarray) -> Matches:
        """Extract and match the features of two images.

        Args:
            image0: (H0, W0) uint8 grayscale image 0 as stored on disk.
            image1: (H1, W1) uint8 grayscale image 1.

        Returns:
            Tentative matches (possibly empty), see :meth:`match`.
        """
        return self.match(self.extract(image0), self.extract(image1))


class OpenCVSift(_SiftMatcher):
    """OpenCV SIFT (``cv2.SIFT_create``) converted to RootSIFT, with mutual-NN + ratio-test matching.

    OpenCV's detector keeps at most ``num_features`` keypoints, fewer on images with little contrast (its contrast
    threshold is applied first). A keypoint with several dominant orientations appears once per orientation.
    Lowe's parameters are used except the contrast threshold (see ``contrast_threshold``), with OpenCV's
    ``enable_precise_upscale`` so that keypoints carry no quarter-pixel bias.

    Args:
        num_features: maximum number of keypoints per image (``nfeatures``).
        ratio: Lowe ratio threshold (first / second nearest-neighbour distance).
        resize: longer side, in pixels, of the image used for detection; ``None`` detects at full resolution.
            Keypoints and scales are always returned in full-resolution coordinates.
        mutual: require mutual nearest neighbours.
        contrast_threshold: OpenCV's ``contrastThreshold``. 0.01 by default, lower than OpenCV's 0.04: it keeps
            more, weaker keypoints (still at most ``num_features``, the strongest), which helps on images with
            little texture (see ``DEFAULT_CONTRAST_THRESHOLD``).
    """

    backend = "opencv"

    def __init__(
        self,
        num_features: int = DEFAULT_NUM_FEATURES,
        ratio: float = DEFAULT_RATIO,
        resize: int | None = None,
        mutual: bool = True,
        contrast_threshold: float = DEFAULT_CONTRAST_THRESHOLD,
    ) -> None:
        super().__init__(num_features, ratio, resize, mutual)
        if contrast_threshold < 0:
            raise ValueError(f"contrast_threshold must be non-negative, got {contrast_threshold}")
        self.contrast_threshold = float(contrast_threshold)
        # enable_precise_upscale: the default 2x upscaling of the first octave is pixel-centre aligned while
        # OpenCV maps its coordinates back with x / 2, which shifts every keypoint by +0.25 px along both axes
        # (measured: 0.249 px on a mirrored image pair); the precise mode maps x to 2x and removes the bias.
        self._sift = cv2.SIFT_create(
            nfeatures=self.num_features,
            nOctaveLayers=3,
            contrastThreshold=self.contrast_threshold,
            edgeThreshold=10,
            sigma=1.6,
            enable_precise_upscale=True,
        )

    def _extra_settings(self) -> str:
        # always shown: it changes the number of keypoints a lot and differs from OpenCV's own default
        return super()._extra_settings() + f",contrast={self.contrast_threshold:g}"

    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        keypoints, descriptors = self._sift.detectAndCompute(image, None)
        if descriptors is None or len(keypoints) == 0:
            return np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros((0, 128), np.float32)
        points = np.array([kp.pt for kp in keypoints], dtype=np.float64)
        sizes = np.array([kp.size for kp in keypoints], dtype=np.float64)
        # KeyPoint.angle: degrees in [0, 360), measured in the image frame (clockwise on screen).
        angles = np.deg2rad(np.array([kp.angle for kp in keypoints], dtype=np.float64))
        # RootSIFT: L1-normalise (SIFT entries are non-negative) then square root => unit L2 norm.
        descriptors = descriptors.astype(np.float32)
        descriptors /= np.maximum(descriptors.sum(axis=1, keepdims=True), np.float32(1e-12))
        return points, sizes, angles, np.sqrt(descriptors)


class KorniaSift(_SiftMatcher):
    """kornia ``SIFTFeature`` (multi-resolution DoG + LAF orientation + RootSIFT patch descriptor).

    kornia keeps the ``num_features`` strongest responses (it has no contrast threshold, so it reaches that number
    on most real images; the padding slots of a short result are dropped). It is 10-25x slower than OpenCV on CPU
    at full resolution (see ``benchmarks/results/matchers.md``); ``resize`` trades accuracy for speed.

    Args:
        num_features: number of keypoints per image.
        ratio: Lowe ratio threshold (first / second nearest-neighbour distance).
        resize: longer side, in pixels, of the image used for detection; ``None`` detects at full resolution.
        mutual: require mutual nearest neighbours.
        device: torch device to run kornia on (CPU by default); results always come back on the CPU.
    """

    backend = "kornia"

    def __init__(
        self,
        num_features: int = DEFAULT_NUM_FEATURES,
        ratio: float = DEFAULT_RATIO,
        resize: int | None = None,
        mutual: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(num_features, ratio, resize, mutual)
        # imported here so that `import mbp_cli.matching` stays cheap for OpenCV-only use
        import kornia.feature as KF

        self._kf = KF
        self.device = torch.device(device)
        self._sift = KF.SIFTFeature(num_features=self.num_features, upright=False, rootsift=True, device=self.device)
        self._sift.eval()

    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        tensor = torch.from_numpy(image).to(self.device, torch.float32)[None, None] / 255.0
        with torch.inference_mode():
            lafs, _responses, descriptors = self._sift(tensor)
            # kornia pads to num_features slots with all-zero LAFs sharing one descriptor; they would match each
            # other at zero distance, so drop them (kornia's documented way: laf_is_filled, not the response).
            filled = self._kf.laf_is_filled(lafs)[0]
            lafs = lafs[:, filled]
            descriptors = descriptors[:, filled]
            centres = self._kf.get_laf_center(lafs)[0]
            scales = self._kf.get_laf_scale(lafs)[0, :, 0, 0]
            # kornia's orientation grows counter-clockwise on screen: negate it for the image-frame convention.
            angles = -torch.deg2rad(self._kf.get_laf_orientation(lafs)[0, :, 0])
        return (
            centres.double().cpu().numpy(),
            scales.double().cpu().numpy(),
            angles.double().cpu().numpy(),
            descriptors[0].float().cpu().numpy(),
        )
