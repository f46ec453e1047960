"""What ``mbp eval`` evaluates: the pairs of its input, each with cameras and ground truth, or a reason it cannot.

Inputs (see :func:`collect_inputs`):

* a **scene** in the COLMAP layout (``images/``, ``sparse/`` with text or binary files, optional ``pairs.txt``);
* a **folder of scenes** (every sub-folder holding a COLMAP model, in name order);
* a **pairs file** in the SuperGlue/LoFTR style (ScanNet-1500, MegaDepth-1500 lists), one pair per line::

      name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)

  ``K0``/``K1`` are row-major 3x3 matrices for the images as stored under ``--images``, taken in the pixel-centre
  convention (mbp's, and how SuperGlue/LoFTR use them with their keypoints). ``T_0to1`` is the row-major 4x4
  cam1_from_cam0 transform, so ``x1 = R x0 + t`` (mbp's convention). ``rot0``/``rot1`` are SuperGlue's
  EXIF-style quarter turns: mbp reads images as stored, so a pair with a non-zero rotation is reported as an error.
  ``name0 name1`` (or ``name0 name1 rot0 rot1``) lines have no ground truth and take ``--K``;
* a **folder of images** without ground truth (with ``--K``): estimated only.

Pairs of a scene: exactly those of its ``pairs.txt`` when it has one. Without it: the pairs of images that observe
at least ``min_covisible`` common 3D points when the model has point tracks, else the pairs of images at most
``frame_gap`` apart in name order (a video or a capture sequence). ``max_pairs`` keeps that many pairs evenly
spread over the list (any source).

Every pair becomes a :class:`PairTask`. A bad pair (a malformed line, an image missing from the model, an
unusable camera, a non-zero rotation) carries ``error``; a pair without usable ground truth carries
``gt_reason`` and is estimated but not scored. Problems of a whole input raise :class:`InputError`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from mbp_cli.errors import CalibrationError, ExitCode, MbpError
from mbp_cli.io.calibration import Camera, camera_from_matrix
from mbp_cli.io.colmap import Scene, SceneError, find_model_dir, read_pair_lines, read_scene, relative_pose

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm", ".jp2")
PAIRS_FILE_FIELDS = (2, 4, 38)  # name0 name1 [rot0 rot1 [K0(9) K1(9) T_0to1(16)]]
# A ground-truth rotation further than this from orthonormal (max |R^T R - I|) is not a rotation.
_ROTATION_TOL = 1e-3
# A ground-truth baseline shorter than this (scene units) has no translation direction.
_MIN_BASELINE = 1e-9


class InputError(MbpError):
    """The input of an evaluation as a whole is unusable (one-line message, usage exit code)."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class PairRule:
    """How pairs are chosen for a scene or image folder without ``pairs.txt`` (see the module docstring).

    Attributes:
        frame_gap: pairs of images at most this far apart in name order (without 3D point tracks).
        min_covisible: least number of common 3D points of a co-visible pair (with tracks).
        max_pairs: keep at most this many pairs per scene, evenly spread over its list (0: all).
    """

    frame_gap: int = 2
    min_covisible: int = 100
    max_pairs: int = 0

    def __post_init__(self) -> None:
        if self.frame_gap < 1:
            raise ValueError(f"--frame-gap must be at least 1, got {self.frame_gap}")
        if self.min_covisible < 1:
            raise ValueError(f"--min-covisible must be at least 1, got {self.min_covisible}")
        if self.max_pairs < 0:
            raise ValueError(f"--max-pairs must be 0 (all) or positive, got {self.max_pairs}")


@dataclass(frozen=True, eq=False)
class PairTask:
    """One pair to evaluate.

    Attributes:
        scene: scene name (folder name; the pairs file's stem for a pairs file).
        image0, image1: image names as in the scene (relative to its ``images/`` folder or to ``--images``).
        path0, path1: the image files.
        camera0, camera1: their calibrations (None with ``error``).
        R_gt: (3, 3) ground-truth rotation, ``x1 = R x0 + t``; None without ground truth.
        t_gt: (3,) unit ground-truth translation direction; None without ground truth.
        error: why the pair cannot be evaluated at all (None when it can).
        gt_reason: why it has no ground truth (None when it has).
    """

    scene: str
    image0: str
    image1: str
    path0: Path | None = None
    path1: Path | None = None
    camera0: Camera | None = None
    camera1: Camera | None = None
    R_gt: np.ndarray | None = None
    t_gt: np.ndarray | None = None
    error: str | None = None
    gt_reason: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """``(scene, image0, image1)``: the pair's identity in ``pairs.jsonl``."""
        return (self.scene, self.image0, self.image1)


