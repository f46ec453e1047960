"""Camera intrinsics: the :class:`Camera` type, its pixel <-> normalized-coordinate maps, and the parsers.

Pixel convention (the whole package): the **centre** of the top-left pixel is (0, 0), as in OpenCV and kornia.
``Camera.cx, cy`` are always stored in that convention:

- COLMAP (``cameras.txt`` / ``cameras.bin``) puts the **corner** of the top-left pixel at (0, 0); its principal
  point is shifted by -0.5 px on reading.
- Every other format (3x3 matrix text file, inline ``fx,fy,cx,cy``, OpenCV FileStorage YAML/XML/JSON, ROS
  ``camera_info`` YAML) is taken to be in the OpenCV convention already and is used as is.

Distortion follows OpenCV's model and coefficient order ``(k1, k2, p1, p2[, k3[, k4, k5, k6]])`` on normalized
coordinates; COLMAP's SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV are that model with some coefficients zero.

Every user-facing problem raises :class:`~mbp_cli.errors.CalibrationError` with a one-line message that names
the source (file or string) and says what to fix.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from mbp_cli.errors import CalibrationError

__all__ = [
    "SUPPORTED_MODELS",
    "Camera",
    "camera_from_colmap",
    "camera_from_matrix",
    "load_camera",
    "parse_inline",
    "read_colmap_cameras",
    "read_matrix_file",
    "read_opencv_file",
    "resolve_cameras",
    "select_camera",
]

# COLMAP camera models this package supports, with their parameter count and layout. All of them are the OpenCV
# distortion model with some coefficients zero, so one undistortion routine serves them all.
_MODEL_PARAMS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "FULL_OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
}
SUPPORTED_MODELS: tuple[str, ...] = tuple(_MODEL_PARAMS)
_SUPPORTED_TEXT = ", ".join(SUPPORTED_MODELS)

# Every COLMAP model id with its name and parameter count (COLMAP's src/colmap/sensor/models.h). The binary
# format does not store the parameter count, so it is needed to skip over cameras of unsupported models.
_COLMAP_MODEL_IDS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4),
    13: ("DIVISION", 5),
    14: ("SIMPLE_FISHEYE", 3),
    15: ("FISHEYE", 4),
    16: ("EUCM", 6),
    17: ("EQUIRECTANGULAR", 2),
}
_ALL_COLMAP_NAMES = frozenset(name for name, _ in _COLMAP_MODEL_IDS.values())

# COLMAP puts the corner of the top-left pixel at (0, 0); OpenCV/kornia put its centre there.
_COLMAP_TO_OPENCV_SHIFT = -0.5

# Skew below this fraction of the focal length is treated as numerical noise and dropped: ignoring a skew s
# moves a point at the image border by about s * (H / 2) / fy pixels, i.e. < 0.05 px for s < 1e-4 f.
_MAX_SKEW_FRACTION = 1e-4

# Undistortion (Newton) stops when the re-distorted point is this close to the input, in normalized units
# (1e-13 ≈ 1e-10 px at f = 1000 px) — far below keypoint precision, so the inverse is exact for our purposes.
_UNDISTORT_TOL = 1e-13
_UNDISTORT_MAX_ITERS = 100


@dataclass(frozen=True)
class Camera:
    """Intrinsics of one camera, OpenCV pixel convention (centre of the top-left pixel at (0, 0)).

    Build it with :func:`camera_from_matrix`, :func:`camera_from_colmap` or :func:`load_camera`; direct
    construction is validated too (``CalibrationError`` on a bad value).

    Attributes:
        model: COLMAP model name describing the parameters: ``SIMPLE_PINHOLE``, ``PINHOLE``, ``SIMPLE_RADIAL``,
            ``RADIAL``, ``OPENCV`` or ``FULL_OPENCV``.
        width: image width in pixels, None when the calibration source does not say.
        height: image height in pixels, None when unknown.
        fx: focal length along x, pixels (> 0).
        fy: focal length along y, pixels (> 0).
        cx: principal point x, pixels, OpenCV convention.
        cy: principal point y, pixels, OpenCV convention.
        dist: OpenCV distortion coefficients ``(k1, k2, p1, p2[, k3[, k4, k5, k6]])`` — 0, 4, 5 or 8 numbers,
            acting on normalized coordinates. Empty for a pinhole camera.
    """

    model: str
    width: int | None
    height: int | None
    fx: float
    fy: float
    cx: float
    cy: float
    dist: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        # Accept ints and numpy scalars but store plain floats/ints, so that equality, hashing and to_dict() are
        # predictable; then validate (frozen dataclass: fields are set through object.__setattr__).
        for name in ("fx", "fy", "cx", "cy"):
            object.__setattr__(self, name, _to_float(getattr(self, name)))
        object.__setattr__(self, "dist", tuple(_to_float(c) for c in self.dist))
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, np.integer):
                object.__setattr__(self, name, int(v))
        _check_fields("camera", self.model, self.width, self.height, self.fx, self.fy, self.cx, self.cy, self.dist)

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 calibration matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (OpenCV convention)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64)

    @property
    def mean_focal(self) -> float:
        """``(fx + fy) / 2`` in pixels: converts pixel thresholds to normalized units and back."""
        return 0.5 * (self.fx + self.fy)

    @property
    def is_distorted(self) -> bool:
        """Whether any distortion coefficient is nonzero (keypoints then need undistortion)."""
        return any(c != 0.0 for c in self.dist)

    def pixels_to_normalized(self, points: torch.Tensor) -> torch.Tensor:
        """Map distorted pixel coordinates to undistorted normalized camera coordinates.

        ``x = undistort(K⁻¹ [u, v, 1]ᵀ)``: the coordinates on which the epipolar constraint ``x1ᵀ E x0 = 0``
        holds. Undistortion inverts OpenCV's distortion model by damped Newton iterations in float64 until the
        re-distorted point matches the input to ~1e-13 (normalized), i.e. ``normalized_to_pixels`` of the result
        gives back ``points`` to far below 1e-6 px. Points beyond the fold of the distortion polynomial (outside
        the region where the calibration is invertible, never inside a sensibly calibrated image) get the
        best approximation reached.

        Args:
            points: (N, 2) pixel coordinates (u, v), OpenCV convention (centre of the top-left pixel at (0, 0)).
                Any float dtype; computed in float64.

        Returns:
            (N, 2) float64 normalized coordinates (x, y), on the device of ``points`` — the camera ray is
            ``(x, y, 1)``.
        """
        pts = _as_points(points)
        xd = torch.stack(((pts[:, 0] - self.cx) / self.fx, (pts[:, 1] - self.cy) / self.fy), dim=1)
        if not self.is_distorted:
            return xd
        return _undistort_normalized(xd, self.dist)

    def normalized_to_pixels(self, points: torch.Tensor) -> torch.Tensor:
        """Map normalized camera coordinates to distorted pixel coordinates (the inverse of
        :meth:`pixels_to_normalized`): apply the distortion, then K.

        Args:
            points: (N, 2) normalized coordinates (x, y) = (X/Z, Y/Z) of camera-frame points.

        Returns:
            (N, 2) float64 pixel coordinates (u, v), OpenCV convention, on the device of ``points``.
        """
        pts = _as_points(points)
        xd = _distort_normalized(pts, self.dist) if self.is_distorted else pts
        return torch.stack((self.fx * xd[:, 0] + self.cx, self.fy * xd[:, 1] + self.cy), dim=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description for reports (plain floats and ints, convention spelled out)."""
        return {
            "model": self.model,
            "width": self.width,
            "height": self.height,
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "dist": list(self.dist),
            "pixel_convention": "opencv: centre of the top-left pixel at (0, 0)",
        }


