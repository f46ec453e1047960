"""Tests of mbp_cli.io.colmap: reading posed scenes (text and binary) and the ground-truth relative pose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mbp_cli.errors import CalibrationError
from mbp_cli.io.calibration import Camera
from mbp_cli.io.colmap import (
    Scene,
    SceneError,
    find_model_dir,
    qvec_to_rotmat,
    read_images_bin,
    read_images_txt,
    read_pair_lines,
    read_pairs,
    read_scene,
    relative_pose,
)

from colmap_model import ModelImage, images_bin  # noqa: E402
from paths import SCENES  # noqa: E402

needs_scenes = pytest.mark.skipif(not SCENES.is_dir(), reason="development scenes not available")


def _random_quat(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    return q / np.linalg.norm(q)


def _images_txt(poses: list[tuple[int, np.ndarray, np.ndarray, int, str]], points: bool = False) -> str:
    """images.txt text: per image a pose line and a points line (empty, or with a few points)."""
    out = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
    ]
    for image_id, q, t, cam_id, name in poses:
        out.append(f"{image_id} " + " ".join(repr(float(v)) for v in (*q, *t)) + f" {cam_id} {name}")
        out.append("12.5 30.25 -1 100.0 7.0 42" if points else "")
    return "\n".join(out) + "\n"


def _images_bin(poses: list[tuple[int, np.ndarray, np.ndarray, int, str]], n_points: int = 2) -> bytes:
    """Our own writer of COLMAP's images.bin, with a few 2D points per image (every other one without 3D point)."""
    points = [-1 if k % 2 else k for k in range(n_points)]
    return images_bin([ModelImage(image_id, q, t, cam_id, name, points) for image_id, q, t, cam_id, name in poses])


def _make_scene(root: Path, n: int = 4, seed: int = 0, binary: bool = False, sub: str = "sparse") -> list:
    """A synthetic scene folder: n images with random poses, two cameras, a pairs.txt."""
    rng = np.random.default_rng(seed)
    poses = [(i + 1, _random_quat(rng), rng.normal(size=3), 1 + i % 2, f"img{i:03d}.png") for i in range(n)]
    model = root / sub
    model.mkdir(parents=True)
    (root / "images").mkdir()
    (model / "cameras.txt").write_text(
        "# cameras\n1 PINHOLE 640 480 500 500 320 240\n2 RADIAL 640 480 600 320 240 -0.05 0.01\n"
    )
    if binary:
        (model / "images.bin").write_bytes(_images_bin(poses))
    else:
        (model / "images.txt").write_text(_images_txt(poses))
    (model / "points3D.txt").write_text("# 3D point list (empty)\n")  # pycolmap needs the file to exist
    (root / "pairs.txt").write_text("img000.png img001.png\n# comment\n\nimg002.png img003.png\n")
    return poses


def test_qvec_to_rotmat() -> None:
    np.testing.assert_allclose(qvec_to_rotmat((1, 0, 0, 0)), np.eye(3))
    # 90° about z: (cos 45°, 0, 0, sin 45°) maps x to y (Hamilton, active rotation).
    R = qvec_to_rotmat((np.sqrt(0.5), 0, 0, np.sqrt(0.5)))
    np.testing.assert_allclose(R @ [1, 0, 0], [0, 1, 0], atol=1e-15)
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = _random_quat(rng)
        R = qvec_to_rotmat(3.0 * q)  # unnormalized input is normalized
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-14)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(qvec_to_rotmat(-q), R, atol=1e-15)  # q and -q: same rotation
    with pytest.raises(ValueError):
        qvec_to_rotmat((0, 0, 0, 0))


