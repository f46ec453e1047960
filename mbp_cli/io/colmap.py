"""Posed scenes in the COLMAP model layout: cameras, world-to-camera poses, and the pairs to evaluate.

Layout (as in the development scenes of ``shared/data/``)::

    <scene>/images/<name>                  the images
    <scene>/sparse/cameras.{bin,txt}       intrinsics (also accepted: <scene>/sparse/0/ or <scene>/ itself)
    <scene>/sparse/images.{bin,txt}        world-to-camera poses
    <scene>/pairs.txt                      "name0 name1" per line (optional)

Poses follow COLMAP: ``x_cam = R(q) X_world + t`` with the unit quaternion ``q = (w, x, y, z)`` (Hamilton). The
relative pose of a pair (image 0, image 1) is ``R = R1 R0ᵀ``, ``t = t1 − R t0``, so that ``x1 = R x0 + t`` — the
package convention. Cameras are converted to the OpenCV pixel convention on reading (principal point − 0.5 px),
see :mod:`mbp_cli.io.calibration`. Binary files are preferred over text ones when both exist, as COLMAP does.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mbp_cli.errors import CalibrationError
from mbp_cli.io.calibration import Camera, read_colmap_cameras

__all__ = [
    "PairLine",
    "Scene",
    "SceneError",
    "SceneImage",
    "find_model_dir",
    "qvec_to_rotmat",
    "read_images_bin",
    "read_images_txt",
    "read_pair_lines",
    "read_pairs",
    "read_scene",
    "relative_pose",
]


# COLMAP's invalid point3D_id in binary files: uint64(-1).
_NO_POINT3D = np.uint64(2**64 - 1)


class SceneError(CalibrationError):
    """A posed scene (COLMAP model or pairs list) is missing, malformed or inconsistent.

    A subclass of CalibrationError: ground-truth poses are part of the calibration of an evaluation, and the CLI
    reports both with the same exit code.
    """


@dataclass(frozen=True)
class SceneImage:
    """One registered image of a scene.

    Attributes:
        image_id: COLMAP image id.
        name: file name relative to the scene's ``images/`` folder (may contain sub-folders).
        camera_id: id of its camera in ``Scene.cameras``.
        R: (3, 3) float64 world-to-camera rotation, ``x_cam = R X_world + t``.
        t: (3,) float64 world-to-camera translation (scene units).
        point3D_ids: ids of the 3D points the image observes (from its 2D points; empty when the model has no
            tracks), for choosing co-visible pairs.
    """

    image_id: int
    name: str
    camera_id: int
    R: np.ndarray
    t: np.ndarray
    point3D_ids: frozenset[int] = frozenset()


@dataclass
class Scene:
    """A posed scene.

    Attributes:
        root: the scene folder (the one holding ``images/``).
        cameras: camera_id → Camera (OpenCV pixel convention).
        images: image name → SceneImage.
        pairs: (name0, name1) pairs from ``pairs.txt``, in file order; empty when the scene has no such file
            (and when read with ``strict=False``, see :func:`read_scene`).
        camera_errors: camera_id → why that camera cannot be used (only filled by ``read_scene(strict=False)``).
    """

    root: Path
    cameras: dict[int, Camera]
    images: dict[str, SceneImage]
    pairs: list[tuple[str, str]] = field(default_factory=list)
    camera_errors: dict[int, str] = field(default_factory=dict)

    def image_path(self, name: str) -> Path:
        """Path of an image file: ``root / "images" / name``."""
        return self.root / "images" / name

    def camera_of(self, name: str) -> Camera:
        """The camera of the image called ``name``.

        Raises:
            SceneError: unknown image name.
            CalibrationError: its camera is unusable (a scene read with ``strict=False``).
        """
        camera_id = _get_image(self, name).camera_id
        if camera_id in self.camera_errors:
            raise CalibrationError(self.camera_errors[camera_id])
        return self.cameras[camera_id]


def qvec_to_rotmat(qvec: np.ndarray | tuple[float, float, float, float]) -> np.ndarray:
    """Rotation matrix of a Hamilton quaternion ``(w, x, y, z)`` (normalized first, as COLMAP does).

    Args:
        qvec: (4,) quaternion, w first. Must be nonzero and finite.

    Returns:
        (3, 3) float64 rotation matrix.

    Raises:
        ValueError: zero or non-finite quaternion.
    """
    q = np.asarray(qvec, dtype=np.float64)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion {q.tolist()} is zero or not finite")
    w, x, y, z = q / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ],
        dtype=np.float64,
    )


def _pose_image(
    image_id: int,
    qvec: np.ndarray,
    tvec: np.ndarray,
    camera_id: int,
    name: str,
    where: str,
    point3D_ids: frozenset[int] = frozenset(),
) -> SceneImage:
    """A SceneImage from raw values, with errors naming ``where``."""
    try:
        R = qvec_to_rotmat(qvec)
    except ValueError as exc:
        raise SceneError(f"{where}: image {name}: {exc}") from None
    t = np.asarray(tvec, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(t)):
        raise SceneError(f"{where}: image {name}: translation {t.tolist()} is not finite")
    return SceneImage(image_id, name, camera_id, R, t, point3D_ids)


def _observed_points_txt(line: str, where: str) -> frozenset[int]:
    """The 3D point ids of a ``POINTS2D[] as (X, Y, POINT3D_ID)`` line; -1 marks a point without a track."""
    tok = line.split()
    if len(tok) % 3:
        raise SceneError(f"{where}: the 2D points line has {len(tok)} values, not a multiple of 3 (X Y POINT3D_ID)")
    try:
        return frozenset(i for i in (int(v) for v in tok[2::3]) if i != -1)
    except ValueError:
        raise SceneError(f"{where}: the 2D points line has a POINT3D_ID that is not an integer") from None


def read_images_txt(path: str | os.PathLike[str]) -> dict[str, SceneImage]:
    """Read a COLMAP ``images.txt``.

    Each image takes two lines: ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` and its 2D points ``X Y POINT3D_ID``
    (may be empty; only the 3D point ids are kept). As in COLMAP's reader, the line after an image line is always its
    points line, even when blank.

    Args:
        path: the file.

    Returns:
        name → SceneImage, in file order.

    Raises:
        SceneError: unreadable file, malformed line, duplicate name.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneError(f"scene file {p}: cannot be read as text ({exc})") from None
    images: dict[str, SceneImage] = {}
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        lineno = i + 1
        i += 1
        if not line or line.startswith("#"):
            continue
        tok = line.split()
        if len(tok) < 10:
            raise SceneError(
                f"scene file {p} line {lineno}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, found '{line}'"
            )
        try:
            image_id, camera_id = int(tok[0]), int(tok[8])
            vals = np.array([float(v) for v in tok[1:8]])
        except ValueError:
            raise SceneError(f"scene file {p} line {lineno}: non-numeric pose or id in '{line}'") from None
        # Names are the rest of the line: COLMAP itself never writes spaces, but tolerating them costs nothing.
        name = " ".join(tok[9:])
        if name in images:
            raise SceneError(f"scene file {p} line {lineno}: image {name} appears twice")
        # the POINTS2D line always follows (possibly empty, or missing at the end of the file)
        points = _observed_points_txt(lines[i], f"scene file {p} line {lineno + 1}") if i < len(lines) else frozenset()
        images[name] = _pose_image(
            image_id, vals[:4], vals[4:7], camera_id, name, f"scene file {p} line {lineno}", points
        )
        i += 1
    return images


def read_images_bin(path: str | os.PathLike[str]) -> dict[str, SceneImage]:
    """Read a COLMAP ``images.bin``.

    Little-endian layout: ``uint64 num_reg_images``; per image ``uint32 image_id, float64 qvec[4] (w, x, y, z),
    float64 tvec[3], uint32 camera_id, name (null-terminated bytes), uint64 num_points2D``, then
    ``num_points2D × (float64 x, float64 y, uint64 point3D_id)`` of which only the point ids are kept
    (``2^64 - 1`` marks a 2D point without a 3D point).

    Args:
        path: the file.

    Returns:
        name → SceneImage, in file order.

    Raises:
        SceneError: unreadable or truncated file, trailing bytes, duplicate name.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SceneError(f"scene file {p}: cannot be read ({exc.strerror or exc})") from exc
    images: dict[str, SceneImage] = {}
    try:
        (num,) = struct.unpack_from("<Q", data, 0)
        off = 8
        for rec in range(num):
            image_id, *vals = struct.unpack_from("<I7d", data, off)
            off += 4 + 56
            (camera_id,) = struct.unpack_from("<I", data, off)
            off += 4
            end = data.index(b"\0", off)  # ValueError when missing: truncated file
            name = data[off:end].decode("utf-8", errors="replace")
            off = end + 1
            (num_points,) = struct.unpack_from("<Q", data, off)
            off += 8
            if off + 24 * num_points > len(data):
                raise struct.error("points beyond the end of the file")
            ids = np.frombuffer(data, dtype="<u8", count=3 * num_points, offset=off)[2::3]
            off += 24 * num_points
            if name in images:
                raise SceneError(f"scene file {p}: image {name} appears twice (record {rec + 1})")
            v = np.array(vals)
            points = frozenset(ids[ids != _NO_POINT3D].tolist())
            images[name] = _pose_image(image_id, v[:4], v[4:7], camera_id, name, f"scene file {p}", points)
    except (struct.error, ValueError):
        raise SceneError(f"scene file {p}: truncated or not a COLMAP images.bin file") from None
    if off != len(data):
        raise SceneError(f"scene file {p}: {len(data) - off} unexpected bytes after the images; not an images.bin file")
    return images


@dataclass(frozen=True)
class PairLine:
    """One non-blank line of a pairs file.

    Attributes:
        lineno: 1-based line number.
        names: its whitespace-separated fields (``#`` comments removed).
        error: why the line is not a pair ``name0 name1`` (None when it is one).
    """

    lineno: int
    names: tuple[str, ...]
    error: str | None = None


def read_pair_lines(path: str | os.PathLike[str]) -> list[PairLine]:
    """Read a ``pairs.txt`` line by line, keeping each bad line with its reason instead of raising.

    ``name0 name1`` per line; ``#`` comments and blank lines are skipped. A line without exactly two names, or
    pairing an image with itself, comes back with ``error`` set.

    Raises:
        SceneError: the file cannot be read as text.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneError(f"pairs file {p}: cannot be read as text ({exc})") from None
    out: list[PairLine] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tok = tuple(raw.split("#", 1)[0].split())
        if not tok:
            continue
        error = None
        if len(tok) != 2:
            error = f"pairs file {p} line {lineno}: expected two image names, found {len(tok)} fields"
        elif tok[0] == tok[1]:
            error = f"pairs file {p} line {lineno}: pairs image {tok[0]} with itself"
        out.append(PairLine(lineno, tok, error))
    return out


def read_pairs(path: str | os.PathLike[str], images: dict[str, SceneImage] | None = None) -> list[tuple[str, str]]:
    """Read a ``pairs.txt``: ``name0 name1`` per line, ``#`` comments and blank lines ignored.

    Args:
        path: the file.
        images: if given, every name must be one of these images.

    Returns:
        The pairs in file order.

    Raises:
        SceneError: a line without exactly two names, a pair of an image with itself, or an unknown name.
    """
    pairs: list[tuple[str, str]] = []
    for line in read_pair_lines(path):
        if line.error:
            raise SceneError(line.error)
        if images is not None:
            for name in line.names:
                if name not in images:
                    raise SceneError(f"pairs file {path} line {line.lineno}: image {name} is not in the COLMAP model")
        pairs.append((line.names[0], line.names[1]))
    return pairs


def find_model_dir(path: str | os.PathLike[str]) -> Path:
    """The folder holding the COLMAP model of a scene: ``path/sparse``, ``path/sparse/0`` or ``path`` itself.

    Raises:
        SceneError: no candidate holds both a cameras and an images file.
    """
    root = Path(path)
    for d in (root / "sparse", root / "sparse" / "0", root):
        has_cams = (d / "cameras.bin").is_file() or (d / "cameras.txt").is_file()
        has_imgs = (d / "images.bin").is_file() or (d / "images.txt").is_file()
        if has_cams and has_imgs:
            return d
    raise SceneError(
        f"scene {root}: no COLMAP model found; expected sparse/cameras.txt and sparse/images.txt (or .bin)"
    )


def read_scene(path: str | os.PathLike[str], strict: bool = True) -> Scene:
    """Read a posed scene folder.

    Args:
        path: the scene folder (holding ``images/``, ``sparse/`` and optionally ``pairs.txt``). A folder that
            is itself the COLMAP model (``cameras.*`` and ``images.*`` inside) is accepted too; then its parent
            is taken as the root when ``images/`` lives there (COLMAP's ``<project>/sparse/0`` layout).
        strict: False reads what can be used of a partly bad scene, for evaluation: a camera of an unsupported
            model or with invalid values, and a camera missing from the cameras file, go to
            ``Scene.camera_errors`` (:meth:`Scene.camera_of` raises with that reason), and ``pairs.txt`` is not
            read (read it with :func:`read_pair_lines`, which reports bad lines one by one).

    Returns:
        The scene, with cameras in the OpenCV pixel convention.

    Raises:
        SceneError: missing or malformed model files, and when ``strict``: an image whose camera is missing, or
            a bad pairs file.
        CalibrationError: a malformed cameras file, and when ``strict``: a camera of an unsupported model or
            with invalid values.
    """
    root = Path(path)
    if not root.is_dir():
        raise SceneError(f"scene {root} is not a folder; give the folder holding sparse/ and images/")
    model = find_model_dir(root)
    if model == root:
        # Given the model folder itself: find the project folder that holds images/.
        for parent in (root, *root.parents[:2]):
            if (parent / "images").is_dir():
                root = parent
                break
    cams_file = model / "cameras.bin" if (model / "cameras.bin").is_file() else model / "cameras.txt"
    imgs_file = model / "images.bin" if (model / "images.bin").is_file() else model / "images.txt"
    camera_errors: dict[int, str] = {}
    cameras = read_colmap_cameras(cams_file, None if strict else camera_errors)
    images = read_images_bin(imgs_file) if imgs_file.suffix == ".bin" else read_images_txt(imgs_file)
    for img in images.values():
        if img.camera_id not in cameras and img.camera_id not in camera_errors:
            message = f"scene file {imgs_file}: image {img.name} uses camera {img.camera_id}, not in {cams_file.name}"
            if strict:
                raise SceneError(message)
            camera_errors[img.camera_id] = message
    if not strict:
        return Scene(root=root, cameras=cameras, images=images, camera_errors=camera_errors)
    pairs_file = root / "pairs.txt"
    pairs = read_pairs(pairs_file, images) if pairs_file.is_file() else []
    return Scene(root=root, cameras=cameras, images=images, pairs=pairs)


def _get_image(scene: Scene, name: str) -> SceneImage:
    try:
        return scene.images[name]
    except KeyError:
        raise SceneError(f"scene {scene.root}: no image named {name} in the COLMAP model") from None


def relative_pose(scene: Scene, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth relative pose of the pair (name0, name1): ``x1 = R x0 + t`` in camera coordinates.

    ``R = R1 R0ᵀ`` and ``t = t1 − R t0`` from the world-to-camera poses. ``t`` is in scene units and **not**
    normalized (its norm is the baseline; callers normalise it, and a zero baseline means no parallax).

    Args:
        scene: the scene.
        name0: image 0.
        name1: image 1.

    Returns:
        ``(R, t)``: (3, 3) float64 rotation, (3,) float64 translation.

    Raises:
        SceneError: unknown image name.
    """
    im0, im1 = _get_image(scene, name0), _get_image(scene, name1)
    R = im1.R @ im0.R.T
    t = im1.t - R @ im0.t
    return R, t