# ---------------------------------------------------------------------------------------------------------------
# Validation and construction


def _fmt(v: float) -> str:
    """A number for an error message: short, but exact enough to find it in the file."""
    return f"{v:.10g}"


def _to_float(v: Any) -> Any:
    """float(v) for real numbers (int, numpy scalars); anything else unchanged, for the validator to report."""
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return float(v)
    return v


def _check_fields(
    source: str,
    model: str,
    width: int | None,
    height: int | None,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    dist: tuple[float, ...],
) -> None:
    """Raise CalibrationError, naming ``source``, if the camera values are unusable."""
    if model not in _MODEL_PARAMS:
        raise CalibrationError(f"{source}: camera model {model} is not supported (supported: {_SUPPORTED_TEXT})")
    for name, v in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy)):
        if not isinstance(v, float) or not math.isfinite(v):
            raise CalibrationError(f"{source}: {name} = {v} is not a finite number")
    for name, v in (("fx", fx), ("fy", fy)):
        if v == 0.0:
            raise CalibrationError(f"{source}: {name} = 0 makes K singular; focal lengths must be positive pixels")
        if v < 0.0:
            raise CalibrationError(f"{source}: {name} = {_fmt(v)} is negative; focal lengths must be positive pixels")
    if not all(isinstance(c, float) and math.isfinite(c) for c in dist):
        raise CalibrationError(f"{source}: distortion coefficients {list(dist)} are not all finite numbers")
    if len(dist) not in (0, 4, 5, 8):
        raise CalibrationError(
            f"{source}: {len(dist)} distortion coefficients given; give 4, 5 or 8 (k1,k2,p1,p2[,k3[,k4,k5,k6]])"
        )
    for name, v in (("width", width), ("height", height)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise CalibrationError(f"{source}: image {name} = {v} must be a positive integer")


def _make_camera(
    source: str,
    model: str,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    dist: Sequence[float] = (),
    width: int | None = None,
    height: int | None = None,
) -> Camera:
    """Build a Camera, validating first so that errors name ``source`` rather than a generic "camera"."""
    values = (model, width, height, _to_float(fx), _to_float(fy), _to_float(cx), _to_float(cy))
    dist_t = tuple(_to_float(c) for c in dist)
    _check_fields(source, *values, dist_t)
    return Camera(*values, dist=dist_t)


def camera_from_matrix(
    K: np.ndarray | Sequence[Sequence[float]],
    dist: Sequence[float] | np.ndarray = (),
    width: int | None = None,
    height: int | None = None,
    source: str = "calibration",
) -> Camera:
    """A Camera from a 3x3 calibration matrix (OpenCV convention) and optional OpenCV distortion coefficients.

    The matrix must be ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` with a skew ``s`` of zero (a skew below
    1e-4 of the focal length is dropped as rounding noise; a real skew is refused since no matcher or solver
    in the package models it).

    Args:
        K: (3, 3) calibration matrix, OpenCV pixel convention.
        dist: 0, 4, 5 or 8 OpenCV coefficients ``(k1, k2, p1, p2[, k3[, k4, k5, k6]])``; all zeros means none.
        width: image width in pixels, if known.
        height: image height in pixels, if known.
        source: how to name the origin in error messages, e.g. ``"calibration file calib.txt"``.

    Returns:
        The camera; ``model`` is PINHOLE without distortion, OPENCV for ``(k1, k2, p1, p2)`` (or a zero k3), and
        FULL_OPENCV for 5 or 8 coefficients.

    Raises:
        CalibrationError: wrong shape, non-finite entries, singular or non-positive focal lengths, a last row
            other than (0, 0, 1), nonzero skew or lower-triangular entries, or a bad number of coefficients.
    """
    try:
        k = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{source}: the calibration matrix is not numeric") from exc
    if k.shape != (3, 3):
        raise CalibrationError(f"{source}: expected a 3x3 calibration matrix, got shape {tuple(k.shape)}")
    if not np.all(np.isfinite(k)):
        raise CalibrationError(f"{source}: the calibration matrix has non-finite entries (NaN or inf)")
    if not np.allclose(k[2], (0.0, 0.0, 1.0), rtol=0.0, atol=1e-9):
        raise CalibrationError(f"{source}: the last row of K must be 0 0 1, found {' '.join(_fmt(v) for v in k[2])}")
    fx, fy = float(k[0, 0]), float(k[1, 1])
    if fx == 0.0 or fy == 0.0:
        raise CalibrationError(
            f"{source}: K is singular (fx = {_fmt(fx)}, fy = {_fmt(fy)}); focal lengths must be positive"
        )
    if k[1, 0] != 0.0:
        raise CalibrationError(f"{source}: K[1][0] = {_fmt(k[1, 0])} must be 0 (K is upper-triangular)")
    skew = float(k[0, 1])
    if abs(skew) > _MAX_SKEW_FRACTION * min(abs(fx), abs(fy)):
        raise CalibrationError(f"{source}: K has skew K[0][1] = {_fmt(skew)}; only zero skew is supported, set it to 0")
    coeffs = np.asarray(dist, dtype=np.float64).ravel()
    if coeffs.size and not np.all(np.isfinite(coeffs)):
        raise CalibrationError(f"{source}: distortion coefficients {coeffs.tolist()} are not all finite numbers")
    if coeffs.size not in (0, 4, 5, 8):
        raise CalibrationError(
            f"{source}: {coeffs.size} distortion coefficients given; give 4, 5 or 8 (k1,k2,p1,p2[,k3[,k4,k5,k6]])"
        )
    if not np.any(coeffs):
        model, coeffs_t = "PINHOLE", ()
    elif coeffs.size == 4 or (coeffs.size == 5 and coeffs[4] == 0.0):
        model, coeffs_t = "OPENCV", tuple(coeffs[:4].tolist())
    else:
        model, coeffs_t = "FULL_OPENCV", tuple(coeffs.tolist())
    return _make_camera(source, model, fx, fy, float(k[0, 2]), float(k[1, 2]), coeffs_t, width, height)


def camera_from_colmap(
    model: str,
    width: int | None,
    height: int | None,
    params: Sequence[float],
    source: str = "COLMAP camera",
) -> Camera:
    """A Camera from COLMAP parameters; shifts the principal point by -0.5 px to the OpenCV convention.

    Args:
        model: COLMAP model name (see ``SUPPORTED_MODELS``).
        width: image width, pixels.
        height: image height, pixels.
        params: the model's parameters in COLMAP order (e.g. OPENCV: fx fy cx cy k1 k2 p1 p2), COLMAP pixel
            convention (corner of the top-left pixel at (0, 0)).
        source: how to name the origin in error messages.

    Returns:
        The camera with ``cx, cy`` = COLMAP's minus 0.5 and distortion in OpenCV order.

    Raises:
        CalibrationError: unsupported model, wrong number of parameters, or invalid values.
    """
    model = model.upper()
    if model not in _MODEL_PARAMS:
        raise CalibrationError(f"{source}: camera model {model} is not supported (supported: {_SUPPORTED_TEXT})")
    names = _MODEL_PARAMS[model]
    p = [float(v) for v in params]
    if len(p) != len(names):
        raise CalibrationError(
            f"{source}: model {model} takes {len(names)} parameters ({' '.join(names)}), found {len(p)}"
        )
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        extra = p[3:]
    else:
        fx, fy, cx, cy = p[:4]
        extra = p[4:]
    if model == "SIMPLE_RADIAL":
        dist: tuple[float, ...] = (extra[0], 0.0, 0.0, 0.0)
    elif model == "RADIAL":
        dist = (extra[0], extra[1], 0.0, 0.0)
    else:  # OPENCV and FULL_OPENCV store OpenCV's order already; pinholes have none
        dist = tuple(extra)
    return _make_camera(
        source,
        model,
        fx,
        fy,
        cx + _COLMAP_TO_OPENCV_SHIFT,
        cy + _COLMAP_TO_OPENCV_SHIFT,
        dist,
        width,
        height,
    )


# ---------------------------------------------------------------------------------------------------------------
# Distortion model (OpenCV rational + tangential) on normalized coordinates, batched in torch float64


def _as_points(points: torch.Tensor) -> torch.Tensor:
    """Validate an (N, 2) point tensor and return it as float64."""
    if not isinstance(points, torch.Tensor):
        points = torch.as_tensor(np.asarray(points))
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"expected an (N, 2) tensor of points, got shape {tuple(points.shape)}")
    return points.to(torch.float64)


