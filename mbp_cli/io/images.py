"""Reading the two input images, and the checks that make a pair worth matching.

Images are read **exactly as stored**: no EXIF rotation, no resizing. A calibration (K, principal point,
distortion) refers to the stored pixel grid, and so do keypoints (``Matches`` holds full-resolution pixel
coordinates with the centre of the top-left pixel at (0, 0)). Applying the EXIF orientation tag would rotate the
pixel grid under the calibration — a phone portrait photo stored landscape would get cx and cy swapped — and
silently ruin the pose, so the tag is ignored on purpose.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from mbp_cli.errors import ImageError

__all__ = ["check_pair_distinct", "is_textureless", "load_image"]

# Gradient magnitude (grey levels per pixel, central differences) above which a pixel counts as "textured".
# Sensor noise on a flat wall is ~1-2 levels; the weakest real texture in the development scenes (dino: a
# white plaster figure on black) has thousands of pixels far above this.
_TEXTURE_GRADIENT = 8.0
# A matchable image needs at least this many textured pixels, absolute and relative to the image size. Both
# thresholds are low on purpose: the check must only catch images with *nothing* to match (blank, constant,
# smooth ramps, heavy blur), never merely weak texture, which the matcher and the estimator judge better.
_MIN_TEXTURED_PIXELS = 64
_MIN_TEXTURED_FRACTION = 2e-4


def load_image(path: str | os.PathLike[str], color: bool = False) -> np.ndarray:
    """Read an image file as stored on disk.

    The file is read with ``np.fromfile`` and decoded with ``cv2.imdecode`` rather than ``cv2.imread``, so that
    paths with non-ASCII characters work on every platform. ``cv2.IMREAD_IGNORE_ORIENTATION`` keeps the stored
    pixel grid (see the module docstring: the calibration refers to it). Images with 16-bit or float samples are
    converted to 8 bits by OpenCV's usual rules.

    Args:
        path: the image file (any format OpenCV decodes: PNG, JPEG, TIFF, BMP, WebP, ...).
        color: False (default) → grayscale, the input of the matchers; True → RGB, for visualisation.

    Returns:
        ``color=False``: (H, W) uint8 grayscale array. ``color=True``: (H, W, 3) uint8 array in **RGB** order
        (OpenCV decodes BGR; converted here so that matplotlib and PIL show it right). Pixel (row, col) is the
        pixel whose centre has keypoint coordinates (x=col, y=row).

    Raises:
        ImageError: the file is missing, is a directory, cannot be read, is empty, or does not decode as an image.
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"image {p} does not exist; check the path")
    if p.is_dir():
        raise ImageError(f"image {p} is a directory; give an image file")
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:  # permission denied, I/O error, special file
        raise ImageError(f"image {p} cannot be read ({exc.strerror or exc}); check its permissions") from exc
    if data.size == 0:
        raise ImageError(f"image {p} is an empty file (0 bytes); give a valid image")
    flags = (cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE) | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error:  # some codecs raise instead of returning None on truncated data
        img = None
    if img is None or img.size == 0:
        raise ImageError(f"image {p} is not a readable image (corrupt file or unsupported format)")
    if img.dtype != np.uint8:  # defensive: the flags above already ask OpenCV for 8 bits
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if color:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def check_pair_distinct(
    img0: np.ndarray,
    img1: np.ndarray,
    path0: str | os.PathLike[str] | None = None,
    path1: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse a pair made of the same image twice.

    Two copies of one image match perfectly with zero parallax: every estimator then returns an arbitrary
    translation direction, which looks like a confident answer. The pair is refused if both paths name the same
    file, or if the decoded pixels are identical (a copy of the file under another name, or a lossless
    re-encoding).

    Args:
        img0: image 0 as returned by :func:`load_image`, (H, W) or (H, W, 3) uint8.
        img1: image 1, same conventions.
        path0: the file of image 0, if any (only used to detect the same file given twice and in the message).
        path1: the file of image 1, if any.

    Raises:
        ImageError: the two images are the same image.
    """
    same_file = False
    if path0 is not None and path1 is not None:
        try:
            same_file = os.path.samefile(path0, path1)
        except OSError:  # one of them does not exist: load_image reports that, not this check
            same_file = False
    if same_file or (img0.shape == img1.shape and np.array_equal(img0, img1)):
        where = f" ({path0} and {path1})" if path0 is not None and path1 is not None else ""
        raise ImageError(f"image0 and image1 are the same image{where}; a relative pose needs two different views")


def is_textureless(img: np.ndarray) -> bool:
    """Whether an image has no texture at all to match (blank, constant, smooth gradient, extreme blur).

    Counts the pixels whose intensity gradient (central differences, grey levels per pixel) exceeds
    8 levels. Sensor noise and smooth shading stay below that; any edge, corner or printed texture is far above.
    The image is textureless when fewer than ``max(64, 2e-4 * H * W)`` pixels are textured — a deliberately low bar
    (a 1-megapixel image needs only 200 such pixels) so that weakly textured but matchable scenes pass.

    Args:
        img: (H, W) grayscale or (H, W, 3) colour uint8 image, as returned by :func:`load_image`.

    Returns:
        True if the image has nothing a feature matcher could use.
    """
    if img.ndim == 3:
        # Channel order does not matter for a texture test; RGB2GRAY weights are fine for BGR too.
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if img.shape[0] < 3 or img.shape[1] < 3:
        return True  # too small to hold a single feature
    g = img.astype(np.float32)
    gx = 0.5 * (g[1:-1, 2:] - g[1:-1, :-2])
    gy = 0.5 * (g[2:, 1:-1] - g[:-2, 1:-1])
    textured = int(np.count_nonzero(gx * gx + gy * gy > _TEXTURE_GRADIENT**2))
    needed = max(_MIN_TEXTURED_PIXELS, _MIN_TEXTURED_FRACTION * img.shape[0] * img.shape[1])
    return textured < needed
