"""The consensus network (CLNet-style, method.md §2) with a validity mask instead of duplicated padding.

Input: ``(B, C, N)`` per-correspondence features (:mod:`mbp_cli.network.features`) and a ``(B, N)`` bool mask of
the real correspondences; output: ``(B, N)`` inlier logits (``-inf`` at padded positions). Every operation that
mixes correspondences respects the mask — instance and batch normalisation statistics, the feature-space kNN of
the dynamic-graph block (a padded point is never a neighbour) and the global block's adjacency — so a padded
batch gives the same logits as the unpadded inputs (tested).

Architecture (defaults of :class:`NetworkConfig`: 0.47 M parameters at width 128, as method.md's ~0.47 M; the
shipped model uses width 64, 0.12 M, for CPU speed): pointwise linear ``C_in -> width`` + BN + ReLU; 4 residual blocks (linear, IN, BN, ReLU, twice, plus skip); a dynamic-graph block
(kNN k = 9 in feature space, edge features ``[f_i, f_i - f_j]``, two (1, 3)-stride-3 convolutions over the
neighbour axis, residual); 4 residual blocks; the **first logit head**; a global block (soft adjacency
``A = a a^T + I`` from the detached first logits, ``a = relu(tanh(w0))``, ``D^-1/2 A D^-1/2`` mixing, linear +
BN + ReLU, residual); 1 residual block; the final logit head.

The first head is built and trained: its logits define the global block's adjacency, and the training losses
(:mod:`mbp_cli.training.init`) put the inlier-classification loss on it as well as on the final logits (in the
reference it never received a gradient). No layer carries a bias that a following normalisation removes, so
there are no dead parameters.

Internally the features are laid out ``(B, N, C)`` so that every pointwise convolution is one matrix product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.fit_head import FitHead, fit_feature_names


def _mean_var(x: torch.Tensor, mask: torch.Tensor | None, over_batch: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of ``x`` (B, N, C) over the correspondences where ``mask`` (B, N, 1) is 1.

    Per sample (instance norm), or over the whole batch when ``over_batch`` (batch norm); shapes (B or 1, 1, C).
    Both moments are weighted sums computed as batched matrix products (10x faster on CPU than a reduction over
    the middle axis); the variance is taken about the mean (two passes), not as ``E[x^2] - E[x]^2``.
    """
    B, N, _ = x.shape
    if mask is None:
        weights = x.new_full((B, 1, N), 1.0 / (B * N if over_batch else N))
    else:
        w = mask.transpose(1, 2)  # (B, 1, N)
        weights = w / w.sum((0, 2) if over_batch else (2,), keepdim=True).clamp(min=1)
    mean = torch.bmm(weights, x)
    if over_batch:
        mean = mean.sum(0, keepdim=True)
    centred = x - mean
    var = torch.bmm(weights, centred * centred)
    if over_batch:
        var = var.sum(0, keepdim=True)
    return mean, var


class MaskedInstanceNorm(nn.Module):
    """Instance normalisation over the correspondences of each sample (no affine parameters, as in CLNet)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        mean, var = _mean_var(x, mask, over_batch=False)
        return (x - mean).mul_(torch.rsqrt(var + self.eps))


class MaskedBatchNorm(nn.Module):
    """Batch normalisation over every real correspondence of the batch; running statistics in eval mode."""

    def __init__(self, channels: int, eps: float, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.training:
            mean, var = _mean_var(x, mask, over_batch=True)
            with torch.no_grad():
                count = x.shape[0] * x.shape[1] if mask is None else mask.sum()
                unbiased = var.flatten() * (count / max(count - 1, 1))
                self.running_mean.lerp_(mean.flatten().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
            return (x - mean) * (torch.rsqrt(var + self.eps) * self.weight) + self.bias
        scale, shift = self.affine()
        return torch.addcmul(shift, x, scale)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode map ``x * scale + shift`` (running statistics), each (C,)."""
        scale = torch.rsqrt(self.running_var + self.eps) * self.weight
        return scale, self.bias - self.running_mean * scale


def instance_then_batch_norm(
    x: torch.Tensor, mask: torch.Tensor | None, instance: MaskedInstanceNorm, batch: MaskedBatchNorm
) -> torch.Tensor:
    """``batch(instance(x))`` in eval mode as one per-sample affine map (one pass over ``x`` instead of three)."""
    scale, shift = batch.affine()
    if mask is None and x.shape[0] == 1:
        # One unpadded sample (what inference scores): the instance statistics over its N rows are what a
        # training-mode batch norm of the (N, C) matrix computes, and its affine is the BN's eval map. One fused
        # kernel instead of nine operations (0.02 instead of 0.04 ms per call at N = 200).
        return F.batch_norm(x[0], None, None, scale, shift, training=True, eps=instance.eps)[None]
    mean, var = _mean_var(x, mask, over_batch=False)
    scale = torch.rsqrt(var + instance.eps) * scale  # (B, 1, C)
    return torch.addcmul(shift - mean * scale, x, scale)