def test_read_synthetic_scene_and_relative_pose(tmp_path: Path) -> None:
    poses = _make_scene(tmp_path)
    scene = read_scene(tmp_path)
    assert isinstance(scene, Scene) and scene.root == tmp_path
    assert list(scene.images) == [p[4] for p in poses]
    assert scene.pairs == [("img000.png", "img001.png"), ("img002.png", "img003.png")]
    assert scene.cameras[1] == Camera("PINHOLE", 640, 480, 500.0, 500.0, 319.5, 239.5)
    assert scene.cameras[2].cx == 319.5 and scene.cameras[2].dist == (-0.05, 0.01, 0.0, 0.0)
    assert scene.camera_of("img001.png") is scene.cameras[2]
    assert scene.image_path("img001.png") == tmp_path / "images" / "img001.png"

    # Relative pose: compose the 4x4 world-to-camera matrices, T_1 T_0^-1 = cam1_from_cam0.
    def world_to_cam(name: str) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = scene.images[name].R, scene.images[name].t
        return T

    rng = np.random.default_rng(5)
    X = rng.normal(size=(10, 3)) * 3
    for name0, name1 in [("img000.png", "img001.png"), ("img003.png", "img000.png")]:
        R, t = relative_pose(scene, name0, name1)
        T = world_to_cam(name1) @ np.linalg.inv(world_to_cam(name0))
        np.testing.assert_allclose(R, T[:3, :3], atol=1e-12)
        np.testing.assert_allclose(t, T[:3, 3], atol=1e-12)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        # x1 = R x0 + t for camera-frame points of a world point.
        im0, im1 = scene.images[name0], scene.images[name1]
        x0 = X @ im0.R.T + im0.t
        x1 = X @ im1.R.T + im1.t
        np.testing.assert_allclose(x1, x0 @ R.T + t, atol=1e-12)
    # t is not normalized: its norm is the baseline (distance between the camera centres).
    R, t = relative_pose(scene, "img000.png", "img001.png")
    c0 = -scene.images["img000.png"].R.T @ scene.images["img000.png"].t
    c1 = -scene.images["img001.png"].R.T @ scene.images["img001.png"].t
    assert np.linalg.norm(t) == pytest.approx(np.linalg.norm(c1 - c0))
    # Swapping the pair inverts the pose.
    R10, t10 = relative_pose(scene, "img001.png", "img000.png")
    np.testing.assert_allclose(R10, R.T, atol=1e-12)
    np.testing.assert_allclose(t10, -R.T @ t, atol=1e-12)
    with pytest.raises(SceneError) as exc:
        relative_pose(scene, "img000.png", "nope.png")
    assert "no image named nope.png" in str(exc.value)


def test_images_txt_with_points_and_comments(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    poses = [(i + 1, _random_quat(rng), rng.normal(size=3), 1, f"sub/im {i}.jpg") for i in range(3)]
    p = tmp_path / "images.txt"
    p.write_text(_images_txt(poses, points=True))
    images = read_images_txt(p)
    assert list(images) == ["sub/im 0.jpg", "sub/im 1.jpg", "sub/im 2.jpg"]
    for image_id, q, t, cam_id, name in poses:
        im = images[name]
        assert (im.image_id, im.camera_id) == (image_id, cam_id)
        np.testing.assert_allclose(im.R, qvec_to_rotmat(q), atol=1e-15)
        np.testing.assert_array_equal(im.t, t)
        assert im.R.dtype == np.float64 and im.t.shape == (3,)


def test_binary_images_match_text_and_are_preferred(tmp_path: Path) -> None:
    poses = _make_scene(tmp_path, n=5, binary=True)
    from_bin = read_images_bin(tmp_path / "sparse" / "images.bin")
    (tmp_path / "t.txt").write_text(_images_txt(poses))
    from_txt = read_images_txt(tmp_path / "t.txt")
    assert list(from_bin) == list(from_txt)
    for name in from_txt:
        np.testing.assert_array_equal(from_bin[name].R, from_txt[name].R)
        np.testing.assert_array_equal(from_bin[name].t, from_txt[name].t)
        assert from_bin[name].camera_id == from_txt[name].camera_id
    # Both present: the binary file wins, as in COLMAP. Make the text one different to tell them apart.
    (tmp_path / "sparse" / "images.txt").write_text(_images_txt(poses[:2]))
    assert len(read_scene(tmp_path).images) == 5


def test_images_bin_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = _images_bin([(1, _random_quat(rng), rng.normal(size=3), 1, "a.png")])
    for name, blob, needle in [
        ("cut.bin", data[:-7], "truncated"),
        ("noname.bin", data[: 8 + 64 + 2], "truncated"),
        ("extra.bin", data + b"\x01", "unexpected bytes"),
    ]:
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(SceneError) as exc:
            read_images_bin(p)
        assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("1 1 0 0 0 0 0 0 1", "expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME"),
        ("1 1 0 0 x 0 0 0 1 a.png", "non-numeric"),
        ("1 0 0 0 0 0 0 0 1 a.png", "zero or not finite"),
        ("1 1 0 0 0 0 nan 0 1 a.png", "not finite"),
    ],
)
def test_images_txt_errors(tmp_path: Path, line: str, needle: str) -> None:
    p = tmp_path / "images.txt"
    p.write_text("# header\n" + line + "\n\n")
    with pytest.raises(SceneError) as exc:
        read_images_txt(p)
    assert needle in str(exc.value) and "line 2" in str(exc.value)


