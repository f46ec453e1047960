"""Matches of a folder of images without poses, for self-supervised finetuning, cached like posed scenes.

Pairs are the images in name order within ``frame_gap`` of each other (a video or a walk around an object);
every image shares one calibration. The cached pairs carry NaN in place of a ground-truth pose: only
self-supervised training, which estimates its own pseudo-poses, may use them.

Convention: ``x1 = R x0 + t``; points are normalized camera coordinates (undistorted).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from rich.console import Console

from mbp_cli.data.matches import PairMatches, _read, _write, cache_path, default_cache_dir, match_pairs
from mbp_cli.io.calibration import Camera
from mbp_cli.matching import create_matcher

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")


def image_names(folder: str | os.PathLike[str]) -> list[str]:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_image_folder(path: str | os.PathLike[str]) -> bool:
    """A folder of images that is not a posed scene (no ``sparse/``)."""
    path = Path(path)
    return path.is_dir() and not (path / "sparse").is_dir() and bool(image_names(path))


def sequence_pairs(names: list[str], frame_gap: int) -> list[tuple[str, str]]:
    """``(names[i], names[j])`` for ``0 < j - i <= frame_gap``."""
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, min(len(names), i + frame_gap + 1))]


def load_folder_matches(
    folder: str | os.PathLike[str],
    camera: Camera,
    frame_gap: int = 2,
    ratio: float = 0.8,
    matcher: str = "sift",
    num_features: int = 8000,
    cache_dir: str | os.PathLike[str] | None = None,
    console: Console | None = None,
) -> list[PairMatches]:
    """Matches of the sequence pairs of an image folder (extracted once per image, then cached).

    Args:
        folder: the images; camera: their shared calibration (of the stored images).
        frame_gap: pair each image with the next ``frame_gap`` ones.
        ratio, matcher, num_features: the SIFT matcher's settings.
        cache_dir: cache root (default :func:`default_cache_dir`).

    Returns:
        One :class:`PairMatches` per pair, with NaN ground truth.
    """
    folder = Path(folder)
    if frame_gap < 1:
        raise ValueError(f"frame gap must be at least 1, got {frame_gap}")
    names = image_names(folder)
    if len(names) < 2:
        raise ValueError(f"{folder} holds {len(names)} image(s); self-supervised finetuning needs at least 2")
    m = create_matcher(matcher, num_features=num_features, ratio=ratio)
    # The cache key holds every setting that changes the matches: matcher, pairing and calibration.
    camera_key = hashlib.sha256(repr(camera.to_dict()).encode()).hexdigest()[:10]
    path = cache_path(
        Path(cache_dir) if cache_dir else default_cache_dir(), folder.name, f"{m.name}_gap{frame_gap}_cam{camera_key}"
    )
    if path.is_file():
        return _read(path)
    unknown = (np.full((3, 3), np.nan), np.full(3, np.nan))
    matched = match_pairs(
        folder.name, sequence_pairs(names, frame_gap), lambda n: folder / n, lambda n: camera, lambda a, b: unknown, m,
        console,
    )  # fmt: skip
    _write(path, folder.name, m.name, matched)
    return matched