class ResidualBlock(nn.Module):
    """(linear -> IN -> BN -> ReLU -> linear -> IN -> BN) + skip -> ReLU."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(width, width, bias=False)
        self.in1 = MaskedInstanceNorm(eps)
        self.bn1 = MaskedBatchNorm(width, eps)
        self.linear2 = nn.Linear(width, width, bias=False)
        self.in2 = MaskedInstanceNorm(eps)
        self.bn2 = MaskedBatchNorm(width, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not self.training:  # inference: each IN + BN pair is one affine map
            out = instance_then_batch_norm(self.linear1(x), mask, self.in1, self.bn1).relu_()
            out = instance_then_batch_norm(self.linear2(out), mask, self.in2, self.bn2)
            return out.add_(x).relu_()
        out = F.relu(self.bn1(self.in1(self.linear1(x), mask), mask))
        out = self.bn2(self.in2(self.linear2(out), mask), mask)
        return F.relu(out + x)


def masked_knn(x: torch.Tensor, mask: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest real points of every point in feature space (itself first), never a padded one.

    Args:
        x: (B, N, C) features.
        mask: (B, N) bool, real correspondences (None: all).
        k: neighbours per point.

    Returns:
        ``(index, valid)``: (B, N, k) int64 neighbour indices ordered by distance, and (B, N, k) bool, False for
        the slots left over when a sample has fewer than ``k`` real points (their index is arbitrary).
    """
    B, N, _ = x.shape
    # |x_j|^2 - 2 x_i.x_j ranks the neighbours of i like the squared distance (|x_i|^2 is constant along a row);
    # an infinite |x_j|^2 keeps padded points out.
    sq = x.square().sum(-1)
    if mask is not None:
        sq = sq.masked_fill(~mask, float("inf"))
    dist = torch.baddbmm(sq[:, None, :], x, x.transpose(1, 2), alpha=-2.0)
    kk = min(k, N)
    values, index = dist.topk(kk, dim=-1, largest=False)
    valid = torch.isfinite(values)
    if kk < k:
        index = torch.cat([index, index.new_zeros(B, N, k - kk)], -1)
        valid = torch.cat([valid, valid.new_zeros(B, N, k - kk)], -1)
    return index, valid