def _coeffs8(dist: Sequence[float]) -> tuple[float, ...]:
    """Pad OpenCV coefficients to (k1, k2, p1, p2, k3, k4, k5, k6)."""
    return tuple(dist) + (0.0,) * (8 - len(dist))


def _distort_normalized(x: torch.Tensor, dist: Sequence[float]) -> torch.Tensor:
    """OpenCV's distortion on normalized coordinates.

    ``a = (1 + k1 r² + k2 r⁴ + k3 r⁶) / (1 + k4 r² + k5 r⁴ + k6 r⁶)``,
    ``xd = x a + 2 p1 x y + p2 (r² + 2x²)``, ``yd = y a + p1 (r² + 2y²) + 2 p2 x y``.

    Args:
        x: (N, 2) float64 undistorted normalized coordinates.
        dist: OpenCV coefficients (4, 5 or 8).

    Returns:
        (N, 2) distorted normalized coordinates.
    """
    k1, k2, p1, p2, k3, k4, k5, k6 = _coeffs8(dist)
    u, v = x[:, 0], x[:, 1]
    r2 = u * u + v * v
    a = (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1.0 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = u * a + 2.0 * p1 * u * v + p2 * (r2 + 2.0 * u * u)
    yd = v * a + p1 * (r2 + 2.0 * v * v) + 2.0 * p2 * u * v
    return torch.stack((xd, yd), dim=1)


def _distort_jacobian(x: torch.Tensor, dist: Sequence[float]) -> torch.Tensor:
    """(N, 2, 2) Jacobian of :func:`_distort_normalized` with respect to (x, y), analytic."""
    k1, k2, p1, p2, k3, k4, k5, k6 = _coeffs8(dist)
    u, v = x[:, 0], x[:, 1]
    r2 = u * u + v * v
    num = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    den = 1.0 + r2 * (k4 + r2 * (k5 + r2 * k6))
    dnum = k1 + r2 * (2.0 * k2 + 3.0 * k3 * r2)  # d num / d r²
    dden = k4 + r2 * (2.0 * k5 + 3.0 * k6 * r2)
    a = num / den
    da = (dnum * den - num * dden) / (den * den)  # d a / d r²; d r² / du = 2u
    j00 = a + 2.0 * u * u * da + 2.0 * p1 * v + 6.0 * p2 * u
    j01 = 2.0 * u * v * da + 2.0 * p1 * u + 2.0 * p2 * v
    j11 = a + 2.0 * v * v * da + 6.0 * p1 * v + 2.0 * p2 * u
    return torch.stack((torch.stack((j00, j01), dim=1), torch.stack((j01, j11), dim=1)), dim=1)


def _undistort_normalized(xd: torch.Tensor, dist: Sequence[float]) -> torch.Tensor:
    """Invert :func:`_distort_normalized` by damped Newton iterations, batched.

    Newton converges quadratically from the distorted point itself for any realistic lens, where OpenCV's
    fixed-point iteration converges only linearly (and stops at ~1e-6 relative with its default criteria). A step
    is halved until the residual decreases, so points near the edge of the invertible region do not jump away.

    Args:
        xd: (N, 2) float64 distorted normalized coordinates.
        dist: OpenCV coefficients.

    Returns:
        (N, 2) float64 undistorted normalized coordinates.
    """
    x = xd.clone()
    res = _distort_normalized(x, dist) - xd
    err = res.square().sum(dim=1)
    active = err > _UNDISTORT_TOL**2
    for _ in range(_UNDISTORT_MAX_ITERS):
        if not bool(active.any()):
            break
        idx = active.nonzero().squeeze(1)
        xa, ra, ea = x[idx], res[idx], err[idx]
        j = _distort_jacobian(xa, dist)
        det = j[:, 0, 0] * j[:, 1, 1] - j[:, 0, 1] * j[:, 1, 0]
        # Explicit 2x2 solve J dx = -r; a singular J (fold of the polynomial) gives a non-finite step, rejected below.
        dx0 = -(j[:, 1, 1] * ra[:, 0] - j[:, 0, 1] * ra[:, 1]) / det
        dx1 = -(-j[:, 1, 0] * ra[:, 0] + j[:, 0, 0] * ra[:, 1]) / det
        step = torch.stack((dx0, dx1), dim=1)
        alpha = torch.ones_like(ea)
        accepted = torch.zeros_like(ea, dtype=torch.bool)
        new_x, new_r, new_e = xa.clone(), ra.clone(), ea.clone()
        for _ in range(30):  # backtracking: halve the step until the residual decreases
            cand = xa + alpha[:, None] * step
            rc = _distort_normalized(cand, dist) - xd[idx]
            ec = rc.square().sum(dim=1)
            ok = ~accepted & torch.isfinite(ec) & (ec < ea)
            new_x[ok], new_r[ok], new_e[ok] = cand[ok], rc[ok], ec[ok]
            accepted |= ok
            if bool(accepted.all()):
                break
            alpha = torch.where(accepted, alpha, 0.5 * alpha)
        x[idx], res[idx], err[idx] = new_x, new_r, new_e
        # Stop a point once converged, or when no step improves it (converged to rounding, or stuck at a fold).
        still = accepted & (new_e > _UNDISTORT_TOL**2)
        active[idx] = still
    return x


# ---------------------------------------------------------------------------------------------------------------
# Parsers

_NUMBER_SPLIT = re.compile(r"[\s,;]+")
_NUMERIC_RE = re.compile(r"^[\s,]*[-+0-9.eE]+([\s,]+[-+0-9.eE]+)*[\s,]*$")
_COLMAP_LINE_RE = re.compile(r"^\s*\d+\s+([A-Z_]+)\s+\d+\s+\d+(\s|$)", re.MULTILINE)


def _parse_numbers(tokens: Sequence[str], source: str, line_of: Sequence[int] | None = None) -> list[float]:
    """Convert tokens to floats, raising a CalibrationError that names the offending token (and line)."""
    out = []
    for i, tok in enumerate(tokens):
        try:
            out.append(float(tok))
        except ValueError:
            where = f" (line {line_of[i]})" if line_of is not None else ""
            raise CalibrationError(f"{source}: '{tok}' is not a number{where}") from None
    return out


def _read_text(path: Path, source: str) -> str:
    """The file's text; errors for unreadable, binary or empty files."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CalibrationError(f"{source}: not a text file (expected numbers as text)") from None
    except OSError as exc:
        raise CalibrationError(f"{source}: cannot be read ({exc.strerror or exc})") from exc
    if not text.strip():
        raise CalibrationError(f"{source}: the file is empty")
    return text


def read_matrix_file(path: str | os.PathLike[str]) -> Camera:
    """Read a text file holding a 3x3 calibration matrix K (OpenCV convention, no distortion).

    Nine numbers in row-major order, separated by whitespace, commas or semicolons, over any number of lines;
    ``#`` starts a comment; brackets (``[[...]]`` as numpy prints) are ignored.

    Args:
        path: the text file.

    Returns:
        A PINHOLE camera (width and height unknown).

    Raises:
        CalibrationError: unreadable or empty file, a token that is not a number, not exactly 9 numbers, or an
            invalid matrix (see :func:`camera_from_matrix`).
    """
    p = Path(path)
    source = f"calibration file {p}"
    text = _read_text(p, source)
    tokens: list[str] = []
    lines: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].replace("[", " ").replace("]", " ")
        for tok in _NUMBER_SPLIT.split(line.strip()):
            if tok:
                tokens.append(tok)
                lines.append(lineno)
    values = _parse_numbers(tokens, source, lines)
    if len(values) != 9:
        raise CalibrationError(f"{source}: expected 9 numbers for a 3x3 matrix, found {len(values)}")
    return camera_from_matrix(np.array(values).reshape(3, 3), source=source)


def parse_inline(spec: str) -> Camera:
    """Parse an inline calibration string (OpenCV convention, no distortion).

    Accepted: ``fx,fy,cx,cy`` (4 numbers), ``f,cx,cy`` (3 numbers, fx = fy = f) or the 9 entries of K row by
    row. Commas and/or whitespace separate the numbers.

    Args:
        spec: the string, e.g. ``"1375.5,1374.5,554.5,965.3"``.

    Returns:
        A PINHOLE camera (width and height unknown).

    Raises:
        CalibrationError: a token that is not a number, a wrong count, or invalid values.
    """
    source = f"calibration '{spec}'"
    tokens = [t for t in re.split(r"[\s,]+", spec.strip()) if t]
    values = []
    for tok in tokens:
        try:
            values.append(float(tok))
        except ValueError:
            raise CalibrationError(
                f"calibration '{spec}' is neither a file nor fx,fy,cx,cy ('{tok}' is not a number)"
            ) from None
    if len(values) == 4:
        fx, fy, cx, cy = values
    elif len(values) == 3:
        fx, cx, cy = values
        fy = fx
    elif len(values) == 9:
        return camera_from_matrix(np.array(values).reshape(3, 3), source=source)
    else:
        raise CalibrationError(f"{source}: expected 4 numbers fx,fy,cx,cy (or 3: f,cx,cy), found {len(values)}")
    return _make_camera(source, "PINHOLE", fx, fy, cx, cy)


_K_NODES = ("camera_matrix", "K", "cameraMatrix", "camera_matrix_0", "intrinsics", "M")
_DIST_NODES = ("distortion_coefficients", "dist_coeffs", "D", "distCoeffs", "dist", "distortion")
_WIDTH_NODES = ("image_width", "width", "imageWidth")
_HEIGHT_NODES = ("image_height", "height", "imageHeight")


def _fs_node_values(node: Any) -> np.ndarray | None:
    """Numbers of a FileStorage node: an ``!!opencv-matrix``, a sequence, a ROS-style ``{rows, cols, data}`` map,
    or a single number. None when the node is missing or holds no numbers."""
    if node is None or node.empty():
        return None
    if node.isMap():
        # An !!opencv-matrix / <opencv-matrix> is a map with rows, cols, dt and data; a ROS camera_info map has
        # rows, cols and data but no dt, which node.mat() refuses: read its data list directly.
        if not node.getNode("dt").empty():
            try:
                mat = node.mat()
            except cv2.error:
                mat = None
            if mat is not None:
                return np.asarray(mat, dtype=np.float64)
        data = node.getNode("data")
        return _fs_node_values(data) if not data.empty() else None
    if node.isSeq():
        vals = []
        for i in range(node.size()):
            item = node.at(i)
            if not (item.isReal() or item.isInt()):
                return None
            vals.append(item.real())
        return np.asarray(vals, dtype=np.float64)
    if node.isReal() or node.isInt():
        return np.asarray([node.real()], dtype=np.float64)
    return None  # a string or another non-numeric node


def _fs_first(fs: Any, names: Sequence[str]) -> tuple[str | None, Any]:
    """The first of ``names`` present at the root of a FileStorage, with its node."""
    for name in names:
        node = fs.getNode(name)
        if not node.empty():
            return name, node
    return None, None


def read_opencv_file(path: str | os.PathLike[str]) -> Camera:
    """Read an OpenCV FileStorage calibration (YAML, XML or JSON), e.g. from ``cv2.calibrateCamera`` samples or
    a ROS ``camera_info`` YAML. Values are taken to be in the OpenCV pixel convention.

    Nodes (first found wins): K from ``camera_matrix`` / ``K`` / ``cameraMatrix`` (an ``!!opencv-matrix``, a list
    of 9 numbers, or a ``{rows, cols, data}`` map); optional distortion from ``distortion_coefficients`` /
    ``dist_coeffs`` / ``D`` / ``distCoeffs`` (0, 4, 5 or 8 numbers); optional ``image_width``, ``image_height``.

    Args:
        path: the ``.yaml`` / ``.yml`` / ``.xml`` / ``.json`` file.

    Returns:
        The camera (PINHOLE, OPENCV or FULL_OPENCV depending on the distortion coefficients).

    Raises:
        CalibrationError: the file does not parse, has no camera matrix, or holds invalid values.
    """
    p = Path(path)
    source = f"calibration file {p}"
    _read_text(p, source)  # clear errors for empty / binary files before OpenCV's parser sees them
    detail = ""
    try:
        # cv2.FileStorage cannot open non-ASCII paths on every platform; parse from memory instead.
        fs = cv2.FileStorage(p.read_text(encoding="utf-8"), cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY)
    except (cv2.error, SystemError) as exc:  # the bindings wrap parser errors in a SystemError
        fs = None
        # OpenCV's message ends with "in function '(LINE): WHAT'"; keep just that for a one-line error.
        m = re.search(r"in function '\((\d+)\): ([^'\n]*)'", str(exc.__cause__ or exc))
        if m:
            detail = f" (line {m.group(1)}: {m.group(2).strip()})"
    if fs is None or not fs.isOpened():
        raise CalibrationError(f"{source}: not a valid OpenCV YAML/XML/JSON file{detail}; check its syntax")
    try:
        name, node = _fs_first(fs, _K_NODES)
        if node is None:
            raise CalibrationError(f"{source}: no camera matrix found; add a 'camera_matrix' node (3x3)")
        k = _fs_node_values(node)
        if k is None or k.size != 9:
            found = 0 if k is None else k.size
            raise CalibrationError(f"{source}: node '{name}' must hold a 3x3 matrix (9 numbers), found {found}")
        _, dnode = _fs_first(fs, _DIST_NODES)
        dist = _fs_node_values(dnode) if dnode is not None else None
        size: list[int | None] = []
        for names in (_WIDTH_NODES, _HEIGHT_NODES):
            _, snode = _fs_first(fs, names)
            v = _fs_node_values(snode) if snode is not None else None
            size.append(int(v[0]) if v is not None and v.size == 1 and float(v[0]).is_integer() else None)
    finally:
        fs.release()
    return camera_from_matrix(
        k.reshape(3, 3),
        dist if dist is not None else (),
        width=size[0],
        height=size[1],
        source=source,
    )


@dataclass(frozen=True)
class _ColmapEntry:
    """One camera line/record of a COLMAP model before conversion (conversion may fail for unsupported models)."""

    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]
    where: str  # e.g. "line 4" or "record 2", for messages


def _read_colmap_cameras_txt(path: str | os.PathLike[str]) -> dict[int, _ColmapEntry]:
    """Parse the lines of a COLMAP ``cameras.txt`` (``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...``).

    Models are not converted here, so that a file may hold cameras of unsupported models as long as the selected
    one is supported (see :func:`read_colmap_cameras`).

    Raises:
        CalibrationError: unreadable file, malformed line, unknown model name or duplicate camera id.
    """
    p = Path(path)
    source = f"calibration file {p}"
    text = _read_text(p, source)
    entries: dict[int, _ColmapEntry] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tok = line.split()
        if len(tok) < 4:
            raise CalibrationError(
                f"{source} line {lineno}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS..., found '{line}'"
            )
        try:
            cam_id, width, height = int(tok[0]), int(tok[2]), int(tok[3])
        except ValueError:
            raise CalibrationError(
                f"{source} line {lineno}: CAMERA_ID, WIDTH and HEIGHT must be integers, found '{line}'"
            ) from None
        model = tok[1].upper()
        if model not in _ALL_COLMAP_NAMES:
            raise CalibrationError(
                f"{source} line {lineno}: unknown camera model {tok[1]} (supported: {_SUPPORTED_TEXT})"
            )
        params = tuple(_parse_numbers(tok[4:], f"{source} line {lineno}"))
        if cam_id in entries:
            raise CalibrationError(f"{source} line {lineno}: camera id {cam_id} appears twice")
        entries[cam_id] = _ColmapEntry(cam_id, model, width, height, params, f"line {lineno}")
    if not entries:
        raise CalibrationError(f"{source}: no camera found (only comments or blank lines)")
    return entries


def _read_colmap_cameras_bin(path: str | os.PathLike[str]) -> dict[int, _ColmapEntry]:
    """Parse a COLMAP ``cameras.bin``.

    Little-endian layout: ``uint64 num_cameras``, then per camera ``uint32 camera_id, int32 model_id,
    uint64 width, uint64 height, float64 params[n(model)]``.

    Raises:
        CalibrationError: unreadable or truncated file, unknown model id, trailing bytes, duplicate camera id.
    """
    p = Path(path)
    source = f"calibration file {p}"
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CalibrationError(f"{source}: cannot be read ({exc.strerror or exc})") from exc
    entries: dict[int, _ColmapEntry] = {}
    try:
        (num,) = struct.unpack_from("<Q", data, 0)
        off = 8
        for rec in range(num):
            cam_id, model_id, width, height = struct.unpack_from("<IiQQ", data, off)
            off += 24
            if model_id not in _COLMAP_MODEL_IDS:
                raise CalibrationError(f"{source}: camera record {rec + 1} has unknown COLMAP model id {model_id}")
            model, n = _COLMAP_MODEL_IDS[model_id]
            params = struct.unpack_from(f"<{n}d", data, off)
            off += 8 * n
            if cam_id in entries:
                raise CalibrationError(f"{source}: camera id {cam_id} appears twice")
            entries[cam_id] = _ColmapEntry(cam_id, model, int(width), int(height), tuple(params), f"record {rec + 1}")
    except struct.error:
        raise CalibrationError(f"{source}: truncated or not a COLMAP cameras.bin file") from None
    if off != len(data):
        raise CalibrationError(
            f"{source}: {len(data) - off} unexpected bytes after the cameras; not a cameras.bin file"
        )
    if not entries:
        raise CalibrationError(f"{source}: the file holds no camera")
    return entries


def _read_colmap_entries(path: Path) -> dict[int, _ColmapEntry]:
    """The raw camera entries of a COLMAP ``cameras.bin`` (by extension) or ``cameras.txt``."""
    return _read_colmap_cameras_bin(path) if path.suffix.lower() == ".bin" else _read_colmap_cameras_txt(path)


def _convert_entry(entry: _ColmapEntry, source: str) -> Camera:
    """Convert one parsed COLMAP camera, with errors naming the file and the camera."""
    where = f"{source} (camera {entry.camera_id}, {entry.where})"
    return camera_from_colmap(entry.model, entry.width, entry.height, entry.params, source=where)


def read_colmap_cameras(path: str | os.PathLike[str], errors: dict[int, str] | None = None) -> dict[int, Camera]:
    """All cameras of a COLMAP ``cameras.txt`` or ``cameras.bin`` (by extension), principal points shifted to
    the OpenCV convention (-0.5 px).

    Args:
        path: the cameras file.
        errors: if given, a camera that cannot be converted (unsupported model, invalid values) is left out of
            the result and its message stored here under its id, instead of raising; ``mbp eval`` then reports
            the pairs that use it.

    Returns:
        camera_id → Camera, in file order.

    Raises:
        CalibrationError: malformed file, or (without ``errors``) any camera of an unsupported model or with
            invalid values.
    """
    p = Path(path)
    entries = _read_colmap_entries(p)
    cameras: dict[int, Camera] = {}
    for cid, entry in entries.items():
        try:
            cameras[cid] = _convert_entry(entry, f"calibration file {p}")
        except CalibrationError as exc:
            if errors is None:
                raise
            errors[cid] = exc.message
    return cameras


def select_camera(path: str | os.PathLike[str], camera_id: int | None = None) -> Camera:
    """One camera of a COLMAP ``cameras.txt`` / ``cameras.bin``.

    Args:
        path: the cameras file (``.bin`` → binary, otherwise text).
        camera_id: the COLMAP camera id; may be omitted when the file holds a single camera.

    Returns:
        The camera, principal point shifted to the OpenCV convention.

    Raises:
        CalibrationError: several cameras and no id, an id not in the file, or an invalid/unsupported camera.
    """
    p = Path(path)
    source = f"calibration file {p}"
    entries = _read_colmap_entries(p)
    id_list = list(entries)
    # Name the ids so the user can pick one, but keep the message one readable line for big models.
    ids = ", ".join(str(i) for i in id_list[:12]) + (", ..." if len(id_list) > 12 else "")
    if camera_id is None:
        if len(entries) > 1:
            raise CalibrationError(f"{p.name} holds {len(entries)} cameras (ids {ids}); pass --camera-id")
        entry = next(iter(entries.values()))
    else:
        if camera_id not in entries:
            raise CalibrationError(f"{source}: no camera with id {camera_id} (ids: {ids}); check --camera-id")
        entry = entries[camera_id]
    return _convert_entry(entry, source)


# ---------------------------------------------------------------------------------------------------------------
# Dispatch

_OPENCV_SUFFIXES = (".yaml", ".yml", ".xml", ".json")


def _colmap_file_in(directory: Path) -> Path | None:
    """cameras.bin / cameras.txt inside a COLMAP model folder (binary first, as COLMAP reads it)."""
    for sub in (directory, directory / "sparse", directory / "sparse" / "0"):
        for name in ("cameras.bin", "cameras.txt"):
            if (sub / name).is_file():
                return sub / name
    return None


def _classify(spec: str) -> tuple[str, Path | None]:
    """What a calibration spec is: ('colmap_bin' | 'colmap_txt' | 'opencv' | 'matrix', path) for files,
    ('inline', None) for numbers, ('unknown', None) otherwise."""
    p = Path(spec).expanduser()
    if p.is_dir():
        found = _colmap_file_in(p)
        if found is None:
            raise CalibrationError(f"calibration '{spec}' is a directory without cameras.txt or cameras.bin")
        p = found
    if p.is_file():
        name, suffix = p.name.lower(), p.suffix.lower()
        if suffix == ".bin":
            return "colmap_bin", p
        if suffix in _OPENCV_SUFFIXES:
            return "opencv", p
        if name == "cameras.txt":
            return "colmap_txt", p
        try:
            head = p.read_bytes()[:65536].decode("utf-8", errors="replace")
        except OSError as exc:
            raise CalibrationError(f"calibration file {p}: cannot be read ({exc.strerror or exc})") from exc
        stripped = head.lstrip()
        if stripped.startswith(("%YAML", "<?xml", "<opencv_storage")):
            return "opencv", p
        if any(m.group(1) in _ALL_COLMAP_NAMES for m in _COLMAP_LINE_RE.finditer(head)):
            return "colmap_txt", p
        return "matrix", p
    # Comma-separated (or purely numeric) text that is not a file: an inline calibration. A bad token there is
    # reported by parse_inline, with the "neither a file nor numbers" wording.
    if "," in spec or _NUMERIC_RE.match(spec):
        return "inline", None
    return "unknown", None


def load_camera(spec: str, camera_id: int | None = None) -> Camera:
    """Load one camera from a calibration spec.

    Dispatch:
      - an existing file: ``.yaml/.yml/.xml/.json`` (or YAML/XML content) → OpenCV FileStorage; ``.bin`` →
        COLMAP ``cameras.bin``; named ``cameras.txt`` or holding COLMAP camera lines → COLMAP text; anything else
        → a 3x3 matrix text file;
      - an existing folder with ``cameras.bin``/``cameras.txt`` (directly, in ``sparse/`` or ``sparse/0/``) →
        that COLMAP file;
      - otherwise, numbers separated by commas → inline ``fx,fy,cx,cy`` / ``f,cx,cy``.

    COLMAP principal points are shifted by -0.5 px; every other format is taken as OpenCV convention already.

    Args:
        spec: a path or an inline string.
        camera_id: COLMAP camera id; needed when a COLMAP file holds several cameras; refused for other formats.

    Returns:
        The camera.

    Raises:
        CalibrationError: the spec is neither a file nor numbers, or its content is invalid (one-line message).
    """
    kind, path = _classify(spec.strip())
    if camera_id is not None and kind not in ("colmap_txt", "colmap_bin"):
        raise CalibrationError(
            f"--camera-id {camera_id} only applies to COLMAP cameras.txt/cameras.bin files, not to '{spec}'"
        )
    if kind in ("colmap_txt", "colmap_bin"):
        assert path is not None
        return select_camera(path, camera_id)
    if kind == "opencv":
        assert path is not None
        return read_opencv_file(path)
    if kind == "matrix":
        assert path is not None
        return read_matrix_file(path)
    if kind == "inline":
        return parse_inline(spec)
    raise CalibrationError(f"calibration '{spec}' is neither a file nor fx,fy,cx,cy")


def colmap_image_cameras(cameras_file: Path) -> tuple[Path, dict[str, int]] | None:
    """The images file beside a COLMAP ``cameras_file`` (``images.bin`` first, else ``images.txt``) and its image
    names' camera ids, or None when the model has no images file.

    Raises:
        CalibrationError: an unreadable or malformed images file.
    """
    from mbp_cli.io.colmap import read_images_bin, read_images_txt

    folder = cameras_file.parent
    images_file = next((folder / n for n in ("images.bin", "images.txt") if (folder / n).is_file()), None)
    if images_file is None:
        return None
    images = read_images_bin(images_file) if images_file.suffix == ".bin" else read_images_txt(images_file)
    return images_file, {name: image.camera_id for name, image in images.items()}


def camera_id_by_name(images_file: Path, camera_ids: dict[str, int], image: str) -> int | None:
    """The camera id of ``image`` (a path; matched by file name) among a COLMAP model's image names.

    COLMAP names images relative to its image folder, possibly with sub-folders, so a name matches when it is the
    image's file name or ends with ``/<file name>``; with several such names the longest one that the image's path
    ends with wins. ``camera_ids`` (name → id) and ``images_file`` (named in errors) come from
    :func:`colmap_image_cameras`.

    Returns:
        The id, or None when the model does not hold the image.

    Raises:
        CalibrationError: a file name that matches several images of different cameras equally well.
    """
    path = Path(image).expanduser().resolve().as_posix()
    basename = Path(image).name
    candidates = [n for n in camera_ids if n == basename or n.endswith("/" + basename)]
    # Prefer the names that the image's own path ends with (sub-folder names agree), longest first.
    agreeing = sorted((n for n in candidates if path.endswith("/" + n)), key=len, reverse=True)
    if agreeing and (len(agreeing) == 1 or len(agreeing[0]) > len(agreeing[1])):
        return camera_ids[agreeing[0]]
    if len({camera_ids[n] for n in candidates}) == 1:
        return camera_ids[candidates[0]]
    if candidates:
        shown = ", ".join(candidates[:4]) + (", ..." if len(candidates) > 4 else "")
        raise CalibrationError(
            f"{images_file}: several images are called {basename} ({shown}); pass the camera id with --camera-id0/1"
        )
    return None


def resolve_cameras(
    K: str | None,
    K0: str | None,
    K1: str | None,
    camera_id: int | None = None,
    *,
    camera_id0: int | None = None,
    camera_id1: int | None = None,
    image0: str | None = None,
    image1: str | None = None,
) -> tuple[Camera, Camera]:
    """The cameras of image 0 and image 1 from the command-line options.

    Either ``K`` alone (a calibration of both images) or both ``K0`` and ``K1``. ``camera_id`` selects a camera in
    COLMAP files (the same id for both images); ``camera_id0`` / ``camera_id1`` override it per image (two images of
    one COLMAP model taken by different cameras, from ``K`` or from ``K0`` and ``K1``). An id is only passed to
    COLMAP specs, and is an error if no spec is a COLMAP file. When a COLMAP model holds several cameras and no id
    is given for an image, the image's camera is looked up by its file name (``image0`` / ``image1``) in the
    model's ``images.bin`` / ``images.txt`` (:func:`colmap_image_cameras`, :func:`camera_id_by_name`).

    Args:
        K: spec for both images (see :func:`load_camera`), or None.
        K0: spec for image 0, or None.
        K1: spec for image 1, or None.
        camera_id: COLMAP camera id for both images, or None.
        camera_id0: COLMAP camera id for image 0 (overrides ``camera_id``).
        camera_id1: COLMAP camera id for image 1 (overrides ``camera_id``).
        image0, image1: the images' paths, to find their cameras in a multi-camera COLMAP model.

    Returns:
        (camera of image 0, camera of image 1) — the same object twice when both come from one camera.

    Raises:
        CalibrationError: a wrong combination of options, or an invalid calibration.
    """
    if K is not None and (K0 is not None or K1 is not None):
        raise CalibrationError("give --K for both images or both --K0 and --K1, not --K together with --K0/--K1")
    if K is None and K0 is None and K1 is None:
        raise CalibrationError("no calibration given; give --K for both images or both --K0 and --K1")
    if K is None and (K0 is None or K1 is None):
        missing = "--K1" if K1 is None else "--K0"
        raise CalibrationError(f"{missing} is missing; give --K for both images or both --K0 and --K1")
    specs = (K, K) if K is not None else (K0, K1)
    assert specs[0] is not None and specs[1] is not None
    ids = [camera_id0 if camera_id0 is not None else camera_id, camera_id1 if camera_id1 is not None else camera_id]
    kinds = [_classify(spec.strip()) for spec in specs]
    is_colmap = [kind in ("colmap_txt", "colmap_bin") for kind, _ in kinds]
    if (ids[0] is not None or ids[1] is not None) and not any(is_colmap):
        if K is not None:
            given = ids[0] if ids[0] is not None else ids[1]
            raise CalibrationError(
                f"--camera-id {given} only applies to COLMAP cameras.txt/cameras.bin files, not to '{K}'"
            )
        raise CalibrationError("--camera-id only applies to COLMAP cameras.txt/cameras.bin calibrations")
    # Each model's files are read once, also when both images' cameras come from it (--K).
    lookups: dict[Path, tuple[Path, dict[str, int]] | None] = {}
    for n, image in enumerate((image0, image1)):
        path = kinds[n][1]
        if ids[n] is None and is_colmap[n] and image is not None and path is not None:
            if path not in lookups:
                lookups[path] = colmap_image_cameras(path) if len(_read_colmap_entries(path)) > 1 else None
            lookup = lookups[path]
            if lookup is not None:
                ids[n] = camera_id_by_name(*lookup, image)
    if K is not None and ids[0] == ids[1]:
        cam = load_camera(K, ids[0])
        return cam, cam
    cam0 = load_camera(specs[0], ids[0] if is_colmap[0] else None)
    cam1 = load_camera(specs[1], ids[1] if is_colmap[1] else None)
    return cam0, cam1