def test_images_txt_duplicate_name(tmp_path: Path) -> None:
    p = tmp_path / "images.txt"
    p.write_text("1 1 0 0 0 0 0 0 1 a.png\n\n2 1 0 0 0 0 0 1 1 a.png\n\n")
    with pytest.raises(SceneError) as exc:
        read_images_txt(p)
    assert "a.png appears twice" in str(exc.value)


def test_pairs_errors(tmp_path: Path) -> None:
    _make_scene(tmp_path)
    images = read_scene(tmp_path).images
    for text, needle in [
        ("img000.png\n", "expected two image names, found 1 fields"),
        ("img000.png img001.png img002.png\n", "found 3 fields"),
        ("img000.png img000.png\n", "with itself"),
        ("img000.png other.png\n", "image other.png is not in the COLMAP model"),
    ]:
        p = tmp_path / "pairs.txt"
        p.write_text(text)
        with pytest.raises(SceneError) as exc:
            read_pairs(p, images)
        assert needle in str(exc.value) and "line 1" in str(exc.value)
        with pytest.raises(SceneError):
            read_scene(tmp_path)
    # Without an image list, names are not checked.
    p.write_text("img000.png other.png\n")
    assert read_pairs(p) == [("img000.png", "other.png")]


def test_scene_layouts(tmp_path: Path) -> None:
    # COLMAP's own layout: <project>/sparse/0, images in <project>/images.
    a = tmp_path / "a"
    _make_scene(a, sub="sparse/0")
    assert find_model_dir(a) == a / "sparse" / "0"
    assert len(read_scene(a).images) == 4
    # The model folder given directly: the root is found where images/ lives.
    scene = read_scene(a / "sparse" / "0")
    assert scene.root == a and scene.pairs == read_scene(a).pairs
    # No pairs.txt: no pairs, not an error.
    b = tmp_path / "b"
    _make_scene(b)
    (b / "pairs.txt").unlink()
    assert read_scene(b).pairs == []


def test_scene_errors(tmp_path: Path) -> None:
    with pytest.raises(SceneError) as exc:
        read_scene(tmp_path / "missing")
    assert "is not a folder" in str(exc.value)
    with pytest.raises(SceneError) as exc:
        read_scene(tmp_path)
    assert "no COLMAP model found" in str(exc.value)
    assert isinstance(exc.value, CalibrationError)  # same exit code as calibration problems
    _make_scene(tmp_path / "s")
    images = tmp_path / "s" / "sparse" / "images.txt"
    images.write_text(images.read_text().replace(" 2 img001.png", " 7 img001.png"))
    with pytest.raises(SceneError) as exc:
        read_scene(tmp_path / "s")
    assert "img001.png uses camera 7" in str(exc.value)
    (tmp_path / "s" / "sparse" / "cameras.txt").write_text("1 FOV 640 480 1 1 1 1 1\n")
    with pytest.raises(CalibrationError) as exc2:
        read_scene(tmp_path / "s")
    assert "FOV is not supported" in str(exc2.value)


