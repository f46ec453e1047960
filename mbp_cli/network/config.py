"""The one configuration object of the consensus network, with a JSON round trip.

The resolved configuration is stored next to every trained model (``models/<name>.json``) and inside its
weights file's metadata, so that loading can check the two against each other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

# Input channels per matcher kind, in this order (method.md §1, with the side information made smooth): normalized
# coordinates, then the matcher's side information. The SIFT orientation difference enters as its sine and cosine,
# since the angle itself jumps from pi to -pi between two almost equal rotations; the scale ratio enters as its
# logarithm, which is symmetric in the two images and of order one.
INPUT_CHANNELS: dict[str, tuple[str, ...]] = {
    "sift": ("x0", "y0", "x1", "y1", "ratio", "log_scale_ratio", "sin_orientation_diff", "cos_orientation_diff"),
    "loftr": ("x0", "y0", "x1", "y1", "confidence"),
}


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of :class:`mbp_cli.network.consensus.ConsensusNetwork` (CLNet-style, method.md §2).

    Attributes:
        inputs: matcher kind, ``sift`` or ``loftr``; fixes the input channels (:data:`INPUT_CHANNELS`).
        width: feature channels of every block.
        blocks_before_graph: residual blocks before the dynamic-graph block.
        blocks_after_graph: residual blocks between the graph block and the first logit head.
        blocks_after_global: residual blocks between the global block and the final logit head.
        k: neighbours of the dynamic-graph block (in feature space, the point itself included); a multiple of 3,
            since two (1, 3) convolutions of stride 3 reduce the neighbour axis to one.
        max_points: correspondences per network pass. More are split into random groups of at most this many,
            scored together as one masked batch, so that the cost stays linear in the number of matches.
        norm_eps: epsilon of the instance and batch normalisations.
        fit_head_width: hidden width of the fit head (:mod:`mbp_cli.network.fit_head`), which weighs the
            correspondences of the final LM; 0: no fit head (the network's
            probabilities weigh the final fit, ``RansacOptions.probability_weights``).
    """

    inputs: str = "sift"
    width: int = 128
    blocks_before_graph: int = 4
    blocks_after_graph: int = 4
    blocks_after_global: int = 1
    k: int = 9
    max_points: int = 2000
    norm_eps: float = 1e-5
    fit_head_width: int = 0

    def __post_init__(self) -> None:
        if self.inputs not in INPUT_CHANNELS:
            raise ValueError(f"unknown network inputs {self.inputs!r}; choose one of {', '.join(INPUT_CHANNELS)}")
        if self.width < 1 or min(self.blocks_before_graph, self.blocks_after_graph, self.blocks_after_global) < 0:
            raise ValueError("width must be positive and block counts non-negative")
        if self.k < 3 or self.k % 3 != 0:
            raise ValueError(f"k must be a positive multiple of 3, got {self.k}")
        if self.fit_head_width < 0:
            raise ValueError(f"fit_head_width must be non-negative, got {self.fit_head_width}")
        if self.max_points < self.k:
            raise ValueError(f"max_points ({self.max_points}) must be at least k ({self.k})")

    @property
    def channels(self) -> tuple[str, ...]:
        """Names of the input channels, in order."""
        return INPUT_CHANNELS[self.inputs]

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        """Build from a dict; unknown keys are an error (a config from a newer version must not load silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown network config keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> NetworkConfig:
        return cls.from_dict(json.loads(text))
