"""Cached matches of every listed pair of a posed scene, with side information and the ground-truth pose.

Training (``mbp_cli.training``) and the benchmarks read the same cache, so that a model and its evaluation see
the very same correspondences. One file per scene and matcher setting:
``<cache_dir>/<scene>/<matcher name with all settings>.npz`` holding, per pair, the normalized (undistorted,
``K^-1``-applied) points, the matcher's side information and the ground truth, written atomically.

SIFT features are extracted once per image. Matches at a looser Lowe ratio contain those at a stricter one
exactly (mutual nearest neighbours do not depend on the ratio, the ratio test is ``d1 / d2 < ratio``), so
several ratios are built from one matching pass at the loosest ratio.

Convention: ``x1 = R x0 + t`` (cam1_from_cam0) with ``||t|| = 1``; points are normalized camera coordinates.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mbp_cli.estimator import mean_focal
from mbp_cli.io.calibration import Camera
from mbp_cli.io.colmap import read_scene, relative_pose
from mbp_cli.io.images import load_image
from mbp_cli.io.output import atomic_write_bytes
from mbp_cli.matching import create_matcher

# Side information stored per SIFT match (see mbp_cli.matching.types.Matches). A cache file without one of them
# (written before it was stored) is rebuilt.
SIFT_SIDE = ("ratio", "scale_ratio", "orientation_diff", "scale0", "scale1")


def default_cache_dir() -> Path:
    """``$MBP_CACHE_DIR``, else ``~/.cache/mbp``; the matches live under ``<it>/matches``."""
    return Path(os.environ.get("MBP_CACHE_DIR", Path.home() / ".cache" / "mbp")) / "matches"


@dataclass
class PairMatches:
    """Matches of one pair with its ground truth.

    Attributes:
        scene, image0, image1: where the pair comes from.
        x0, x1: (N, 2) float64 normalized points of image 0 and image 1 (undistorted).
        side: per-match side information, each (N,) float64 (SIFT: ``ratio``, ``scale_ratio``,
            ``orientation_diff``).
        focal: mean focal length ``(fx0 + fy0 + fx1 + fy1) / 4`` in pixels (pixel thresholds / focal =
            normalized thresholds).
        R: (3, 3) ground-truth rotation cam1_from_cam0; t: (3,) unit ground-truth translation.
        matcher: the matcher's name with every setting.
    """

    scene: str
    image0: str
    image1: str
    x0: np.ndarray
    x1: np.ndarray
    side: dict[str, np.ndarray]
    focal: float
    R: np.ndarray
    t: np.ndarray
    matcher: str

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    def subset(self, keep: np.ndarray) -> PairMatches:
        """The matches selected by a boolean mask or an index array (same ground truth)."""
        return PairMatches(
            self.scene,
            self.image0,
            self.image1,
            self.x0[keep],
            self.x1[keep],
            {k: v[keep] for k, v in self.side.items()},
            self.focal,
            self.R,
            self.t,
            self.matcher,
        )


def cache_path(cache_dir: Path, scene: str, matcher_name: str) -> Path:
    """File of one scene and matcher setting; the name spells out every setting of the matcher."""
    key = matcher_name.replace("(", "_").replace(")", "").replace(",", "_").replace("=", "")
    return Path(cache_dir) / scene / f"{key}.npz"


def _write(path: Path, scene: str, matcher_name: str, pairs: list[PairMatches]) -> None:
    index = {
        "scene": scene,
        "matcher": matcher_name,
        "pairs": [
            {"image0": p.image0, "image1": p.image1, "focal": p.focal, "R": p.R.tolist(), "t": p.t.tolist()}
            for p in pairs
        ],
    }
    arrays = {}
    for i, p in enumerate(pairs):
        arrays[f"x0_{i}"] = p.x0
        arrays[f"x1_{i}"] = p.x1
        for k, v in p.side.items():
            arrays[f"{k}_{i}"] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, index=json.dumps(index), **arrays)
    atomic_write_bytes(path, buffer.getvalue())  # a killed run leaves no half-written cache


def _is_complete(path: Path) -> bool:
    """Whether a cache file exists and stores every side quantity of :data:`SIFT_SIDE` (reads only its index)."""
    if not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as data:
        stored = _stored_names(data.files)
    return not stored or set(SIFT_SIDE) <= stored  # a scene without pairs stores no arrays


def _stored_names(files: list[str]) -> set[str]:
    """The per-pair quantities of a cache file (``x0``, ``x1`` and the side names), from its ``<name>_<i>`` arrays."""
    return {k.rsplit("_", 1)[0] for k in files if k != "index"}


def _read(path: Path) -> list[PairMatches]:
    with np.load(path, allow_pickle=False) as data:
        index = json.loads(str(data["index"]))
        side_names = sorted(_stored_names(data.files) - {"x0", "x1"})
        return [
            PairMatches(
                index["scene"],
                meta["image0"],
                meta["image1"],
                data[f"x0_{i}"],
                data[f"x1_{i}"],
                {k: data[f"{k}_{i}"] for k in side_names},
                float(meta["focal"]),
                np.array(meta["R"]),
                np.array(meta["t"]),
                index["matcher"],
            )
            for i, meta in enumerate(index["pairs"])
        ]


def _progress(console: Console | None) -> Progress:
    console = console or Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def match_pairs(
    scene: str,
    pairs: Sequence[tuple[str, str]],
    image_path: Callable[[str], Path],
    camera_of: Callable[[str], Camera],
    pose_of: Callable[[str, str], tuple[np.ndarray, np.ndarray]],
    matcher: Any,
    console: Console | None = None,
) -> list[PairMatches]:
    """Extract features once per image, match every pair and normalise the points with each image's camera.

    Args:
        scene: the name recorded with each pair.
        pairs: (image0, image1) names; image_path / camera_of: where an image is and its calibration.
        pose_of: the ground truth (R, unit t) of a pair, cam1_from_cam0 (NaN where unknown).
        matcher: a SIFT matcher of :func:`mbp_cli.matching.create_matcher`.
        console: where the progress bar goes.
    """
    names = sorted({n for pair in pairs for n in pair})
    features = {}
    matched: list[PairMatches] = []
    with _progress(console) as progress:
        task = progress.add_task(f"{scene}: features", total=len(names))
        for name in names:
            features[name] = matcher.extract(load_image(image_path(name)))
            progress.advance(task)
        task = progress.add_task(f"{scene}: matches", total=len(pairs))
        for a, b in pairs:
            m = matcher.match(features[a], features[b])
            cam0, cam1 = camera_of(a), camera_of(b)
            R, t = pose_of(a, b)
            matched.append(
                PairMatches(
                    scene,
                    a,
                    b,
                    cam0.pixels_to_normalized(m.keypoints0).numpy(),
                    cam1.pixels_to_normalized(m.keypoints1).numpy(),
                    {k: m.side[k].numpy() for k in SIFT_SIDE},
                    mean_focal(cam0, cam1),
                    R,
                    t,
                    matcher.name,
                )
            )
            progress.advance(task)
    return matched


def build_scene_matches(
    scene_dir: str | os.PathLike[str],
    ratios: Sequence[float],
    matcher: str = "sift",
    num_features: int = 8000,
    cache_dir: str | os.PathLike[str] | None = None,
    console: Console | None = None,
) -> dict[float, Path]:
    """Write the cache files of one scene at every Lowe ratio of ``ratios`` that is not cached yet.

    Features are extracted once per image and matched once at the loosest missing ratio; stricter ratios are
    its subsets (``ratio < r``), which is exactly what matching at ``r`` gives.

    Args:
        scene_dir: a scene folder in the COLMAP layout of :func:`mbp_cli.io.colmap.read_scene` with ``pairs.txt``.
        ratios: Lowe ratio thresholds in (0, 1].
        matcher: a SIFT matcher name of :func:`mbp_cli.matching.create_matcher`.
        num_features: SIFT features per image at most.
        cache_dir: cache root (default :func:`default_cache_dir`).
        console: where the progress bar goes (stderr by default; off when not a terminal).

    Returns:
        ratio -> cache file, for every requested ratio.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    scene_dir = Path(scene_dir)
    matchers = {r: create_matcher(matcher, num_features=num_features, ratio=r) for r in ratios}
    paths = {r: cache_path(cache_dir, scene_dir.name, m.name) for r, m in matchers.items()}
    missing = sorted((r for r in ratios if not _is_complete(paths[r])), reverse=True)
    if not missing:
        return paths
    scene = read_scene(scene_dir)
    loosest = matchers[missing[0]]

    def pose_of(a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        R, t = relative_pose(scene, a, b)
        return R, t / np.linalg.norm(t)

    matched = match_pairs(scene_dir.name, scene.pairs, scene.image_path, scene.camera_of, pose_of, loosest, console)
    for r in missing:
        name = matchers[r].name
        subsets = [p.subset(p.side["ratio"] < r) for p in matched]
        for p in subsets:
            p.matcher = name
        _write(paths[r], scene_dir.name, name, subsets)
    return paths


def load_scene_matches(
    scene_dir: str | os.PathLike[str],
    ratio: float = 0.8,
    matcher: str = "sift",
    num_features: int = 8000,
    cache_dir: str | os.PathLike[str] | None = None,
    console: Console | None = None,
) -> list[PairMatches]:
    """Matches of every pair of ``<scene_dir>/pairs.txt`` at one Lowe ratio, from the cache (built if missing).

    Returns:
        One :class:`PairMatches` per listed pair, in file order.
    """
    path = build_scene_matches(scene_dir, [ratio], matcher, num_features, cache_dir, console)[ratio]
    return _read(path)


def scene_dirs(root: str | os.PathLike[str], names: Sequence[str] = ()) -> list[Path]:
    """The scene folders under ``root`` (those holding ``sparse/``), optionally only the named ones, sorted.

    Raises:
        ValueError: a named scene is not under ``root``.
    """
    found = {p.name: p for p in sorted(Path(root).iterdir()) if (p / "sparse").is_dir()}
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(f"no scene {', '.join(unknown)} under {root}; found {', '.join(found) or 'none'}")
    return [found[n] for n in names] if names else list(found.values())


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mbp_cli.data.matches --scenes-root DIR --ratios 0.8,0.95``: build the caches of every scene."""
    import argparse

    parser = argparse.ArgumentParser(description="Build the match caches of every scene under a root folder.")
    parser.add_argument("--scenes-root", type=Path, required=True)
    parser.add_argument("--scenes", default="", help="comma-separated scene names (default: all)")
    parser.add_argument("--ratios", default="0.8,0.95")
    parser.add_argument("--matcher", default="sift")
    parser.add_argument("--num-features", type=int, default=8000)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenCV threads")
    args = parser.parse_args(argv)
    import cv2

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    ratios = [float(r) for r in args.ratios.split(",")]
    for scene in scene_dirs(args.scenes_root, [s for s in args.scenes.split(",") if s]):
        for r, path in build_scene_matches(scene, ratios, args.matcher, args.num_features, args.cache_dir).items():
            print(f"{scene.name} ratio {r:g}: {path}")


if __name__ == "__main__":
    main()