def test_observed_point3D_ids_text_and_binary(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    poses = [(1, _random_quat(rng), rng.normal(size=3), 1, "a.png")]
    (tmp_path / "images.txt").write_text(_images_txt(poses, points=True))  # ids -1 and 42
    assert read_images_txt(tmp_path / "images.txt")["a.png"].point3D_ids == {42}
    (tmp_path / "images.bin").write_bytes(_images_bin(poses, n_points=4))  # ids 0, -1, 2, -1
    assert read_images_bin(tmp_path / "images.bin")["a.png"].point3D_ids == {0, 2}
    (tmp_path / "images.txt").write_text(_images_txt(poses).replace("\n\n", "\n1.0 2.0\n"))
    with pytest.raises(SceneError, match="not a multiple of 3"):
        read_images_txt(tmp_path / "images.txt")


def test_lenient_scene_keeps_usable_cameras(tmp_path: Path) -> None:
    _make_scene(tmp_path / "s")
    cameras = tmp_path / "s" / "sparse" / "cameras.txt"
    cameras.write_text(
        cameras.read_text().replace("2 RADIAL 640 480 600 320 240 -0.05 0.01", "2 FOV 640 480 1 1 1 1 1")
    )
    images = tmp_path / "s" / "sparse" / "images.txt"
    images.write_text(images.read_text().replace(" 1 img002.png", " 9 img002.png"))
    with pytest.raises(CalibrationError, match="FOV is not supported"):
        read_scene(tmp_path / "s")
    scene = read_scene(tmp_path / "s", strict=False)
    assert scene.pairs == [] and list(scene.cameras) == [1]
    assert scene.camera_of("img000.png") == scene.cameras[1]
    with pytest.raises(CalibrationError, match="FOV is not supported"):
        scene.camera_of("img001.png")
    with pytest.raises(CalibrationError, match="img002.png uses camera 9"):
        scene.camera_of("img002.png")


def test_read_pair_lines_reports_each_bad_line(tmp_path: Path) -> None:
    (tmp_path / "pairs.txt").write_text("a b\nc\n# note\n\nd d\ne f g  # three\nh i\n")
    lines = read_pair_lines(tmp_path / "pairs.txt")
    assert [(line.lineno, line.names) for line in lines] == [
        (1, ("a", "b")),
        (2, ("c",)),
        (5, ("d", "d")),
        (6, ("e", "f", "g")),
        (7, ("h", "i")),
    ]
    assert [line.error is None for line in lines] == [True, False, False, False, True]
    assert "with itself" in lines[2].error and "found 3 fields" in lines[3].error


def test_pycolmap_binary_model(tmp_path: Path) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    src = tmp_path / "txt"
    _make_scene(src, n=4)
    rec = pycolmap.Reconstruction(str(src / "sparse"))
    out = tmp_path / "bin"
    (out / "sparse").mkdir(parents=True)
    rec.write_binary(str(out / "sparse"))
    from_txt, from_bin = read_scene(src), read_scene(out)
    assert from_bin.cameras == from_txt.cameras
    for name, im in from_txt.images.items():
        np.testing.assert_allclose(from_bin.images[name].R, im.R, atol=1e-12)
        np.testing.assert_allclose(from_bin.images[name].t, im.t, atol=1e-12)


@needs_scenes
@pytest.mark.parametrize(("scene_name", "model"), [("kermit", "RADIAL"), ("fox", "OPENCV")])
def test_real_scene(scene_name: str, model: str) -> None:
    scene = read_scene(SCENES / scene_name)
    assert scene.pairs and all(m.model == model for m in scene.cameras.values())
    for cam in scene.cameras.values():
        assert cam.is_distorted and cam.width and cam.height
    name0, name1 = scene.pairs[0]
    assert scene.image_path(name0).is_file()
    R, t = relative_pose(scene, name0, name1)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
    im0, im1 = scene.images[name0], scene.images[name1]
    np.testing.assert_allclose(R, im1.R @ im0.R.T, atol=1e-15)
    np.testing.assert_allclose(t, im1.t - R @ im0.t, atol=1e-15)
    assert np.linalg.norm(t) > 0
    try:
        import pycolmap
    except ImportError:
        return
    # Independent oracle: pycolmap's cam1_from_world * cam0_from_world^-1.
    rec = pycolmap.Reconstruction(str(SCENES / scene_name / "sparse"))
    by_name = {img.name: img for img in rec.images.values()}
    rel = by_name[name1].cam_from_world() * by_name[name0].cam_from_world().inverse()
    m = rel.matrix()
    np.testing.assert_allclose(R, m[:, :3], atol=1e-9)
    np.testing.assert_allclose(t, m[:, 3], atol=1e-9)
    # Cameras: pycolmap's principal point (COLMAP convention) minus 0.5.
    cam_id = im0.camera_id
    assert scene.cameras[cam_id].cx == pytest.approx(rec.cameras[cam_id].principal_point_x - 0.5)
