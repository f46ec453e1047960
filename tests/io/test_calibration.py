"""Tests of mbp_cli.io.calibration: every format, the COLMAP pixel shift, undistortion, option combinations."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mbp_cli.errors import CalibrationError, ExitCode
from mbp_cli.io.calibration import (
    SUPPORTED_MODELS,
    Camera,
    camera_from_colmap,
    camera_from_matrix,
    load_camera,
    parse_inline,
    read_colmap_cameras,
    read_matrix_file,
    read_opencv_file,
    resolve_cameras,
    select_camera,
)

from paths import SCENES  # noqa: E402

K_TEXT = "1000 0 319.5\n0 1010 239.5\n0 0 1\n"

# One camera per supported COLMAP model, with realistic parameters (COLMAP pixel convention).
COLMAP_CAMERAS: dict[str, tuple[float, ...]] = {
    "SIMPLE_PINHOLE": (700.0, 320.0, 240.0),
    "PINHOLE": (700.0, 710.0, 320.0, 240.0),
    "SIMPLE_RADIAL": (700.0, 320.0, 240.0, -0.08),
    "RADIAL": (688.36, 320.0, 240.0, -0.0433, 0.0646),
    "OPENCV": (1375.52, 1374.49, 555.058, 965.768, 0.0578421, -0.0805099, -0.000980296, 0.00015575),
    "FULL_OPENCV": (900.0, 905.0, 322.0, 238.0, -0.2, 0.05, 0.001, -0.0005, -0.01, 0.02, 0.001, 0.0005),
}
COLMAP_SIZES = {"OPENCV": (1080, 1920)}  # the others are 640x480


def _size(model: str) -> tuple[int, int]:
    return COLMAP_SIZES.get(model, (640, 480))


def _colmap_line(cam_id: int, model: str, params: tuple[float, ...]) -> str:
    w, h = _size(model)
    return f"{cam_id} {model} {w} {h} " + " ".join(repr(p) for p in params)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write_cameras_bin(path: Path, cams: list[tuple[int, int, int, int, tuple[float, ...]]]) -> Path:
    """Our own writer of COLMAP's cameras.bin: (camera_id, model_id, width, height, params)."""
    data = struct.pack("<Q", len(cams))
    for cam_id, model_id, w, h, params in cams:
        data += struct.pack("<IiQQ", cam_id, model_id, w, h) + struct.pack(f"<{len(params)}d", *params)
    path.write_bytes(data)
    return path


def _err(exc: pytest.ExceptionInfo[CalibrationError]) -> str:
    """The message, checked to be one line with the calibration exit code."""
    msg = str(exc.value)
    assert "\n" not in msg and msg == exc.value.message
    assert exc.value.exit_code == ExitCode.CALIBRATION
    return msg


def _grid(cam: Camera, n: int = 25) -> torch.Tensor:
    """(n*n, 2) float64 pixels covering the whole image, corners included."""
    w = cam.width or 640
    h = cam.height or 480
    u, v = torch.meshgrid(torch.linspace(0, w - 1, n), torch.linspace(0, h - 1, n), indexing="xy")
    return torch.stack((u.reshape(-1), v.reshape(-1)), dim=1).to(torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Camera


def test_camera_properties() -> None:
    cam = Camera("PINHOLE", 640, 480, 1000.0, 1010.0, 319.5, 239.5)
    np.testing.assert_array_equal(cam.K, [[1000, 0, 319.5], [0, 1010, 239.5], [0, 0, 1]])
    assert cam.K.dtype == np.float64
    assert cam.mean_focal == 1005.0
    assert not cam.is_distorted
    assert not Camera("OPENCV", None, None, 1.0, 1.0, 0.0, 0.0, (0.0, 0.0, 0.0, 0.0)).is_distorted
    assert Camera("OPENCV", None, None, 1.0, 1.0, 0.0, 0.0, (0.0, 0.0, 1e-3, 0.0)).is_distorted
    d = cam.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["fx"] == 1000.0 and d["dist"] == [] and d["model"] == "PINHOLE"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cam.fx = 2.0  # type: ignore[misc]
    # Ints and numpy scalars are stored as plain floats.
    c2 = Camera("PINHOLE", np.int64(640), 480, 1000, np.float32(1010), 319.5, 239.5)  # type: ignore[arg-type]
    assert isinstance(c2.fx, float) and isinstance(c2.fy, float) and isinstance(c2.width, int)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"fx": 0.0}, "singular"),
        ({"fy": -3.0}, "negative"),
        ({"cx": float("nan")}, "not a finite number"),
        ({"fx": float("inf")}, "not a finite number"),
        ({"model": "FISHEYE"}, "not supported"),
        ({"dist": (0.1, 0.2, 0.3)}, "give 4, 5 or 8"),
        ({"dist": (0.1, float("nan"), 0.0, 0.0)}, "not all finite"),
        ({"width": 0}, "positive integer"),
    ],
)
def test_camera_direct_construction_is_validated(kwargs: dict, needle: str) -> None:
    base = {"model": "OPENCV", "width": 640, "height": 480, "fx": 500.0, "fy": 500.0, "cx": 320.0, "cy": 240.0}
    with pytest.raises(CalibrationError) as exc:
        Camera(**{**base, **kwargs})
    assert needle in _err(exc)


