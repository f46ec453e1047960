"""Tests of mbp_cli.evaluation.inputs: every input format of ``mbp eval`` and the per-pair reasons of bad inputs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from mbp_cli.errors import CalibrationError
from mbp_cli.evaluation.inputs import InputError, PairRule, collect_inputs, covisible_pairs, frame_gap_pairs
from mbp_cli.io.calibration import camera_from_colmap, camera_from_matrix
from mbp_cli.io.colmap import qvec_to_rotmat, read_pairs, read_scene, relative_pose

from colmap_model import ModelCamera, ModelImage, copy_scene, write_model
from paths import SCENES

needs_scenes = pytest.mark.skipif(not SCENES.is_dir(), reason="development scenes not available")
KERMIT = SCENES / "kermit"


def _random_model(n: int, seed: int = 0, points: bool = False) -> tuple[list[ModelCamera], list[ModelImage]]:
    """n images with random poses on two cameras; with ``points``, image i observes 3D points 100 i .. 100 i + 249."""
    rng = np.random.default_rng(seed)
    cameras = [
        ModelCamera(1, "PINHOLE", 640, 480, (500.0, 510.0, 320.5, 240.5)),
        ModelCamera(2, "RADIAL", 800, 600, (600.0, 400.0, 300.0, -0.05, 0.01)),
    ]
    images = []
    for i in range(n):
        q = rng.normal(size=4)
        ids = list(range(100 * i, 100 * i + 250)) + [-1] if points else []
        images.append(ModelImage(i + 1, q / np.linalg.norm(q), rng.normal(size=3), 1 + i % 2, f"f{i:02d}.png", ids))
    return cameras, images


def _scene(root: Path, n: int = 5, binary: bool = False, pairs: str | None = None, points: bool = False) -> Path:
    cameras, images = _random_model(n, points=points)
    write_model(root / "sparse", cameras, images, binary)
    (root / "images").mkdir(parents=True)
    if pairs is not None:
        (root / "pairs.txt").write_text(pairs)
    return root


def _keys(inputs) -> list[tuple[str, str]]:
    return [(t.image0, t.image1) for t in inputs.tasks]


@pytest.mark.parametrize("binary", [False, True])
def test_scene_pairs_and_ground_truth(tmp_path: Path, binary: bool) -> None:
    root = _scene(tmp_path / "s", binary=binary, pairs="f00.png f01.png\nf03.png f02.png\n# c\nf01.png f04.png\n")
    inputs = collect_inputs(root)
    assert inputs.kind == "scenes" and inputs.sources["s"]["pairs"] == "pairs.txt"
    assert _keys(inputs) == [("f00.png", "f01.png"), ("f03.png", "f02.png"), ("f01.png", "f04.png")]
    cameras, images = _random_model(5)
    by_name = {im.name: im for im in images}
    for task in inputs.tasks:
        assert task.error is None and task.gt_reason is None and task.scene == "s"
        # Independent ground truth from the writer's own poses: x1 = R1 R0^T x0 + (t1 - R t0).
        R0, R1 = qvec_to_rotmat(by_name[task.image0].qvec), qvec_to_rotmat(by_name[task.image1].qvec)
        R = R1 @ R0.T
        t = by_name[task.image1].tvec - R @ by_name[task.image0].tvec
        np.testing.assert_allclose(task.R_gt, R, atol=1e-12)
        np.testing.assert_allclose(task.t_gt, t / np.linalg.norm(t), atol=1e-12)
        assert task.path0 == root / "images" / task.image0
        cam = cameras[by_name[task.image0].camera_id - 1]
        assert task.camera0 == camera_from_colmap(cam.model, cam.width, cam.height, cam.params)
        assert task.camera0.cx == cam.params[2 if cam.model == "PINHOLE" else 1] - 0.5  # COLMAP corner convention


def test_pycolmap_binary_model(tmp_path: Path) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    text = _scene(tmp_path / "text", pairs="f00.png f01.png\nf02.png f04.png\n")
    binary = tmp_path / "binary"
    (binary / "sparse").mkdir(parents=True)
    (binary / "images").mkdir()
    pycolmap.Reconstruction(str(text / "sparse")).write_binary(str(binary / "sparse"))
    (binary / "pairs.txt").write_text((text / "pairs.txt").read_text())
    assert {"cameras.bin", "images.bin", "points3D.bin"} <= {p.name for p in (binary / "sparse").iterdir()}
    a, b = collect_inputs(text).tasks, collect_inputs(binary).tasks
    assert [(t.image0, t.image1) for t in a] == [(t.image0, t.image1) for t in b]
    for x, y in zip(a, b, strict=True):
        assert x.camera0 == y.camera0 and x.camera1 == y.camera1
        np.testing.assert_allclose(x.R_gt, y.R_gt, atol=1e-12)
        np.testing.assert_allclose(x.t_gt, y.t_gt, atol=1e-12)


@needs_scenes
def test_real_scene_evaluates_exactly_its_pairs_txt() -> None:
    inputs = collect_inputs(KERMIT)
    assert _keys(inputs) == read_pairs(KERMIT / "pairs.txt")
    scene = read_scene(KERMIT)
    for task in inputs.tasks:
        assert task.error is None and task.gt_reason is None
        R, t = relative_pose(scene, task.image0, task.image1)
        np.testing.assert_array_equal(task.R_gt, R)
        np.testing.assert_allclose(task.t_gt, t / np.linalg.norm(t), atol=1e-15)


def test_pair_rules_without_pairs_txt(tmp_path: Path) -> None:
    assert frame_gap_pairs(["c", "a", "b", "d"], 2) == [("a", "b"), ("a", "c"), ("b", "c"), ("b", "d"), ("c", "d")]
    frames = collect_inputs(_scene(tmp_path / "frames", n=6), PairRule(frame_gap=1))
    assert _keys(frames) == [(f"f{i:02d}.png", f"f{i + 1:02d}.png") for i in range(5)]
    assert frames.sources["frames"]["pairs"].startswith("frame gap")
    # Tracks: image i sees points 100 i .. 100 i + 249, so i and i + 1 share 150, i and i + 2 share 50.
    root = _scene(tmp_path / "tracks", n=5, points=True)
    assert covisible_pairs(read_scene(root), 150) == [(f"f{i:02d}.png", f"f{i + 1:02d}.png") for i in range(4)]
    both = collect_inputs(root, PairRule(min_covisible=50))
    assert len(both.tasks) == 4 + 3 and both.sources["tracks"]["pairs"].startswith("co-visible")
    capped = collect_inputs(root, PairRule(min_covisible=50, max_pairs=3))
    assert _keys(capped) == [_keys(both)[i] for i in (0, 3, 6)]
    assert "3 of 7 pairs" in capped.sources["tracks"]["pairs"]
    with pytest.raises(ValueError, match="frame-gap"):
        PairRule(frame_gap=0)


def test_bad_pairs_are_reported_one_by_one(tmp_path: Path) -> None:
    pairs = "f00.png f01.png\nf00.png\nf02.png f02.png\nf00.png nothere.png\nf01.png f02.png\nf00.png f01.png\n"
    root = _scene(tmp_path / "s", n=4, pairs=pairs)
    cameras = root / "sparse" / "cameras.txt"
    cameras.write_text(cameras.read_text().replace("RADIAL 800 600", "FOV 800 600"))  # camera 2: f01, f03
    inputs = collect_inputs(root)
    reasons = {(t.image0, t.image1): t.error for t in inputs.tasks}
    assert inputs.duplicates == 1
    assert reasons[("f00.png", "nothere.png")] == "image nothere.png is not in the COLMAP model of scene s"
    assert "FOV is not supported" in reasons[("f00.png", "f01.png")]
    assert "FOV is not supported" in reasons[("f01.png", "f02.png")]
    assert "expected two image names" in reasons[("f00.png", "<line 2>")]
    assert "with itself" in reasons[("f02.png", "f02.png")]
    assert "FOV is not supported" in inputs.sources["s"]["camera_errors"][2]


def test_folder_of_scenes(tmp_path: Path) -> None:
    _scene(tmp_path / "b", n=3, pairs="f00.png f01.png\n")
    _scene(tmp_path / "a", n=3, pairs="f01.png f02.png\n")
    broken = _scene(tmp_path / "c", n=3, pairs="f00.png f02.png\n")
    (broken / "sparse" / "images.txt").write_text("not an images file\n")
    (tmp_path / "notes").mkdir()
    inputs = collect_inputs(tmp_path)
    assert [(t.scene, t.image0) for t in inputs.tasks] == [("a", "f01.png"), ("b", "f00.png"), ("c", "f00.png")]
    assert inputs.tasks[2].error is not None and "expected IMAGE_ID" in inputs.tasks[2].error
    assert "expected IMAGE_ID" in inputs.sources["c"]["error"]
    # The same broken scene alone: nothing to evaluate without its pairs.
    (broken / "pairs.txt").unlink()
    with pytest.raises(CalibrationError, match="expected IMAGE_ID"):
        collect_inputs(broken)


def _pairs_line(a: str, b: str, K0: np.ndarray, K1: np.ndarray, T: np.ndarray, rot: tuple[int, int] = (0, 0)) -> str:
    return " ".join([a, b, str(rot[0]), str(rot[1]), *(repr(float(v)) for v in (*K0.ravel(), *K1.ravel(), *T.ravel()))])


def test_superglue_pairs_file(tmp_path: Path) -> None:
    K0 = np.array([[1163.4, 0.0, 653.6], [0.0, 1164.8, 481.6], [0.0, 0.0, 1.0]])
    K1 = np.array([[577.0, 0.0, 319.5], [0.0, 578.0, 239.5], [0.0, 0.0, 1.0]])
    angle = np.deg2rad(20.0)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0], [-np.sin(angle), 0.0, np.cos(angle)]]
    T[:3, 3] = [0.3, -0.1, 0.2]
    T_inf = T.copy()
    T_inf[0, 3] = -np.inf  # ScanNet marks poses it lost with inf
    lines = [
        _pairs_line("scene0707_00/color/15.jpg", "scene0707_00/color/585.jpg", K0, K1, T),
        _pairs_line("a.jpg", "b.jpg", K0, K1, T, rot=(1, 0)),
        _pairs_line("c.jpg", "d.jpg", K0, K1, T_inf),
        _pairs_line("e.jpg", "f.jpg", K0, np.zeros((3, 3)), T),
        "g.jpg h.jpg 0 0 1 2 3",
        "i.jpg j.jpg",
        "k.jpg l.jpg 0 0",
    ]
    (tmp_path / "img").mkdir()
    pairs = tmp_path / "scannet_test_pairs_with_gt.txt"
    pairs.write_text("\n".join(lines) + "\n")
    inputs = collect_inputs(pairs, images=tmp_path / "img")
    assert inputs.kind == "pairs_file" and len(inputs.tasks) == 7
    first = inputs.tasks[0]
    assert first.scene == "scannet_test_pairs_with_gt" and first.image0 == "scene0707_00/color/15.jpg"
    assert first.path0 == tmp_path / "img" / "scene0707_00/color/15.jpg"
    assert first.camera0 == camera_from_matrix(K0) and first.camera1 == camera_from_matrix(K1)  # K taken as is
    np.testing.assert_array_equal(first.R_gt, T[:3, :3])  # T_0to1 is x1 = R x0 + t
    np.testing.assert_allclose(first.t_gt, T[:3, 3] / np.linalg.norm(T[:3, 3]))
    rotated, lost, singular, short, no_k, no_gt = inputs.tasks[1:]
    assert "rot0/rot1 = 1/0: rotated images are not supported" in rotated.error
    assert lost.error is None and lost.R_gt is None and "non-finite" in lost.gt_reason
    assert "line 4 K1: the last row of K must be 0 0 1" in singular.error
    assert "expected 2, 4 or 38 fields" in short.error and "found 7" in short.error
    assert "no K0/K1 on the line and no --K given" in no_k.error and "no --K" in no_gt.error
    # With --K, lines without K are estimated (without ground truth).
    camera = camera_from_matrix(K1)
    with_k = collect_inputs(pairs, images=tmp_path / "img", calibration=camera).tasks
    assert with_k[5].error is None and with_k[5].camera0 == camera and "no K0 K1 T_0to1" in with_k[5].gt_reason
    # The images default to the pairs file's folder.
    assert collect_inputs(pairs).tasks[0].path0 == tmp_path / "scene0707_00/color/15.jpg"


def test_folder_of_images(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "c.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(InputError, match="give their calibration with --K"):
        collect_inputs(tmp_path)
    camera = camera_from_matrix(np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]))
    inputs = collect_inputs(tmp_path, PairRule(frame_gap=1), calibration=camera)
    assert inputs.kind == "images"
    assert _keys(inputs) == [("a.jpg", "b.png"), ("b.png", "c.JPG")]
    assert all(t.R_gt is None and "estimated only" in t.gt_reason and t.camera1 == camera for t in inputs.tasks)


def test_unusable_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        collect_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no COLMAP model"):
        collect_inputs(tmp_path / "empty")
    root = _scene(tmp_path / "s", n=3)
    with pytest.raises(InputError, match="--images only applies to a pairs file"):
        collect_inputs(root, images=tmp_path)
    camera = camera_from_matrix(np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]))
    for scenes in (root, tmp_path):
        with pytest.raises(InputError, match="--K only applies to a folder of images or a pairs file"):
            collect_inputs(scenes, calibration=camera)
    binary_pairs = tmp_path / "pairs.bin"
    binary_pairs.write_bytes(struct.pack("<d", 1.5) + b"\xff\xfe")
    with pytest.raises(InputError, match="cannot be read as text"):
        collect_inputs(binary_pairs)


@needs_scenes
def test_copied_scene_with_our_binary_writer(tmp_path: Path) -> None:
    names = ["kermit000.jpg", "kermit001.jpg", "kermit002.jpg"]
    pairs = [("kermit000.jpg", "kermit001.jpg"), ("kermit001.jpg", "kermit002.jpg")]
    text = collect_inputs(copy_scene(KERMIT, tmp_path / "t", names, pairs)).tasks
    binary = collect_inputs(copy_scene(KERMIT, tmp_path / "b", names, pairs, binary=True)).tasks
    original = {t.key[1:]: t for t in collect_inputs(KERMIT).tasks}
    for x, y in zip(text, binary, strict=True):
        ref = original[x.key[1:]]
        assert x.camera0 == y.camera0 == ref.camera0 and x.camera1 == y.camera1 == ref.camera1
        np.testing.assert_allclose(y.R_gt, ref.R_gt, atol=1e-12)
        np.testing.assert_allclose(y.t_gt, ref.t_gt, atol=1e-12)
