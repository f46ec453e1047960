"""Per-correspondence inputs of the consensus network (method.md §1) and chunked inference over any N.

Channels, in order (:data:`mbp_cli.network.config.INPUT_CHANNELS`): normalized coordinates ``x0, y0, x1, y1``
(undistorted, ``K^-1``-applied), then the matcher's side information: SIFT -> Lowe ratio, ``log(s1 / s0)``,
``sin`` and ``cos`` of the orientation difference; LoFTR -> confidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.consensus import ConsensusNetwork
from mbp_cli.network.fit_head import fit_features

# Side information each input kind needs from the matcher (names of mbp_cli.matching.types.Matches.side).
REQUIRED_SIDE: dict[str, tuple[str, ...]] = {
    "sift": ("ratio", "scale_ratio", "orientation_diff"),
    "loftr": ("confidence",),
}


def network_inputs(
    x0: torch.Tensor, x1: torch.Tensor, side: Mapping[str, torch.Tensor], config: NetworkConfig
) -> torch.Tensor:
    """The (C, N) float32 input of the network for one pair.

    Args:
        x0: (N, 2) normalized points of image 0; x1: (N, 2) normalized points of image 1.
        side: the matcher's per-match side information (:attr:`Matches.side`), each (N,).
        config: the network's configuration (its ``inputs`` kind fixes the channels).

    Raises:
        ValueError: the matches lack side information the network needs (e.g. LoFTR matches for a SIFT model).
    """
    missing = [k for k in REQUIRED_SIDE[config.inputs] if k not in side]
    if missing:
        raise ValueError(
            f"the network takes {config.inputs} matches, which give {', '.join(REQUIRED_SIDE[config.inputs])}; "
            f"these matches have no {', '.join(missing)}: use a model for this matcher or --no-network"
        )
    x0, x1 = torch.as_tensor(x0), torch.as_tensor(x1)
    columns = [x0[:, 0], x0[:, 1], x1[:, 0], x1[:, 1]]
    if config.inputs == "sift":
        angle = torch.as_tensor(side["orientation_diff"])
        # A scale ratio of 0 or inf (a degenerate keypoint) is clamped rather than allowed to be -inf/inf.
        columns += [
            torch.as_tensor(side["ratio"]),
            torch.as_tensor(side["scale_ratio"]).clamp(1e-6, 1e6).log(),
            angle.sin(),
            angle.cos(),
        ]
    else:
        columns += [torch.as_tensor(side["confidence"])]
    return torch.stack([c.to(device=x0.device, dtype=torch.float32) for c in columns])


def chunk_indices(num_points: int, max_points: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(num_points)`` into random groups of at most ``max_points``, as a padded batch.

    Returns:
        ``(index, mask)``: (B, M) int64 indices (padding repeats index 0) and (B, M) bool, with
        ``B = ceil(num_points / max_points)`` groups of near-equal size ``M``. One group, unshuffled, when
        ``num_points <= max_points``.
    """
    if num_points <= max_points:
        return torch.arange(num_points)[None], torch.ones(1, num_points, dtype=torch.bool)
    groups = math.ceil(num_points / max_points)
    size = math.ceil(num_points / groups)
    order = torch.randperm(num_points, generator=generator)
    padded = torch.zeros(groups * size, dtype=torch.int64)
    padded[:num_points] = order
    mask = torch.zeros(groups * size, dtype=torch.bool)
    mask[:num_points] = True
    return padded.view(groups, size), mask.view(groups, size)


def score_correspondences(
    model: ConsensusNetwork, inputs: torch.Tensor, seed: int = 0, max_points: int | None = None
) -> torch.Tensor:
    """Inlier logits (N,) of one pair, in eval mode and without autograd.

    More than ``config.max_points`` correspondences are split into random groups (seeded) scored as one masked
    batch, so that the cost stays linear in N; each correspondence sees the context of its group.

    Args:
        model: the network (its device is used).
        inputs: (C, N) from :func:`network_inputs`.
        seed: seed of the grouping; equal seeds give equal logits.
        max_points: group size at most (default ``config.max_points``). The kNN graph costs ``O(M²)`` per group
            of M: smaller groups are faster, each correspondence seeing less context.
    """
    device = next(model.parameters()).device
    N = int(inputs.shape[1])
    generator = torch.Generator().manual_seed(seed)
    index, mask = chunk_indices(N, max_points or model.config.max_points, generator)
    was_training = model.training
    if was_training:  # eval() walks the whole module tree: about 1 ms per pair when nothing changes
        model.eval()
    try:
        with torch.inference_mode():
            if index.shape[0] == 1:  # one unpadded group: no mask, no gather, no scatter
                return model(inputs.to(device)[None], None)[0]
            batch = inputs.to(device)[:, index.to(device)].permute(1, 0, 2)  # (B, C, M)
            logits = model(batch, mask.to(device))
            out = torch.empty(N, dtype=logits.dtype, device=device)
            out[index[mask].to(device)] = logits[mask.to(device)]
    finally:
        if was_training:
            model.train()
    return out


def sampling_quality(logits: torch.Tensor, sampler: str) -> torch.Tensor | None:
    """What RANSAC's ``quality`` is for each sampler, from the network's logits.

    ``gumbel``: the log inlier probabilities ``logsigmoid(logits)`` (the sampler draws by inlier probability);
    ``prosac``: the logits (only their order matters); ``uniform``: None.
    """
    if sampler == "gumbel":
        return torch.nn.functional.logsigmoid(logits.double())
    if sampler == "prosac":
        return logits.double()
    return None


def fit_weighting(
    model: ConsensusNetwork, inputs: torch.Tensor, logits: torch.Tensor, probabilities: bool = False
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The final LM's correspondence weights from the network, as RANSAC's ``refinement_weights``.

    Args:
        model: the network: its fit head gives the weights when it has one.
        inputs: (C, N) its inputs of the pair (:func:`network_inputs`); logits: (N,) its logits of the pair.
        probabilities: without a fit head, weigh each correspondence by the network's inlier probability
            ``sigmoid(logit)`` (``RansacOptions.probability_weights``); otherwise None is returned.

    Returns:
        A callable ``(near (N,) bool, residuals2 (M,)) -> (M,) weights`` (see
        :func:`mbp_cli.robust.ransac.ransac_essential`), or None.
    """
    head = model.fit_head
    if head is None:
        if not probabilities:
            return None
        probability = torch.sigmoid(logits.detach().double())

        def probability_weights(near: torch.Tensor, residuals2: torch.Tensor) -> torch.Tensor:
            return probability[near.to(probability.device)].to(residuals2)

        return probability_weights
    kind = model.config.inputs

    def weights(near: torch.Tensor, residuals2: torch.Tensor) -> torch.Tensor:
        device = logits.device
        near = near.to(device)
        features = fit_features(inputs.to(device)[:, near], logits[near], residuals2.to(device), kind)
        with torch.inference_mode():
            return head(features, logits[near].double()).to(residuals2)

    return weights
