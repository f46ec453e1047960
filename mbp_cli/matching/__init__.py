"""Matchers: turn two images into tentative correspondences (:class:`Matches`).

Every matcher is a callable ``matcher(image0, image1) -> Matches`` on (H, W) uint8 grayscale images as stored on
disk; keypoints come back in full-resolution pixel coordinates with the pixel centre at (0, 0).

Names accepted by :func:`create_matcher`:

* ``"sift"``: the default SIFT backend, OpenCV with contrast threshold 0.01. Measured on 80 pairs of 4 scenes at
  full resolution (``benchmarks/results/matchers.md``): pose AUC@5/10/20 88.3/94.2/97.1 against 84.4/92.2/96.1 for
  kornia's SIFT, at 0.5 s instead of 7 s of CPU per image;
* ``"sift-opencv"``: :class:`~mbp_cli.matching.sift.OpenCVSift`;
* ``"sift-kornia"``: :class:`~mbp_cli.matching.sift.KorniaSift`;
* ``"loftr"``: :class:`~mbp_cli.matching.loftr.LoftrMatcher` (needs local weights, never downloads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mbp_cli.matching.types import Matches

MATCHERS: tuple[str, ...] = ("sift", "sift-opencv", "sift-kornia", "loftr")
DEFAULT_SIFT_BACKEND = "sift-opencv"

Matcher = Callable[[np.ndarray, np.ndarray], Matches]


def create_matcher(name: str, **options: Any) -> Matcher:
    """Build a matcher by name.

    Args:
        name: one of :data:`MATCHERS` (case-insensitive).
        **options: keyword arguments of the matcher's constructor, e.g. ``num_features``, ``ratio``, ``resize`` for
            SIFT; ``weights_path``, ``resize`` for LoFTR. An option the matcher does not take raises ``TypeError``.

    Returns:
        A callable ``(image0, image1) -> Matches``; the SIFT matchers also have ``extract`` and ``match`` to cache
        per-image features.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
        WeightsError: LoFTR weights missing or invalid.
    """
    key = name.strip().lower()
    if key == "sift":
        key = DEFAULT_SIFT_BACKEND
    if key == "sift-opencv":
        from mbp_cli.matching.sift import OpenCVSift

        return OpenCVSift(**options)
    if key == "sift-kornia":
        from mbp_cli.matching.sift import KorniaSift

        return KorniaSift(**options)
    if key == "loftr":
        from mbp_cli.matching.loftr import LoftrMatcher

        return LoftrMatcher(**options)
    raise ValueError(f"unknown matcher {name!r}: choose one of {', '.join(MATCHERS)}")


__all__ = ["DEFAULT_SIFT_BACKEND", "MATCHERS", "Matcher", "Matches", "create_matcher"]
