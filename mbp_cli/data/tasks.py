"""Cached matches of the pairs ``mbp eval`` finds in a pairs file or a folder of images (training data).

:func:`mbp_cli.evaluation.inputs.collect_inputs` reads the input (a SuperGlue/LoFTR-style pairs file with ground
truth, or a folder of images with one calibration and pairs within a frame gap); here the pairs are matched once
and cached like posed scenes (:mod:`mbp_cli.data.matches`). Pairs without ground truth carry NaN in place of a
pose: only self-supervised training, which estimates its own pseudo-poses, may use them. Pairs the input marks
as unusable (a missing image, a malformed line) are left out.

Convention: ``x1 = R x0 + t``; points are normalized camera coordinates (undistorted).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console

from mbp_cli.data.matches import PairMatches, _read, _write, cache_path, default_cache_dir, match_pairs
from mbp_cli.evaluation.inputs import PairTask
from mbp_cli.matching import create_matcher


def load_task_matches(
    tasks: Sequence[PairTask],
    ratio: float = 0.8,
    matcher: str = "sift",
    num_features: int = 8000,
    cache_dir: str | os.PathLike[str] | None = None,
    console: Console | None = None,
) -> list[PairMatches]:
    """Matches of the usable pairs of ``tasks`` (all of one scene), extracted once per image and cached.

    The cache key holds every setting that changes the matches: the matcher's, and each pair's images and
    calibrations.
    """
    usable = [t for t in tasks if t.error is None and t.path0 is not None and t.path1 is not None]
    if not usable:
        return []
    scene = usable[0].scene
    m = create_matcher(matcher, num_features=num_features, ratio=ratio)
    listing = "\n".join(
        f"{t.image0} {t.image1} {t.camera0.to_dict() if t.camera0 else None} {t.camera1.to_dict() if t.camera1 else None}"
        for t in usable
    )
    key = hashlib.sha256(listing.encode()).hexdigest()[:12]
    path = cache_path(Path(cache_dir) if cache_dir else default_cache_dir(), scene, f"{m.name}_pairs{key}")
    if path.is_file():
        return _read(path)
    by_pair = {(t.image0, t.image1): t for t in usable}
    paths = {t.image0: t.path0 for t in usable} | {t.image1: t.path1 for t in usable}
    cameras = {t.image0: t.camera0 for t in usable} | {t.image1: t.camera1 for t in usable}
    unknown = (np.full((3, 3), np.nan), np.full(3, np.nan))

    def pose_of(a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        t = by_pair[(a, b)]
        return unknown if t.R_gt is None or t.t_gt is None else (t.R_gt, t.t_gt)

    matched = match_pairs(scene, list(by_pair), paths.__getitem__, cameras.__getitem__, pose_of, m, console)
    _write(path, scene, m.name, matched)
    return matched
