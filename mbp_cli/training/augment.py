"""Label-preserving augmentation of the consensus network's inputs: other cameras seeing the same scenes.

Four training scenes teach the network their own image layouts (KITTI's forward motion, a turntable's sideways
one) as much as what an inlier looks like. Each transformation here maps a pair to the pair that a differently
held camera would have seen, so the ground-truth labels and residuals stay exact and need no recomputation:

* **roll**: turning a camera about its optical axis by ``a`` rotates its normalized points by ``R(a)`` (the 2D
  rotation ``[[cos, -sin], [sin, cos]]``, about the principal point, in the image frame x right, y down); the
  essential matrix becomes ``Rz(b) E Rz(a)ᵀ`` for rolls ``a`` of camera 0 and ``b`` of camera 1. The Sampson
  distance is unchanged: the rolls are orthogonal maps of the two image planes. A keypoint's orientation grows
  by the roll (:mod:`mbp_cli.matching.sift`'s convention), so the orientation difference grows by ``b - a``.
* **swap**: exchanging the images gives ``Eᵀ`` and the same Sampson distances; the log scale ratio and the
  orientation difference change sign (the Lowe ratio, measured from image 0's side of a mutual match, is kept).
* **mirror**: reflecting both images left-right (``x -> -x``) is the pair of the mirrored scene, ``D E D`` with
  ``D = diag(-1, 1, 1)`` (an essential matrix: ``[-D t]x (D R D)``); an orientation ``o`` becomes ``pi - o``, so the
  difference changes sign.

Functions take the (C, N) inputs of :func:`mbp_cli.network.features.network_inputs` and the channel names of
:data:`mbp_cli.network.config.INPUT_CHANNELS`, so SIFT and LoFTR inputs share them (LoFTR's confidence is kept).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Augmentation:
    """What :func:`augment_inputs` draws for each pair each time it is used.

    Attributes:
        roll_deg: both cameras rolled by one angle uniform in ``[-roll_deg, roll_deg]`` (the relative in-plane
            rotation is kept).
        relative_roll_deg: camera 1 rolled further by an angle uniform in ``[-relative_roll_deg,
            relative_roll_deg]`` (the relative in-plane rotation changes).
        swap: exchange the images with probability 1/2.
        mirror: mirror both images left-right with probability 1/2.
    """

    roll_deg: float = 0.0
    relative_roll_deg: float = 0.0
    swap: bool = False
    mirror: bool = False

    def __post_init__(self) -> None:
        for name in ("roll_deg", "relative_roll_deg"):
            value = getattr(self, name)
            if not (0.0 <= value <= 180.0):
                raise ValueError(f"{name} must be in [0, 180] degrees, got {value}")

    @property
    def active(self) -> bool:
        return self.roll_deg > 0 or self.relative_roll_deg > 0 or self.swap or self.mirror

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)


NO_AUGMENTATION = Augmentation()


def _rotate(x: torch.Tensor, y: torch.Tensor, angle: float) -> tuple[torch.Tensor, torch.Tensor]:
    c, s = math.cos(angle), math.sin(angle)
    return c * x - s * y, s * x + c * y


def transform_inputs(
    inputs: torch.Tensor,
    channels: tuple[str, ...],
    roll0: float = 0.0,
    roll1: float = 0.0,
    swap: bool = False,
    mirror: bool = False,
) -> torch.Tensor:
    """The inputs of the same pair seen by other cameras: swapped, then mirrored, then rolled.

    Args:
        inputs: (C, N) network inputs (normalized ``x0, y0, x1, y1`` first).
        channels: their C names (:data:`mbp_cli.network.config.INPUT_CHANNELS`).
        roll0, roll1: rolls of camera 0 and camera 1, radians.
        swap: exchange the images first; mirror: then reflect both left-right.

    Returns:
        (C, N) transformed inputs, a new tensor.
    """
    index = {name: i for i, name in enumerate(channels)}
    out = inputs.clone()
    x0, y0, x1, y1 = (out[index[k]] for k in ("x0", "y0", "x1", "y1"))
    has_orientation = "sin_orientation_diff" in index
    sin, cos = (out[index["sin_orientation_diff"]], out[index["cos_orientation_diff"]]) if has_orientation else (0, 0)
    if swap:
        x0, y0, x1, y1 = x1, y1, x0, y0
        if "log_scale_ratio" in index:
            out[index["log_scale_ratio"]] = -out[index["log_scale_ratio"]]
        sin = -sin
    if mirror:
        x0, x1 = -x0, -x1
        sin = -sin
    x0, y0 = _rotate(x0, y0, roll0)
    x1, y1 = _rotate(x1, y1, roll1)
    if has_orientation:
        # the difference o1 - o0 grows by roll1 - roll0
        sin, cos = _rotate(cos, sin, roll1 - roll0)[::-1]
        out[index["sin_orientation_diff"]], out[index["cos_orientation_diff"]] = sin, cos
    out[index["x0"]], out[index["y0"]], out[index["x1"]], out[index["y1"]] = x0, y0, x1, y1
    return out


def augment_inputs(
    inputs: torch.Tensor, channels: tuple[str, ...], augmentation: Augmentation, rng: random.Random
) -> torch.Tensor:
    """One random draw of :class:`Augmentation` applied to a pair's (C, N) inputs (unchanged if inactive)."""
    if not augmentation.active:
        return inputs
    roll = math.radians(rng.uniform(-augmentation.roll_deg, augmentation.roll_deg))
    relative = math.radians(rng.uniform(-augmentation.relative_roll_deg, augmentation.relative_roll_deg))
    swap = augmentation.swap and rng.random() < 0.5
    mirror = augmentation.mirror and rng.random() < 0.5
    return transform_inputs(inputs, channels, roll, roll + relative, swap, mirror)