def test_pinhole_normalization_matches_kinv() -> None:
    cam = Camera("PINHOLE", 640, 480, 1000.0, 1010.0, 319.5, 239.5)
    px = _grid(cam)
    x = cam.pixels_to_normalized(px)
    hom = torch.cat((px, torch.ones(len(px), 1, dtype=torch.float64)), dim=1)
    ref = (torch.from_numpy(np.linalg.inv(cam.K)) @ hom.T).T[:, :2]
    # numpy's asserts: torch.testing costs ~2 s of lazy imports on first use.
    np.testing.assert_allclose(x.numpy(), ref.numpy(), rtol=0, atol=1e-15)
    np.testing.assert_allclose(cam.normalized_to_pixels(x).numpy(), px.numpy(), rtol=0, atol=1e-9)
    assert x.dtype == torch.float64
    # float32 input is computed in float64; empty input works.
    assert cam.pixels_to_normalized(px.float()).dtype == torch.float64
    assert cam.pixels_to_normalized(torch.zeros(0, 2)).shape == (0, 2)
    with pytest.raises(ValueError):
        cam.pixels_to_normalized(torch.zeros(3, 3))


# ---------------------------------------------------------------------------------------------------------------
# Undistortion: every distorted model, against OpenCV and pycolmap


@pytest.mark.parametrize("model", [m for m in COLMAP_CAMERAS if "RADIAL" in m or "OPENCV" in m])
def test_undistortion_round_trip(model: str) -> None:
    w, h = _size(model)
    cam = camera_from_colmap(model, w, h, COLMAP_CAMERAS[model])
    assert cam.is_distorted
    px = _grid(cam)
    x = cam.pixels_to_normalized(px)
    # distort(undistort(p)) == p, far below a micro-pixel.
    assert (cam.normalized_to_pixels(x) - px).abs().max().item() < 1e-6
    # Our distortion is OpenCV's: project the undistorted rays with cv2.projectPoints.
    rays = np.concatenate([x.numpy(), np.ones((len(x), 1))], axis=1)
    proj, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), cam.K, np.array(cam.dist))
    np.testing.assert_allclose(proj.reshape(-1, 2), px.numpy(), atol=1e-6)
    # And OpenCV's own (iterative) undistortion agrees.
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-14)
    ref = cv2.undistortPoints(px.numpy().reshape(-1, 1, 2), cam.K, np.array(cam.dist), criteria=crit)
    np.testing.assert_allclose(x.numpy(), ref.reshape(-1, 2), atol=1e-9)


@pytest.mark.parametrize("model", list(COLMAP_CAMERAS))
def test_matches_pycolmap_with_half_pixel_shift(model: str) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    w, h = _size(model)
    params = COLMAP_CAMERAS[model]
    ours = camera_from_colmap(model, w, h, params)
    ref = pycolmap.Camera.create_from_model_name(1, model, 1.0, w, h)
    ref.params = list(params)
    px = _grid(ours)
    # pycolmap uses COLMAP's convention (pixel corner at 0): our pixel p is its p + 0.5.
    expected = np.asarray(ref.cam_from_img(px.numpy() + 0.5))
    np.testing.assert_allclose(ours.pixels_to_normalized(px).numpy(), expected, atol=1e-9)
    back = np.asarray(ref.img_from_cam(np.concatenate([expected, np.ones((len(px), 1))], axis=1))) - 0.5
    np.testing.assert_allclose(ours.normalized_to_pixels(torch.from_numpy(expected)).numpy(), back, atol=1e-7)


