"""A small real scene for the evaluation tests: images of the kermit scene, with good and bad pairs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from colmap_model import copy_scene
from paths import SCENES

KERMIT = SCENES / "kermit"
IMAGES = [f"kermit00{i}.jpg" for i in (0, 1, 2, 3, 5, 7)]
# Good pairs and four bad inputs in between (a corrupt file, an image not in the model, a missing file, an image
# without texture), so that every shard of two holds both kinds.
PAIRS = [
    ("kermit000.jpg", "kermit001.jpg"),
    ("kermit001.jpg", "kermit002.jpg"),
    ("kermit000.jpg", "kermit003.jpg"),
    ("kermit000.jpg", "kermit002.jpg"),
    ("kermit001.jpg", "ghost.jpg"),
    ("kermit002.jpg", "kermit000.jpg"),
    ("kermit000.jpg", "kermit005.jpg"),
    ("kermit007.jpg", "kermit001.jpg"),
]
GOOD = [PAIRS[i] for i in (0, 1, 3, 5)]


def make_scene(root: Path) -> Path:
    """:data:`IMAGES` of kermit, with kermit003.jpg corrupt, kermit005.jpg missing and kermit007.jpg blank, and
    :data:`PAIRS` as pairs.txt."""
    if not KERMIT.is_dir():
        pytest.skip("development scenes not available")
    copy_scene(KERMIT, root, IMAGES, PAIRS)
    (root / "images" / "kermit003.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "images" / "kermit005.jpg").unlink()
    _, blank = cv2.imencode(".jpg", np.full((480, 640), 128, np.uint8))
    (root / "images" / "kermit007.jpg").write_bytes(blank.tobytes())
    return root
