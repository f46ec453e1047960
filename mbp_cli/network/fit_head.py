"""Learned weights of the final fit: how much each correspondence counts in the last Levenberg–Marquardt.

On pairs that RANSAC gets right, the pose error left is set by the final robust fit (``benchmarks/final_fit.py``):
which of the near-threshold matches it trusts, and how much. The fit head gives every correspondence within the
refinement margin a weight in (0, 1) that multiplies its Cauchy cost in the final LM: the network's inlier
probability, corrected. It sees what a robust loss
cannot: the consensus network's logit, the matcher's side information and its consistency with the inliers
(a keypoint whose scale ratio or orientation change disagrees with the rest is a worse-localised one), beside the
residual itself at the RANSAC pose. It is trained through the LM's optimum by the implicit function theorem
(:func:`mbp_cli.robust.refine.refine_pose_implicit`, :mod:`mbp_cli.training.final_fit`) with a loss on the
refined pose, so it learns what makes the fit accurate rather than what makes a match an inlier.

Features, in order (:func:`fit_features`), with ``r`` the Sampson residual at the RANSAC pose in thresholds and
the *inliers* those with ``r < 1``:

* ``r``, ``log(r² + 1e-4)``, ``r / median inlier r`` and the inlier fraction of the margin set;
* the consensus network's logit / 5;
* SIFT: the Lowe ratio, the log scale ratio minus its inlier median (signed and absolute) and the absolute
  orientation change minus the inliers' circular mean; LoFTR: the confidence.
"""

from __future__ import annotations

import torch
from torch import nn

# Indices of the side channels in the network's inputs (mbp_cli.network.config.INPUT_CHANNELS).
_SIFT_RATIO, _SIFT_LOG_SCALE, _SIFT_SIN, _SIFT_COS = 4, 5, 6, 7
_LOFTR_CONFIDENCE = 4
RESIDUAL_FEATURES = ("residual", "log_residual2", "relative_residual", "inlier_fraction", "logit")
SIDE_FEATURES = {
    "sift": ("ratio", "scale_deviation", "abs_scale_deviation", "abs_orientation_deviation"),
    "loftr": ("confidence",),
}


def fit_feature_names(inputs_kind: str) -> tuple[str, ...]:
    """Names of the fit head's input features for a matcher kind (``sift`` or ``loftr``), in order."""
    return RESIDUAL_FEATURES + SIDE_FEATURES[inputs_kind]


def _median_over(values: torch.Tensor, inliers: torch.Tensor) -> torch.Tensor:
    return values[inliers].median() if bool(inliers.any()) else values.median()


def fit_features(
    inputs: torch.Tensor, logits: torch.Tensor, residuals2: torch.Tensor, inputs_kind: str
) -> torch.Tensor:
    """The (M, F) float32 features of the fit head for M correspondences of one pair.

    Args:
        inputs: (C, M) the consensus network's inputs of these correspondences (:func:`network_inputs`).
        logits: (M,) the network's final logits.
        residuals2: (M,) squared Sampson distances at the RANSAC pose, in squared thresholds.
        inputs_kind: ``sift`` or ``loftr`` (the network's ``config.inputs``).
    """
    r2 = residuals2.to(torch.float32)
    r = r2.sqrt()
    inliers = r2 < 1.0
    columns = [
        r,
        (r2 + 1e-4).log(),
        r / (_median_over(r, inliers) + 1e-3),
        inliers.to(torch.float32).mean().expand_as(r),
        logits.to(torch.float32) / 5.0,
    ]
    side = inputs.to(torch.float32)
    if inputs_kind == "sift":
        scale_deviation = side[_SIFT_LOG_SCALE] - _median_over(side[_SIFT_LOG_SCALE], inliers)
        sin, cos = side[_SIFT_SIN], side[_SIFT_COS]
        if bool(inliers.any()):
            mean_sin, mean_cos = sin[inliers].mean(), cos[inliers].mean()
        else:
            mean_sin, mean_cos = sin.mean(), cos.mean()
        # angle between each orientation change and the inliers' circular mean, in [0, pi]
        orientation_deviation = torch.atan2(sin * mean_cos - cos * mean_sin, cos * mean_cos + sin * mean_sin).abs()
        columns += [side[_SIFT_RATIO], scale_deviation, scale_deviation.abs(), orientation_deviation]
    elif inputs_kind == "loftr":
        columns += [side[_LOFTR_CONFIDENCE]]
    else:
        raise ValueError(f"unknown network inputs {inputs_kind!r}")
    return torch.stack(columns, 1)


class FitHead(nn.Module):
    """Per-correspondence MLP from :func:`fit_features` to a correction of the consensus network's logit.

    The weight is ``sigmoid(logit + correction)``: the head learns where the fit should trust a match more or less
    than the network's inlier probability, which is what weighs the final fit without a head
    (``RansacOptions.probability_weights``). The last layer starts at zero, so an untrained head gives exactly the
    probability weights and training starts from the product's fit.
    """

    def __init__(self, in_features: int, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
        )
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(M, F) features and the network's (M,) logits of the same correspondences -> (M,) weights in (0, 1),
        in the logits' dtype."""
        return torch.sigmoid(logits + self.layers(features)[:, 0].to(logits.dtype))