def test_undistortion_on_tensor_device_and_batch() -> None:
    cam = camera_from_colmap("RADIAL", 640, 480, COLMAP_CAMERAS["RADIAL"])
    px = torch.tensor([[0.0, 0.0], [639.0, 479.0], [319.5, 239.5]], dtype=torch.float64)
    x = cam.pixels_to_normalized(px)
    assert x.device == px.device and x.shape == (3, 2)
    np.testing.assert_allclose(x[2].numpy(), [0.0, 0.0], rtol=0, atol=1e-15)  # the principal point maps to 0


# ---------------------------------------------------------------------------------------------------------------
# camera_from_matrix / 3x3 text file


@pytest.mark.parametrize(
    "text",
    [
        K_TEXT,
        "# K of the left camera\n1000, 0, 319.5\n0, 1010, 239.5  # row 2\n0, 0, 1\n",
        "[[1000, 0, 319.5], [0, 1010, 239.5], [0, 0, 1]]",
        "1000 0 319.5 0 1010 239.5 0 0 1",
        "1000;0;319.5;0;1010;239.5;0;0;1\n\n",
    ],
)
def test_matrix_file_formats(tmp_path: Path, text: str) -> None:
    cam = read_matrix_file(_write(tmp_path / "calib.txt", text))
    assert cam == Camera("PINHOLE", None, None, 1000.0, 1010.0, 319.5, 239.5)
    # No half-pixel shift outside COLMAP: the file is in the OpenCV convention.
    assert load_camera(str(tmp_path / "calib.txt")) == cam


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("1000 0 319.5\n0 1010 239.5\n0\n", "expected 9 numbers for a 3x3 matrix, found 7"),
        ("1000 0 319.5 0 1010 239.5 0 0 1 0.1", "expected 9 numbers for a 3x3 matrix, found 10"),
        ("1000 0 319.5\n0 f 239.5\n0 0 1\n", "'f' is not a number (line 2)"),
        ("0 0 319.5\n0 1010 239.5\n0 0 1\n", "singular"),
        ("1000 0 319.5\n0 0 239.5\n0 0 1\n", "singular"),
        ("-1000 0 319.5\n0 1010 239.5\n0 0 1\n", "negative"),
        ("1000 0 319.5\n0 -1010 239.5\n0 0 1\n", "negative"),
        ("nan 0 319.5\n0 1010 239.5\n0 0 1\n", "non-finite"),
        ("1000 0 inf\n0 1010 239.5\n0 0 1\n", "non-finite"),
        ("1000 2.5 319.5\n0 1010 239.5\n0 0 1\n", "skew"),
        ("1000 0 319.5\n3 1010 239.5\n0 0 1\n", "upper-triangular"),
        ("1000 0 319.5\n0 1010 239.5\n0 0 2\n", "last row of K must be 0 0 1"),
        ("1000 0 319.5\n0 1010 239.5\n1 0 1\n", "last row of K must be 0 0 1"),
        ("# only a comment\n", "expected 9 numbers for a 3x3 matrix, found 0"),
        ("   \n", "empty"),
    ],
)
def test_matrix_file_errors(tmp_path: Path, text: str, needle: str) -> None:
    p = _write(tmp_path / "calib.txt", text)
    with pytest.raises(CalibrationError) as exc:
        load_camera(str(p))
    msg = _err(exc)
    assert needle in msg
    assert msg.startswith(f"calibration file {p}")


def test_matrix_file_exact_message(tmp_path: Path) -> None:
    p = _write(tmp_path / "calib.txt", "1 0 0 0 1 0 0")
    with pytest.raises(CalibrationError) as exc:
        read_matrix_file(p)
    assert _err(exc) == f"calibration file {p}: expected 9 numbers for a 3x3 matrix, found 7"


def test_matrix_file_binary_garbage(tmp_path: Path) -> None:
    p = tmp_path / "calib.txt"
    p.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(CalibrationError) as exc:
        load_camera(str(p))
    assert "not a text file" in _err(exc)


def test_tiny_skew_is_dropped() -> None:
    cam = camera_from_matrix([[1000, 1e-6, 320], [0, 1000, 240], [0, 0, 1]])
    assert cam.K[0, 1] == 0.0