@dataclass
class EvalInputs:
    """The pairs of an input and how they were found.

    Attributes:
        kind: ``scenes`` (one or several COLMAP scenes), ``pairs_file`` or ``images``.
        tasks: every pair, scene by scene in input order.
        sources: scene → how its pairs were chosen, and scene-level problems.
        duplicates: pairs listed more than once (evaluated once).
    """

    kind: str
    tasks: list[PairTask] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0

    def add(self, task: PairTask, seen: set[tuple[str, str, str]]) -> None:
        if task.key in seen:
            self.duplicates += 1
            return
        seen.add(task.key)
        self.tasks.append(task)


def _spread(items: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` items evenly spread over ``items`` (all of them for ``limit`` 0), in order."""
    if not limit or len(items) <= limit:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round()]


def frame_gap_pairs(names: list[str], gap: int) -> list[tuple[str, str]]:
    """Pairs of images at most ``gap`` apart in name order: (0, 1), (0, 2), ..., (1, 2), ..."""
    ordered = sorted(names)
    return [(a, ordered[i + d]) for i, a in enumerate(ordered) for d in range(1, gap + 1) if i + d < len(ordered)]


def covisible_pairs(scene: Scene, min_covisible: int) -> list[tuple[str, str]]:
    """Pairs of images (in name order) that observe at least ``min_covisible`` common 3D points."""
    observers: dict[int, list[str]] = {}
    for name in sorted(scene.images):
        for point in scene.images[name].point3D_ids:
            observers.setdefault(point, []).append(name)
    shared: Counter[tuple[str, str]] = Counter()
    for names in observers.values():
        shared.update(combinations(names, 2))
    return sorted(pair for pair, count in shared.items() if count >= min_covisible)


def _ground_truth(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(R, unit t, None), or (None, None, reason) when they are no usable ground truth."""
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        return None, None, "no ground truth: the pose has non-finite values"
    if np.abs(R.T @ R - np.eye(3)).max() > _ROTATION_TOL or np.linalg.det(R) < 0:
        return None, None, "no ground truth: the rotation is not a rotation matrix"
    norm = float(np.linalg.norm(t))
    if norm < _MIN_BASELINE:
        return None, None, "no ground truth: zero baseline (no translation direction)"
    return R, t / norm, None


def _scene_task(scene: Scene, name: str, a: str, b: str) -> PairTask:
    for image in (a, b):
        if image not in scene.images:
            return PairTask(name, a, b, error=f"image {image} is not in the COLMAP model of scene {name}")
    try:
        camera0, camera1 = scene.camera_of(a), scene.camera_of(b)
    except CalibrationError as exc:
        return PairTask(name, a, b, error=exc.message)
    R, t, gt_reason = _ground_truth(*relative_pose(scene, a, b))
    return PairTask(name, a, b, scene.image_path(a), scene.image_path(b), camera0, camera1, R, t, gt_reason=gt_reason)


def _pair_lines(path: Path, scene: str) -> tuple[list[tuple[str, str]], list[PairTask]]:
    """The good pairs of a ``pairs.txt`` and an error task for each bad line."""
    pairs, bad = [], []
    for line in read_pair_lines(path):
        if line.error is None:
            pairs.append((line.names[0], line.names[1]))
        else:
            bad.append(_line_error_task(scene, line.lineno, line.names, line.error))
    return pairs, bad


def _line_error_task(scene: str, lineno: int, fields: tuple[str, ...], error: str) -> PairTask:
    """An error task for a bad line; names it by its first two fields (or its line number)."""
    image0 = fields[0] if fields else f"<line {lineno}>"
    image1 = fields[1] if len(fields) > 1 else f"<line {lineno}>"
    return PairTask(scene, image0, image1, error=error)


def _scene_inputs(root: Path, rule: PairRule, inputs: EvalInputs, seen: set[tuple[str, str, str]]) -> None:
    """Add the pairs of one COLMAP scene folder; a scene that cannot be read is recorded in ``inputs.sources``."""
    name = root.name
    pairs_file = root / "pairs.txt"
    try:
        scene = read_scene(root, strict=False)
    except (SceneError, CalibrationError) as exc:
        inputs.sources[name] = {"pairs": "none", "error": exc.message}
        if pairs_file.is_file():  # the pairs are known: report each of them
            try:
                pairs, bad = _pair_lines(pairs_file, name)
            except SceneError:
                return
            inputs.sources[name]["pairs"] = "pairs.txt"
            for a, b in pairs:
                inputs.add(PairTask(name, a, b, error=exc.message), seen)
            for task in bad:
                inputs.add(task, seen)
        return
    bad: list[PairTask] = []
    if (scene.root / "pairs.txt").is_file():
        pairs, bad = _pair_lines(scene.root / "pairs.txt", name)
        source = "pairs.txt"
    elif any(img.point3D_ids for img in scene.images.values()):
        pairs = covisible_pairs(scene, rule.min_covisible)
        source = f"co-visible: at least {rule.min_covisible} common 3D points"
    else:
        pairs = frame_gap_pairs(list(scene.images), rule.frame_gap)
        source = f"frame gap: images at most {rule.frame_gap} apart in name order"
    chosen = _spread(pairs, rule.max_pairs)
    if len(chosen) < len(pairs):
        source += f", {len(chosen)} of {len(pairs)} pairs evenly spread (--max-pairs)"
    inputs.sources[name] = {"pairs": source, "camera_errors": dict(scene.camera_errors)}
    for a, b in chosen:
        inputs.add(_scene_task(scene, name, a, b), seen)
    for task in bad:
        inputs.add(task, seen)


def _floats(tokens: list[str]) -> np.ndarray:
    return np.array([float(v) for v in tokens], dtype=np.float64)


def _pairs_file_task(
    scene: str, lineno: int, tok: list[str], images: Path, calibration: Camera | None, where: str
) -> PairTask:
    """The task of one line of a SuperGlue/LoFTR pairs file."""
    if len(tok) not in PAIRS_FILE_FIELDS:
        return _line_error_task(
            scene,
            lineno,
            tuple(tok),
            f"{where}: expected 2, 4 or 38 fields (name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)), found {len(tok)}",
        )
    a, b = tok[0], tok[1]
    if a == b:
        return PairTask(scene, a, b, error=f"{where}: pairs image {a} with itself")
    if len(tok) >= 4:
        try:
            rot0, rot1 = int(tok[2]), int(tok[3])
        except ValueError:
            return PairTask(scene, a, b, error=f"{where}: rot0 and rot1 must be integers, found {tok[2]} {tok[3]}")
        if rot0 % 4 or rot1 % 4:
            return PairTask(
                scene,
                a,
                b,
                error=f"{where}: rot0/rot1 = {rot0}/{rot1}: rotated images are not supported (mbp reads images as "
                "stored); rotate the files and their calibration, or drop the pair",
            )
    R = t = None
    gt_reason = f"no ground truth: {where} has no K0 K1 T_0to1"
    if len(tok) == 38:
        try:
            values = _floats(tok[4:])
        except ValueError:
            return PairTask(scene, a, b, error=f"{where}: K0, K1 and T_0to1 must be numbers")
        try:
            camera0 = camera_from_matrix(values[:9].reshape(3, 3), source=f"{where} K0")
            camera1 = camera_from_matrix(values[9:18].reshape(3, 3), source=f"{where} K1")
        except CalibrationError as exc:
            return PairTask(scene, a, b, error=exc.message)
        T = values[18:].reshape(4, 4)
        R, t, gt_reason = _ground_truth(T[:3, :3], T[:3, 3])
        if gt_reason is not None:
            gt_reason = gt_reason.replace("no ground truth:", f"no ground truth: {where}: T_0to1:")
    elif calibration is None:
        return PairTask(scene, a, b, error=f"{where}: no K0/K1 on the line and no --K given")
    else:
        camera0 = camera1 = calibration
    return PairTask(scene, a, b, images / a, images / b, camera0, camera1, R, t, gt_reason=gt_reason)


def _pairs_file_inputs(path: Path, images: Path | None, calibration: Camera | None) -> EvalInputs:
    root = images if images is not None else path.parent
    if not root.is_dir():
        raise InputError(f"image folder {root} of pairs file {path} is not a folder; give it with --images")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"pairs file {path} cannot be read as text ({exc})") from None
    scene = path.stem
    inputs = EvalInputs("pairs_file", sources={scene: {"pairs": f"pairs file {path}", "images": str(root)}})
    seen: set[tuple[str, str, str]] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tok = raw.split("#", 1)[0].split()
        if tok:
            inputs.add(_pairs_file_task(scene, lineno, tok, root, calibration, f"{path.name} line {lineno}"), seen)
    return inputs


def _image_names(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)).replace(os.sep, "/")
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def _images_inputs(root: Path, calibration: Camera | None, rule: PairRule) -> EvalInputs:
    folder = root / "images" if (root / "images").is_dir() else root
    names = _image_names(folder)
    if calibration is None:
        raise InputError(f"{root} is a folder of images without poses: give their calibration with --K")
    if len(names) < 2:
        raise InputError(f"{root} holds {len(names)} image(s); a pair needs two")
    scene = root.name
    inputs = EvalInputs("images")
    seen: set[tuple[str, str, str]] = set()
    bad: list[PairTask] = []
    if (root / "pairs.txt").is_file():
        pairs, bad = _pair_lines(root / "pairs.txt", scene)
        source = "pairs.txt"
    else:
        pairs = frame_gap_pairs(names, rule.frame_gap)
        source = f"frame gap: images at most {rule.frame_gap} apart in name order"
    chosen = _spread(pairs, rule.max_pairs)
    if len(chosen) < len(pairs):
        source += f", {len(chosen)} of {len(pairs)} pairs evenly spread (--max-pairs)"
    inputs.sources[scene] = {"pairs": source, "images": str(folder)}
    reason = "no ground truth: a folder of images without poses is estimated only"
    for a, b in chosen:
        inputs.add(
            PairTask(scene, a, b, folder / a, folder / b, calibration, calibration, gt_reason=reason),
            seen,
        )
    for task in bad:
        inputs.add(task, seen)
    return inputs


def _is_scene(folder: Path) -> bool:
    try:
        find_model_dir(folder)
    except SceneError:
        return (folder / "sparse").is_dir()  # a scene with a broken model: reported, not skipped
    return True


def collect_inputs(
    path: str | os.PathLike[str],
    rule: PairRule = PairRule(),
    images: str | os.PathLike[str] | None = None,
    calibration: Camera | None = None,
) -> EvalInputs:
    """Find the pairs to evaluate in an input (see the module docstring for the formats and the pair rules).

    Args:
        path: a COLMAP scene folder, a folder of scenes, a pairs file, or a folder of images.
        rule: how pairs are chosen without ``pairs.txt``.
        images: image folder of a pairs file (default: the file's folder).
        calibration: camera of every image of a folder of images, and of pairs-file lines without K.

    Returns:
        The tasks, scene by scene, with per-pair errors and missing ground truth marked.

    Raises:
        InputError: the path does not exist or is none of the formats; a folder of images without calibration;
            a calibration given for scenes; a pairs file that cannot be read.
        SceneError, CalibrationError: the only scene given cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist; give a scene folder, a folder of scenes or a pairs file")
    if p.is_file():
        return _pairs_file_inputs(p, None if images is None else Path(images), calibration)
    if images is not None:
        raise InputError("--images only applies to a pairs file; a scene folder holds its own images/")
    is_scene = _is_scene(p)
    scenes = [] if is_scene else sorted(d for d in p.iterdir() if d.is_dir() and _is_scene(d))
    if calibration is not None and (is_scene or scenes):
        raise InputError("--K only applies to a folder of images or a pairs file; a scene has its own cameras")
    if is_scene:
        inputs = EvalInputs("scenes")
        _scene_inputs(p, rule, inputs, set())
        error = inputs.sources[p.name].get("error")
        if error and not inputs.tasks:
            raise SceneError(error)
        return inputs
    if scenes:
        inputs = EvalInputs("scenes")
        seen: set[tuple[str, str, str]] = set()
        for d in scenes:
            _scene_inputs(d, rule, inputs, seen)
        return inputs
    if _image_names(p / "images" if (p / "images").is_dir() else p):
        return _images_inputs(p, calibration, rule)
    raise InputError(
        f"{p} holds no COLMAP model (sparse/cameras and images .txt or .bin), no scene folders and no images"
    )
