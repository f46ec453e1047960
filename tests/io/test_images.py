"""Tests of mbp_cli.io.images: reading images as stored, and the pair / texture checks."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from mbp_cli.errors import ExitCode, ImageError
from mbp_cli.io.images import check_pair_distinct, is_textureless, load_image

from paths import SCENES  # noqa: E402


def _textured(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    """A smooth random texture (blurred noise) with plenty of gradient, (h, w) uint8."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 1.5)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _write(path: Path, img: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _one_line(exc: pytest.ExceptionInfo[ImageError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg == exc.value.message
    assert exc.value.exit_code == ExitCode.IMAGE
    return msg


def test_load_grayscale_png_roundtrip(tmp_path: Path) -> None:
    img = _textured()
    out = load_image(_write(tmp_path / "a.png", img))
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_load_color_is_rgb(tmp_path: Path) -> None:
    bgr = np.zeros((8, 10, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's BGR order
    bgr[..., 2] = 10  # red
    rgb = load_image(_write(tmp_path / "c.png", bgr), color=True)
    assert rgb.shape == (8, 10, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [10, 0, 200]
    gray = load_image(tmp_path / "c.png")
    assert gray.shape == (8, 10)


def test_load_16bit_png_gives_uint8(tmp_path: Path) -> None:
    img16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    out = load_image(_write(tmp_path / "d.png", img16))
    assert out.dtype == np.uint8 and out.shape == (64, 64)


def test_non_ascii_path(tmp_path: Path) -> None:
    p = _write(tmp_path / "café_画像.png", _textured())
    assert load_image(p).shape == (120, 160)
    assert load_image(str(p), color=True).shape == (120, 160, 3)


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert a minimal EXIF APP1 segment holding only the orientation tag right after the JPEG's SOI marker."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + app1 + jpeg[2:]


def test_exif_orientation_is_ignored(tmp_path: Path) -> None:
    img = _textured(60, 100)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    p = tmp_path / "rotated.jpg"
    p.write_bytes(_with_exif_orientation(buf.tobytes(), 6))  # 6 = "rotate 90° clockwise to display"
    # The tag is effective: OpenCV's default decoding rotates the image ...
    assert cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (100, 60)
    # ... but the stored pixel grid, which the calibration refers to, is what load_image returns.
    assert load_image(p).shape == (60, 100)
    assert load_image(p, color=True).shape == (60, 100, 3)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "nope.png")
    assert "does not exist" in _one_line(exc) and "nope.png" in exc.value.message


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path)
    assert "is a directory" in _one_line(exc)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError) as exc:
        load_image(p)
    assert "empty" in _one_line(exc)


@pytest.mark.parametrize("name", ["x.png", "x.jpg", "x.txt"])
def test_corrupt_file(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(b"this is not an image\x00\x01\x02" * 10)
    with pytest.raises(ImageError) as exc:
        load_image(p)
    assert "not a readable image" in _one_line(exc)


def test_truncated_png(tmp_path: Path) -> None:
    ok, buf = cv2.imencode(".png", _textured())
    assert ok
    p = tmp_path / "cut.png"
    p.write_bytes(buf.tobytes()[:40])
    with pytest.raises(ImageError) as exc:
        load_image(p)
    _one_line(exc)


def test_identical_pair_by_pixels(tmp_path: Path) -> None:
    img = _textured()
    p0, p1 = _write(tmp_path / "a.png", img), _write(tmp_path / "b.png", img)
    with pytest.raises(ImageError) as exc:
        check_pair_distinct(load_image(p0), load_image(p1), p0, p1)
    msg = _one_line(exc)
    assert msg.startswith("image0 and image1 are the same image")
    assert msg.endswith("a relative pose needs two different views")


def test_identical_pair_same_path(tmp_path: Path) -> None:
    p = _write(tmp_path / "a.png", _textured())
    img = load_image(p)
    with pytest.raises(ImageError):
        check_pair_distinct(img, img.copy(), p, tmp_path / "." / "a.png")
    with pytest.raises(ImageError):  # also without paths
        check_pair_distinct(img, img.copy())


def test_distinct_pair_passes(tmp_path: Path) -> None:
    a, b = _textured(seed=0), _textured(seed=1)
    check_pair_distinct(a, b, tmp_path / "a.png", tmp_path / "b.png")
    check_pair_distinct(a, a[:, :-1])  # different sizes are different images
    c = a.copy()
    c[5, 5] ^= 1  # a single different pixel is enough
    check_pair_distinct(a, c)


def test_textureless() -> None:
    assert is_textureless(np.full((480, 640), 128, np.uint8))
    assert is_textureless(np.zeros((480, 640, 3), np.uint8))
    rng = np.random.default_rng(0)
    noise = (128 + rng.integers(-2, 3, (480, 640))).astype(np.uint8)  # sensor noise on a blank wall
    assert is_textureless(noise)
    ramp = np.tile(np.linspace(0, 255, 640), (480, 1)).astype(np.uint8)  # smooth shading only
    assert is_textureless(ramp)
    assert is_textureless(np.zeros((2, 2), np.uint8))
    assert not is_textureless(_textured(480, 640))
    assert not is_textureless(cv2.cvtColor(_textured(480, 640), cv2.COLOR_GRAY2RGB))


@pytest.mark.skipif(not SCENES.is_dir(), reason="development scenes not available")
def test_real_weak_texture_is_not_textureless() -> None:
    # dino: a white object on a black background, the weakest texture of the development scenes.
    files = sorted((SCENES / "dino" / "images").iterdir())[:3]
    for f in files:
        img = load_image(f)
        assert img.ndim == 2 and img.dtype == np.uint8
        assert not is_textureless(img)