def test_camera_from_matrix_distortion_models() -> None:
    K = [[800, 0, 320], [0, 800, 240], [0, 0, 1]]
    assert camera_from_matrix(K).model == "PINHOLE"
    assert camera_from_matrix(K, [0, 0, 0, 0, 0]).dist == ()
    assert camera_from_matrix(K, [0.1, 0.01, 0, 0]).model == "OPENCV"
    c5 = camera_from_matrix(K, [0.1, 0.01, 0.001, 0.002, 0.0])
    assert c5.model == "OPENCV" and c5.dist == (0.1, 0.01, 0.001, 0.002)
    c5 = camera_from_matrix(K, [[0.1, 0.01, 0.001, 0.002, 0.003]])
    assert c5.model == "FULL_OPENCV" and len(c5.dist) == 5
    assert camera_from_matrix(K, np.arange(8) * 0.01).model == "FULL_OPENCV"
    with pytest.raises(CalibrationError) as exc:
        camera_from_matrix(K, [0.1, 0.2, 0.3])
    assert "3 distortion coefficients" in _err(exc)
    with pytest.raises(CalibrationError) as exc:
        camera_from_matrix(np.eye(4))
    assert "3x3" in _err(exc)


# ---------------------------------------------------------------------------------------------------------------
# Inline strings


def test_inline() -> None:
    assert parse_inline("1000,1010,319.5,239.5") == Camera("PINHOLE", None, None, 1000, 1010, 319.5, 239.5)
    assert load_camera("1000, 1010, 319.5, 239.5") == Camera("PINHOLE", None, None, 1000, 1010, 319.5, 239.5)
    assert load_camera("700,320,240") == Camera("PINHOLE", None, None, 700, 700, 320, 240)
    assert load_camera("7e2 7e2 3.2e2 2.4e2") == Camera("PINHOLE", None, None, 700, 700, 320, 240)
    assert load_camera("1000,0,319.5,0,1010,239.5,0,0,1") == Camera("PINHOLE", None, None, 1000, 1010, 319.5, 239.5)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("1000,1010", "expected 4 numbers fx,fy,cx,cy (or 3: f,cx,cy), found 2"),
        ("1,2,3,4,5", "found 5"),
        ("0,1010,319.5,239.5", "fx = 0 makes K singular"),
        ("-1000,1010,319.5,239.5", "fx = -1000 is negative"),
        ("nan,1010,319.5,239.5", "fx = nan is not a finite number"),
        ("1000,1010,abc,239.5", "is neither a file nor fx,fy,cx,cy ('abc' is not a number)"),
    ],
)
def test_inline_errors(spec: str, needle: str) -> None:
    with pytest.raises(CalibrationError) as exc:
        load_camera(spec)
    assert needle in _err(exc)


def test_neither_file_nor_numbers(tmp_path: Path) -> None:
    missing = str(tmp_path / "calib.txt")
    with pytest.raises(CalibrationError) as exc:
        load_camera(missing)
    assert _err(exc) == f"calibration '{missing}' is neither a file nor fx,fy,cx,cy"


# ---------------------------------------------------------------------------------------------------------------
# OpenCV FileStorage


def _fs_write(path: Path, **nodes: object) -> Path:
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    for k, v in nodes.items():
        fs.write(k, v)
    fs.release()
    return path


K_CV = np.array([[1000.0, 0.0, 319.5], [0.0, 1010.0, 239.5], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".xml", ".json"])
@pytest.mark.parametrize(
    ("knode", "dnode"), [("camera_matrix", "distortion_coefficients"), ("K", "D"), ("cameraMatrix", "distCoeffs")]
)
def test_opencv_filestorage(tmp_path: Path, suffix: str, knode: str, dnode: str) -> None:
    dist = np.array([[-0.1, 0.01, 0.001, -0.002, 0.003]])
    p = _fs_write(tmp_path / f"calib{suffix}", **{knode: K_CV, dnode: dist, "image_width": 640, "image_height": 480})
    cam = load_camera(str(p))
    assert cam == read_opencv_file(p)
    assert (cam.width, cam.height) == (640, 480)
    np.testing.assert_array_equal(cam.K, K_CV)  # OpenCV convention: no shift
    assert cam.model == "FULL_OPENCV" and cam.dist == tuple(dist.ravel())


def test_opencv_filestorage_variants(tmp_path: Path) -> None:
    # No distortion and no size: a pinhole of unknown size.
    cam = load_camera(str(_fs_write(tmp_path / "a.yml", camera_matrix=K_CV)))
    assert cam.model == "PINHOLE" and cam.width is None and cam.dist == ()
    # 4 coefficients under dist_coeffs → OPENCV.
    cam = load_camera(str(_fs_write(tmp_path / "b.yaml", K=K_CV, dist_coeffs=np.array([0.1, 0.01, 0.0, 0.0]))))
    assert cam.model == "OPENCV" and cam.dist == (0.1, 0.01, 0.0, 0.0)
    # YAML content without a YAML extension is recognised by its header.
    src = (tmp_path / "a.yml").read_text()
    assert cam != load_camera(str(_write(tmp_path / "calib.cfg", src)))
    assert load_camera(str(tmp_path / "calib.cfg")).model == "PINHOLE"


