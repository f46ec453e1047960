"""Our own writer of COLMAP models (text and binary), to build test scenes independently of the reader.

Binary layout, little-endian, as COLMAP's ``src/colmap/scene/reconstruction_io.cc`` writes it:

* ``cameras.bin``: ``uint64 n``; per camera ``uint32 camera_id, int32 model_id, uint64 width, uint64 height,
  float64 params[]``;
* ``images.bin``: ``uint64 n``; per image ``uint32 image_id, float64 qvec[4] (w, x, y, z), float64 tvec[3],
  uint32 camera_id, name\\0, uint64 num_points2D, (float64 x, float64 y, uint64 point3D_id) * num_points2D``
  (``point3D_id = 2^64 - 1`` for a 2D point without 3D point);
* ``points3D.bin``: ``uint64 n`` (no points written here).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODEL_IDS = {
    "SIMPLE_PINHOLE": 0,
    "PINHOLE": 1,
    "SIMPLE_RADIAL": 2,
    "RADIAL": 3,
    "OPENCV": 4,
    "FULL_OPENCV": 6,
    "FOV": 7,
}
NO_POINT3D = 2**64 - 1


@dataclass
class ModelCamera:
    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass
class ModelImage:
    image_id: int
    qvec: np.ndarray  # (w, x, y, z), world-to-camera
    tvec: np.ndarray
    camera_id: int
    name: str
    point3D_ids: list[int] = field(default_factory=list)  # one 2D point per entry; -1: no 3D point


def cameras_txt(cameras: list[ModelCamera]) -> str:
    lines = ["# Camera list with one line of data per camera:"]
    lines += [
        f"{c.camera_id} {c.model} {c.width} {c.height} " + " ".join(repr(float(p)) for p in c.params) for c in cameras
    ]
    return "\n".join(lines) + "\n"


def images_txt(images: list[ModelImage]) -> str:
    lines = ["# Image list with two lines of data per image:"]
    for im in images:
        lines.append(
            f"{im.image_id} " + " ".join(repr(float(v)) for v in (*im.qvec, *im.tvec)) + f" {im.camera_id} {im.name}"
        )
        lines.append(" ".join(f"{10.0 + k} {20.0 + k} {pid}" for k, pid in enumerate(im.point3D_ids)))
    return "\n".join(lines) + "\n"


def cameras_bin(cameras: list[ModelCamera]) -> bytes:
    data = struct.pack("<Q", len(cameras))
    for c in cameras:
        data += struct.pack("<IiQQ", c.camera_id, MODEL_IDS[c.model], c.width, c.height)
        data += struct.pack(f"<{len(c.params)}d", *c.params)
    return data


def images_bin(images: list[ModelImage]) -> bytes:
    data = struct.pack("<Q", len(images))
    for im in images:
        data += struct.pack("<I7dI", im.image_id, *im.qvec, *im.tvec, im.camera_id) + im.name.encode() + b"\0"
        data += struct.pack("<Q", len(im.point3D_ids))
        for k, pid in enumerate(im.point3D_ids):
            data += struct.pack("<ddQ", 10.0 + k, 20.0 + k, NO_POINT3D if pid == -1 else pid)
    return data


def write_model(folder: Path, cameras: list[ModelCamera], images: list[ModelImage], binary: bool = False) -> None:
    """Write ``cameras``, ``images`` and an empty ``points3D`` file (``.bin`` or ``.txt``) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if binary:
        (folder / "cameras.bin").write_bytes(cameras_bin(cameras))
        (folder / "images.bin").write_bytes(images_bin(images))
        (folder / "points3D.bin").write_bytes(struct.pack("<Q", 0))
    else:
        (folder / "cameras.txt").write_text(cameras_txt(cameras))
        (folder / "images.txt").write_text(images_txt(images))
        (folder / "points3D.txt").write_text("# 3D point list (empty)\n")


def read_text_model(folder: Path) -> tuple[list[ModelCamera], list[ModelImage]]:
    """Parse a COLMAP text model (cameras and image poses; 2D points dropped) into the writer's types."""
    cameras = []
    for line in (folder / "cameras.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            tok = line.split()
            cameras.append(ModelCamera(int(tok[0]), tok[1], int(tok[2]), int(tok[3]), tuple(map(float, tok[4:]))))
    images = []
    lines = [ln for ln in (folder / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    for line in lines[::2]:
        tok = line.split()
        v = np.array([float(x) for x in tok[1:8]])
        images.append(ModelImage(int(tok[0]), v[:4], v[4:7], int(tok[8]), tok[9]))
    return cameras, images


def copy_scene(
    source: Path,
    target: Path,
    names: list[str],
    pairs: list[tuple[str, str]] | None = None,
    binary: bool = False,
) -> Path:
    """A scene with the images ``names`` of the text-model scene ``source`` (files copied, model rewritten by
    :func:`write_model`) and ``pairs`` as its ``pairs.txt`` (no file for None)."""
    import shutil

    cameras, images = read_text_model(source / "sparse")
    kept = [im for im in images if im.name in names]
    used = {im.camera_id for im in kept}
    write_model(target / "sparse", [c for c in cameras if c.camera_id in used], kept, binary)
    (target / "images").mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(source / "images" / name, target / "images" / name)
    if pairs is not None:
        (target / "pairs.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))
    return target