class GraphBlock(nn.Module):
    """Dynamic-graph block: edge features ``[f_i, f_i - f_j]`` over the kNN, reduced by two (1, 3) convolutions.

    The first convolution (kernel (1, 3), stride 3, over the distance-ordered neighbours) is a linear map
    ``W`` of three stacked edges. It is evaluated without building the (B, N, k, 2C) edge tensor: with ``W_s^c``
    and ``W_s^d`` the blocks of ``W`` acting on slot ``s``'s centre and difference parts,
    ``W_s [f_i, f_i - f_j] = (W_s^c + W_s^d) f_i - W_s^d f_j``, so every point's ``W_s^d f_j`` is computed once
    and the three per group are summed by one ``embedding_bag`` (6x fewer multiply-adds at k = 9, and no
    (B, N, k, C) intermediate). Slots without a real neighbour contribute nothing.
    """

    def __init__(self, width: int, k: int, eps: float) -> None:
        super().__init__()
        self.k = k
        self.reduce1 = nn.Linear(3 * 2 * width, width, bias=False)
        self.bn1 = MaskedBatchNorm(width, eps)
        self.reduce2 = nn.Linear((k // 3) * width, width, bias=False)
        self.bn2 = MaskedBatchNorm(width, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, N, C = x.shape
        k, groups = self.k, self.k // 3
        index, valid = masked_knn(x, None if mask is None else mask[..., 0] > 0, k)
        W = self.reduce1.weight.view(C, 3, 2, C)  # (out, slot, centre|difference, in)
        W_centre = W[:, :, 0] + W[:, :, 1]  # (out, slot, in)
        W_diff = W[:, :, 1]
        # every point's W_s^d f_j for the three slots: a (B * N * 3, C) table, row = sample offset + j * 3 + slot
        table = (x @ W_diff.permute(2, 1, 0).reshape(C, 3 * C)).reshape(B * N * 3, C)
        slot = torch.arange(k, device=x.device) % 3
        rows = (index * 3 + slot + (torch.arange(B, device=x.device) * (N * 3)).view(B, 1, 1)).view(-1, 3)
        all_valid = bool(valid.all())
        # one bag per (point, group): the sum over its three slots of W_s^d f_j (valid slots only)
        weights = None if all_valid else valid.view(-1, 3).to(x.dtype)
        gathered = F.embedding_bag(rows, table, mode="sum", per_sample_weights=weights).view(B, N, groups, C)
        if all_valid:  # the centre term sum_s (W_s^c + W_s^d) f_i is the same for every group
            centre = (x @ W_centre.sum(1).t())[:, :, None]
        else:
            per_slot = (x @ W_centre.permute(2, 1, 0).reshape(C, 3 * C)).view(B, N, 1, 3, C)
            centre = (per_slot * valid.view(B, N, groups, 3, 1).to(x.dtype)).sum(3)
        out = centre - gathered  # (B, N, groups, C)
        group_mask = None if mask is None else mask.repeat_interleave(groups, 1)
        out = F.relu(self.bn1(out.reshape(B, N * groups, C), group_mask))
        out = F.relu(self.bn2(self.reduce2(out.view(B, N, groups * C)), mask))
        return x + out


class GlobalBlock(nn.Module):
    """Mixes features with the normalised soft adjacency ``D^-1/2 (a a^T + I) D^-1/2``, ``a = relu(tanh(w0))``.

    ``A f`` is computed as ``a (a^T f) + f``, in O(N C) rather than O(N^2 C); padded points get ``a = 0`` and only
    see themselves.
    """

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width, bias=False)
        self.bn = MaskedBatchNorm(width, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, first_logits: torch.Tensor) -> torch.Tensor:
        a = F.relu(torch.tanh(first_logits.detach()))[..., None]  # (B, N, 1)
        if mask is not None:
            a = a * mask
        d = torch.rsqrt(a * a.sum(1, keepdim=True) + 1.0)  # D_ii = a_i sum_j a_j + 1
        mixed = d * (a * (a * d * x).sum(1, keepdim=True) + d * x)
        return x + F.relu(self.bn(self.linear(mixed), mask))


class ConsensusNetwork(nn.Module):
    """Per-correspondence inlier logits (method.md §2), see the module docstring.

    Args:
        config: the architecture (default :class:`NetworkConfig`); :attr:`config` keeps it for saving.
    """

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        config = config or NetworkConfig()
        self.config = config
        self.source = "untrained"  # the model name or weights file it was loaded from, for reports
        w, eps = config.width, config.norm_eps
        self.embed = nn.Linear(config.in_channels, w, bias=False)
        self.embed_bn = MaskedBatchNorm(w, eps)
        self.blocks0 = nn.ModuleList(ResidualBlock(w, eps) for _ in range(config.blocks_before_graph))
        self.graph = GraphBlock(w, config.k, eps)
        self.blocks1 = nn.ModuleList(ResidualBlock(w, eps) for _ in range(config.blocks_after_graph))
        self.head0 = nn.Linear(w, 1)
        self.global_block = GlobalBlock(w, eps)
        self.blocks2 = nn.ModuleList(ResidualBlock(w, eps) for _ in range(config.blocks_after_global))
        self.head1 = nn.Linear(w, 1)
        self.fit_head: FitHead | None = None
        if config.fit_head_width > 0:
            self.fit_head = FitHead(len(fit_feature_names(config.inputs)), config.fit_head_width)

    def forward_both(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """First-head and final logits, each (B, N) with ``-inf`` at padded positions.

        Args:
            inputs: (B, C_in, N) features, channels as ``config.channels``.
            mask: (B, N) bool, True for real correspondences (None: all real).
        """
        B, C, N = inputs.shape
        if C != self.config.in_channels:
            raise ValueError(
                f"the network takes {self.config.in_channels} input channels ({', '.join(self.config.channels)}), got {C}"
            )
        if mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=inputs.device)
        if mask.shape != (B, N):
            raise ValueError(f"mask must have shape {(B, N)}, got {tuple(mask.shape)}")
        x = inputs.transpose(1, 2)
        m = None  # no padding: the unmasked (faster) statistics
        if not bool(mask.all()):
            m = mask[..., None].to(inputs.dtype)
            # Padded inputs may hold anything (even NaN); zero them so that nothing leaks through 0 * NaN.
            x = torch.where(mask[..., None], x, 0.0)
        x = F.relu(self.embed_bn(self.embed(x), m))
        for block in self.blocks0:
            x = block(x, m)
        x = self.graph(x, m)
        for block in self.blocks1:
            x = block(x, m)
        first = self.head0(x)[..., 0]
        x = self.global_block(x, m, first)
        for block in self.blocks2:
            x = block(x, m)
        final = self.head1(x)[..., 0]
        ninf = float("-inf")
        return first.masked_fill(~mask, ninf), final.masked_fill(~mask, ninf)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final inlier logits (B, N), ``-inf`` at padded positions; see :meth:`forward_both`."""
        return self.forward_both(inputs, mask)[1]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