def test_ros_camera_info_yaml(tmp_path: Path) -> None:
    text = (
        "image_width: 640\nimage_height: 480\ncamera_name: narrow_stereo\n"
        "camera_matrix:\n  rows: 3\n  cols: 3\n  data: [500.0, 0.0, 319.5, 0.0, 501.0, 239.5, 0.0, 0.0, 1.0]\n"
        "distortion_model: plumb_bob\n"
        "distortion_coefficients:\n  rows: 1\n  cols: 5\n  data: [-0.1, 0.01, 0.0, 0.0, 0.0]\n"
    )
    cam = load_camera(str(_write(tmp_path / "left.yaml", text)))
    assert cam == Camera("OPENCV", 640, 480, 500.0, 501.0, 319.5, 239.5, (-0.1, 0.01, 0.0, 0.0))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("%YAML:1.0\nfoo: 1\n", "no camera matrix found"),
        ("%YAML:1.0\nK: [1, 2, 3, 4, 5, 6, 7]\n", "node 'K' must hold a 3x3 matrix (9 numbers), found 7"),
        ("%YAML:1.0\nK: [1, 0, 1, 0, 1, 1, 0, 0, 1]\nD: [0.1, 0.2, 0.3]\n", "3 distortion coefficients"),
        ("%YAML:1.0\nK: [0, 0, 1, 0, 1, 1, 0, 0, 1]\n", "singular"),
        ("%YAML:1.0\nK: [1, 0, 1, 0, 1, 1, 0, 0, .nan]\n", "non-finite"),
        ("foo: [1, 2\n  bar: ]]]\n", "not a valid OpenCV YAML/XML/JSON file"),
        ("", "empty"),
    ],
)
def test_opencv_errors(tmp_path: Path, text: str, needle: str) -> None:
    p = _write(tmp_path / "calib.yaml", text)
    with pytest.raises(CalibrationError) as exc:
        load_camera(str(p))
    msg = _err(exc)
    assert needle in msg and str(p) in msg


def test_opencv_bad_xml(tmp_path: Path) -> None:
    p = _write(tmp_path / "calib.xml", "<?xml version='1.0'?><opencv_storage><K>1 2")
    with pytest.raises(CalibrationError) as exc:
        load_camera(str(p))
    assert "not a valid OpenCV" in _err(exc)


# ---------------------------------------------------------------------------------------------------------------
# COLMAP cameras.txt / cameras.bin


@pytest.mark.parametrize("model", list(COLMAP_CAMERAS))
def test_colmap_every_model_and_half_pixel_shift(tmp_path: Path, model: str) -> None:
    params = COLMAP_CAMERAS[model]
    p = _write(tmp_path / "cameras.txt", "# Camera list\n" + _colmap_line(3, model, params) + "\n")
    cam = load_camera(str(p))
    w, h = _size(model)
    assert (cam.model, cam.width, cam.height) == (model, w, h)
    single_focal = model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
    fx, fy = (params[0], params[0]) if single_focal else params[:2]
    cx, cy = params[1:3] if single_focal else params[2:4]
    assert (cam.fx, cam.fy) == (fx, fy)
    assert cam.cx == cx - 0.5 and cam.cy == cy - 0.5  # COLMAP pixel corner → OpenCV pixel centre
    if model in ("SIMPLE_PINHOLE", "PINHOLE"):
        expected_dist: tuple[float, ...] = ()
    elif model == "SIMPLE_RADIAL":
        expected_dist = (params[3], 0.0, 0.0, 0.0)
    elif model == "RADIAL":
        expected_dist = (params[3], params[4], 0.0, 0.0)
    else:  # OPENCV, FULL_OPENCV: already in OpenCV order
        expected_dist = params[4:]
    assert cam.dist == expected_dist
    # Explicit id, and the same file read by a name that is not cameras.txt (detected by content).
    assert load_camera(str(p), camera_id=3) == cam
    assert load_camera(str(_write(tmp_path / "intrinsics.txt", p.read_text()))) == cam
    # The folder holding cameras.txt is accepted too.
    assert load_camera(str(tmp_path)) == cam


def test_colmap_several_cameras(tmp_path: Path) -> None:
    lines = [
        _colmap_line(i, m, COLMAP_CAMERAS[m]) for i, m in zip((1, 2, 5), ("PINHOLE", "RADIAL", "OPENCV"), strict=True)
    ]
    p = _write(tmp_path / "cameras.txt", "\n".join(lines) + "\n")
    with pytest.raises(CalibrationError) as exc:
        load_camera(str(p))
    assert _err(exc) == "cameras.txt holds 3 cameras (ids 1, 2, 5); pass --camera-id"
    assert load_camera(str(p), camera_id=2).model == "RADIAL"
    assert select_camera(p, 5).model == "OPENCV"
    with pytest.raises(CalibrationError) as exc:
        load_camera(str(p), camera_id=4)
    assert "no camera with id 4 (ids: 1, 2, 5)" in _err(exc)
    cams = read_colmap_cameras(p)
    assert list(cams) == [1, 2, 5] and cams[2] == load_camera(str(p), camera_id=2)


def test_colmap_unsupported_model_only_when_selected(tmp_path: Path) -> None:
    p = _write(tmp_path / "cameras.txt", "1 FOV 640 480 500 500 320 240 0.9\n2 PINHOLE 640 480 500 500 320 240\n")
    assert load_camera(str(p), camera_id=2).model == "PINHOLE"
    with pytest.raises(CalibrationError) as exc:
        load_camera(str(p), camera_id=1)
    msg = _err(exc)
    assert "camera model FOV is not supported" in msg
    assert all(m in msg for m in SUPPORTED_MODELS)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("1 FANCY 640 480 1 2 3\n", "unknown camera model FANCY"),
        ("1 PINHOLE 640 480 500 500 320\n", "model PINHOLE takes 4 parameters (fx fy cx cy), found 3"),
        ("1 RADIAL 640 480 500 320 240 0.1\n", "model RADIAL takes 5 parameters"),
        ("1 PINHOLE 640 480 500 x 320 240\n", "'x' is not a number"),
        ("1 PINHOLE 640\n", "expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS"),
        ("a PINHOLE 640 480 500 500 320 240\n", "must be integers"),
        ("1 PINHOLE 640 480 0 500 320 240\n", "fx = 0 makes K singular"),
        ("1 PINHOLE 640 480 500 -500 320 240\n", "negative"),
        ("1 PINHOLE 640 480 500 500 nan 240\n", "cx = nan is not a finite number"),
        ("1 PINHOLE 0 480 500 500 320 240\n", "width = 0 must be a positive integer"),
        ("1 PINHOLE 640 480 1 1 1 1\n1 PINHOLE 640 480 1 1 1 1\n", "camera id 1 appears twice"),
        ("# Camera list\n# nothing\n", "no camera found"),
    ],
)
def test_colmap_txt_errors(tmp_path: Path, text: str, needle: str) -> None:
    p = _write(tmp_path / "cameras.txt", text)
    with pytest.raises(CalibrationError) as exc:
        load_camera(str(p))
    msg = _err(exc)
    assert needle in msg and str(p) in msg


def test_colmap_bin_own_writer(tmp_path: Path) -> None:
    ids = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4, "FULL_OPENCV": 6}
    records = []
    text = []
    for i, (model, params) in enumerate(COLMAP_CAMERAS.items(), start=1):
        records.append((i, ids[model], *_size(model), params))
        text.append(_colmap_line(i, model, params))
    records.append((99, 7, 640, 480, (500.0, 500.0, 320.0, 240.0, 0.9)))  # FOV: skipped over correctly
    pb = _write_cameras_bin(tmp_path / "cameras.bin", records)
    pt = _write(tmp_path / "cameras.txt", "\n".join(text) + "\n")
    for i in range(1, len(COLMAP_CAMERAS) + 1):
        assert load_camera(str(pb), camera_id=i) == load_camera(str(pt), camera_id=i)
    with pytest.raises(CalibrationError) as exc:
        load_camera(str(pb))
    assert _err(exc).startswith("cameras.bin holds 7 cameras (ids 1, 2, 3, 4, 5, 6, 99)")
    with pytest.raises(CalibrationError) as exc:
        load_camera(str(pb), camera_id=99)
    assert "FOV is not supported" in _err(exc)


def test_colmap_bin_errors(tmp_path: Path) -> None:
    good = _write_cameras_bin(tmp_path / "cameras.bin", [(1, 1, 640, 480, (500.0, 500.0, 320.0, 240.0))])
    data = good.read_bytes()
    for name, blob, needle in [
        ("cut.bin", data[:-5], "truncated"),
        ("extra.bin", data + b"\x00" * 3, "unexpected bytes"),
        ("none.bin", struct.pack("<Q", 0), "holds no camera"),
        ("model.bin", data[:12] + struct.pack("<i", 42) + data[16:], "unknown COLMAP model id 42"),
    ]:
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(CalibrationError) as exc:
            load_camera(str(p))
        assert needle in _err(exc), name


def test_colmap_bin_written_by_pycolmap(tmp_path: Path) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    rec = pycolmap.Reconstruction()
    for i, (model, params) in enumerate(COLMAP_CAMERAS.items(), start=1):
        cam = pycolmap.Camera.create_from_model_name(i, model, 1.0, *_size(model))
        cam.params = list(params)
        rec.add_camera(cam)
    rec.write_binary(str(tmp_path))
    rec.write_text(str(tmp_path))
    from_bin = read_colmap_cameras(tmp_path / "cameras.bin")
    assert from_bin == read_colmap_cameras(tmp_path / "cameras.txt")
    for i, model in enumerate(COLMAP_CAMERAS, start=1):
        assert from_bin[i].model == model
        assert from_bin[i].cx == rec.cameras[i].principal_point_x - 0.5


@pytest.mark.skipif(not SCENES.is_dir(), reason="development scenes not available")
def test_real_scene_cameras() -> None:
    kermit = SCENES / "kermit" / "sparse" / "cameras.txt"
    with pytest.raises(CalibrationError) as exc:
        load_camera(str(kermit))
    assert "holds 9 cameras" in _err(exc)
    cam = load_camera(str(kermit), camera_id=1)
    assert cam == Camera(
        "RADIAL", 640, 480, 688.3619195, 688.3619195, 319.5, 239.5, (-0.04329817457, 0.06459578013, 0, 0)
    )
    fox = load_camera(str(SCENES / "fox" / "sparse" / "cameras.txt"))
    assert fox.model == "OPENCV" and (fox.width, fox.height) == (1080, 1920)
    assert fox.cx == pytest.approx(555.058 - 0.5) and fox.cy == pytest.approx(965.768 - 0.5)


# ---------------------------------------------------------------------------------------------------------------
# --K / --K0 / --K1 / --camera-id


def test_resolve_cameras(tmp_path: Path) -> None:
    kfile = str(_write(tmp_path / "K.txt", K_TEXT))
    c0, c1 = resolve_cameras(kfile, None, None, None)
    assert c0 is c1 and c0.fx == 1000.0
    c0, c1 = resolve_cameras(None, kfile, "700,710,320,240", None)
    assert c0.fx == 1000.0 and c1.fx == 700.0
    cams = str(
        _write(
            tmp_path / "cameras.txt",
            _colmap_line(1, "PINHOLE", COLMAP_CAMERAS["PINHOLE"])
            + "\n"
            + _colmap_line(2, "RADIAL", COLMAP_CAMERAS["RADIAL"])
            + "\n",
        )
    )
    # --K with a multi-camera COLMAP file: --camera-id picks one for both images.
    c0, c1 = resolve_cameras(cams, None, None, 2)
    assert c0 is c1 and c0.model == "RADIAL"
    # Per-image ids, from --K0 and --K1 or from one --K.
    c0, c1 = resolve_cameras(None, cams, cams, None, camera_id0=1, camera_id1=2)
    assert (c0.model, c1.model) == ("PINHOLE", "RADIAL")
    c0, c1 = resolve_cameras(cams, None, None, None, camera_id0=1, camera_id1=2)
    assert (c0.model, c1.model) == ("PINHOLE", "RADIAL")
    c0, c1 = resolve_cameras(cams, None, None, 1, camera_id1=2)
    assert (c0.model, c1.model) == ("PINHOLE", "RADIAL")
    # The id only goes to COLMAP specs when the other one is inline.
    c0, c1 = resolve_cameras(None, cams, "700,710,320,240", 2)
    assert (c0.model, c1.model) == ("RADIAL", "PINHOLE")


def _two_camera_model(folder: Path, images: list[tuple[str, int]]) -> Path:
    """A COLMAP text model with a PINHOLE camera 1 and a RADIAL camera 2, and ``images`` (name, camera id)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [_colmap_line(1, "PINHOLE", COLMAP_CAMERAS["PINHOLE"]), _colmap_line(2, "RADIAL", COLMAP_CAMERAS["RADIAL"])]
    _write(folder / "cameras.txt", "\n".join(lines) + "\n")
    # Each image line is followed by its (here empty) 2D-points line.
    body = "".join(f"{i + 1} 1 0 0 0 0 0 0 {cid} {name}\n\n" for i, (name, cid) in enumerate(images))
    _write(folder / "images.txt", "# Image list\n" + body)
    return folder


def test_resolve_cameras_finds_each_images_camera_in_the_model(tmp_path: Path) -> None:
    model = _two_camera_model(tmp_path / "sparse", [("a.jpg", 1), ("b.jpg", 2), ("left/c.png", 2), ("right/c.png", 1)])
    images = tmp_path / "images"
    # By file name: a model folder or its cameras file, for --K or --K0/--K1.
    for spec in (str(model), str(model / "cameras.txt")):
        c0, c1 = resolve_cameras(spec, None, None, None, image0=str(images / "a.jpg"), image1=str(images / "b.jpg"))
        assert (c0.model, c1.model) == ("PINHOLE", "RADIAL")
        c0, c1 = resolve_cameras(None, spec, spec, None, image0=str(images / "b.jpg"), image1=str(images / "a.jpg"))
        assert (c0.model, c1.model) == ("RADIAL", "PINHOLE")
    # One camera for both: the same object, as with one id.
    c0, c1 = resolve_cameras(str(model), None, None, None, image0="b.jpg", image1="x/left/c.png")
    assert c0 is c1 and c0.model == "RADIAL"
    # Sub-folders tell images of the same file name apart.
    c0, c1 = resolve_cameras(str(model), None, None, None, image0="/d/left/c.png", image1="/d/right/c.png")
    assert (c0.model, c1.model) == ("RADIAL", "PINHOLE")
    # An explicit id wins over the lookup.
    c0, c1 = resolve_cameras(str(model), None, None, None, camera_id0=2, image0="a.jpg", image1="b.jpg")
    assert (c0.model, c1.model) == ("RADIAL", "RADIAL")


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        ("elsewhere/c.png", "several images are called c.png (left/c.png, right/c.png); pass the camera id"),
        ("unknown.jpg", "holds 2 cameras (ids 1, 2); pass --camera-id"),
    ],
)
def test_resolve_cameras_lookup_errors_name_the_fix(tmp_path: Path, image: str, needle: str) -> None:
    model = _two_camera_model(tmp_path / "sparse", [("a.jpg", 1), ("left/c.png", 2), ("right/c.png", 1)])
    with pytest.raises(CalibrationError) as exc:
        resolve_cameras(str(model), None, None, None, image0="a.jpg", image1=image)
    assert needle in _err(exc)


@pytest.mark.skipif(not SCENES.is_dir(), reason="development scenes not available")
def test_resolve_cameras_real_multi_camera_model() -> None:
    """kermit: nine images, each with its own RADIAL camera, in one COLMAP model (kermit008.jpg has camera 7)."""
    model = SCENES / "kermit" / "sparse"
    images = SCENES / "kermit" / "images"
    c0, c1 = resolve_cameras(
        str(model), None, None, None, image0=str(images / "kermit000.jpg"), image1=str(images / "kermit008.jpg")
    )
    assert (c0.fx, c1.fx) == (688.3619195, 720.1029508)


@pytest.mark.parametrize(
    ("args", "kw", "needle"),
    [
        (("K", "K0", None, None), {}, "not --K together with --K0/--K1"),
        (("K", None, "K1", None), {}, "not --K together with --K0/--K1"),
        ((None, None, None, None), {}, "no calibration given; give --K for both images or both --K0 and --K1"),
        ((None, "K0", None, None), {}, "--K1 is missing; give --K for both images or both --K0 and --K1"),
        ((None, None, "K1", None), {}, "--K0 is missing"),
        (("cams", None, None, None), {}, "holds 2 cameras (ids 1, 2); pass --camera-id"),
        (("K", None, None, 1), {}, "--camera-id 1 only applies to COLMAP"),
        ((None, "K", "700,710,320,240", 1), {}, "--camera-id only applies to COLMAP"),
        (("cams", None, None, 7), {}, "no camera with id 7"),
    ],
)
def test_resolve_cameras_errors(tmp_path: Path, args: tuple, kw: dict, needle: str) -> None:
    files = {
        "K": str(_write(tmp_path / "K.txt", K_TEXT)),
        "K0": str(_write(tmp_path / "K0.txt", K_TEXT)),
        "K1": str(_write(tmp_path / "K1.txt", K_TEXT)),
        "cams": str(_write(tmp_path / "cameras.txt", "1 PINHOLE 640 480 1 1 1 1\n2 PINHOLE 640 480 2 2 1 1\n")),
    }
    real = tuple(files.get(a, a) if isinstance(a, str) else a for a in args)
    with pytest.raises(CalibrationError) as exc:
        resolve_cameras(*real, **kw)
    assert needle in _err(exc)
