"""``mbp train`` and ``mbp finetune``: thin wrappers over :func:`mbp_cli.training.trainer.train`.

Registered on the ``mbp`` app by :mod:`mbp_cli.cli`. Under ``torchrun --nproc-per-node N`` both run data-parallel.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mbp_cli.cli import app, fail, stderr
from mbp_cli.errors import ExitCode, MbpError
from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.weights import DEFAULT_MODEL
from mbp_cli.training.end_to_end import EndToEndConfig, LossWeights
from mbp_cli.training.trainer import TrainOptions, train


def _names(value: str) -> tuple[str, ...]:
    return tuple(n for n in (s.strip() for s in value.split(",")) if n)


Data = Annotated[Path, typer.Option(help="A scene folder or a folder of scenes (COLMAP layout with pairs.txt).")]
Out = Annotated[Path, typer.Option(help="Run folder: config, checkpoints, log.jsonl, model.safetensors.")]
TrainScenes = Annotated[str, typer.Option(help="Comma-separated training scenes (default: all but --val-scenes).")]
ValScenes = Annotated[str, typer.Option(help="Comma-separated validation scenes (whole scenes, never in training).")]
Ratio = Annotated[float, typer.Option(help="Lowe ratio of the SIFT matches (cached per setting).")]
CacheDir = Annotated[Path | None, typer.Option(help="Match cache (default $MBP_CACHE_DIR or ~/.cache/mbp).")]
Hypotheses = Annotated[int, typer.Option(help="Minimal samples per pair per step.")]
Tau = Annotated[float, typer.Option(help="Temperature of the straight-through Gumbel weights.")]
Backprop = Annotated[str, typer.Option(help="Gradient through the 5-point solver: ift, ddn or autograd.")]
Threshold = Annotated[float, typer.Option(help="Inlier threshold in pixels (labels, loss clamp, scores).")]
LossEpipolar = Annotated[float, typer.Option(help="Weight of the epipolar loss.")]
LossPose = Annotated[float, typer.Option(help="Weight of the pose loss (degrees / 180).")]
LossClassification = Annotated[float, typer.Option(help="Weight of the inlier classification loss (BCE).")]
LossEigenFree = Annotated[float, typer.Option(help="Weight of the eigendecomposition-free loss.")]
Expected = Annotated[
    bool, typer.Option("--expected/--mean", help="DSAC expectation over hypotheses by score, or their plain mean.")
]
Alpha = Annotated[float, typer.Option(help="Inverse temperature of the DSAC selection.")]
MaxPoints = Annotated[int, typer.Option(help="Correspondences per pair at most (random subset per step).")]
BatchPairs = Annotated[int, typer.Option(help="Pairs per step, over all processes.")]
Epochs = Annotated[int, typer.Option(help="Passes over the training pairs.")]
MaxSteps = Annotated[int, typer.Option(help="Stop after this many steps (0: --epochs decides).")]
Lr = Annotated[float, typer.Option(help="AdamW learning rate.")]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay.")]
Clip = Annotated[float, typer.Option(help="Gradient-norm clipping.")]
ValPairs = Annotated[int, typer.Option(help="Validation pairs at most (evenly spread).")]
CheckpointEvery = Annotated[int, typer.Option(help="Steps between checkpoints.")]
Seed = Annotated[int, typer.Option(help="Seed of data order, subsets and Gumbel noise.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Resume = Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")]


def _run(options: TrainOptions, out: Path, resume: bool) -> None:
    try:
        state = train(options, out, resume=resume, console=stderr)
    except MbpError as exc:
        raise fail(exc.message, exc.exit_code) from None
    except ValueError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    last = state["history"][-1] if state["history"] else {}
    auc = f", validation AUC@5 {100 * last['val_auc5']:.1f}" if "val_auc5" in last else ""
    stderr.print(
        f"trained {state['step']} steps ({state['skipped']} skipped){auc}; weights: {out / 'model.safetensors'}"
    )


def _recipe(
    hypotheses: int,
    tau: float,
    backprop: str,
    threshold: float,
    expected: bool,
    alpha: float,
    max_points: int,
    self_supervised: bool,
    losses: LossWeights,
) -> EndToEndConfig:
    try:
        return EndToEndConfig(
            hypotheses, tau, backprop, threshold, expected, alpha, max_points, self_supervised, losses
        )
    except ValueError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None


@app.command("train")
def train_command(
    data: Data,
    out: Out,
    train_scenes: TrainScenes = "",
    val_scenes: ValScenes = "",
    ratio: Ratio = 0.8,
    cache_dir: CacheDir = None,
    width: Annotated[int, typer.Option(help="Channels of the network's blocks.")] = 128,
    init: Annotated[str | None, typer.Option(help="Start from a shipped model name or a .safetensors file.")] = None,
    hypotheses: Hypotheses = 128,
    tau: Tau = 1.0,
    backprop: Backprop = "ift",
    threshold: Threshold = 1.0,
    loss_epipolar: LossEpipolar = 1.0,
    loss_pose: LossPose = 0.0,
    loss_classification: LossClassification = 0.1,
    loss_eigen_free: LossEigenFree = 0.0,
    expected: Expected = False,
    alpha: Alpha = 0.1,
    max_points: MaxPoints = 2000,
    batch_pairs: BatchPairs = 32,
    epochs: Epochs = 10,
    max_steps: MaxSteps = 0,
    lr: Lr = 1e-4,
    weight_decay: WeightDecay = 1e-4,
    clip: Clip = 5.0,
    val_pairs: ValPairs = 64,
    checkpoint_every: CheckpointEvery = 25,
    seed: Seed = 0,
    device: Device = "auto",
    resume: Resume = False,
) -> None:
    """Train the consensus network end to end through the 5-point solver on posed scenes."""
    losses = LossWeights(loss_epipolar, loss_pose, loss_classification, loss_eigen_free)
    recipe = _recipe(hypotheses, tau, backprop, threshold, expected, alpha, max_points, False, losses)
    try:
        network = NetworkConfig(width=width, max_points=max(max_points, 9))
    except ValueError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None
    options = TrainOptions(
        data=str(data), train_scenes=_names(train_scenes), val_scenes=_names(val_scenes), ratio=ratio,
        cache_dir=None if cache_dir is None else str(cache_dir), network=network, init=init, recipe=recipe,
        batch_pairs=batch_pairs, epochs=epochs, lr=lr, weight_decay=weight_decay, clip=clip, max_steps=max_steps,
        val_pairs=val_pairs, checkpoint_every=checkpoint_every, seed=seed, device=device,
    )  # fmt: skip
    _run(options, out, resume)


@app.command("finetune")
def finetune_command(
    data: Data,
    out: Out,
    model: Annotated[str, typer.Option(help="Shipped model to start from.")] = DEFAULT_MODEL,
    weights: Annotated[Path | None, typer.Option(help="Start from this .safetensors file instead.")] = None,
    self_supervised: Annotated[
        bool,
        typer.Option(
            help="No ground-truth poses: pseudo-poses from the estimator (iMatching); --data may then be "
            "a folder of images with --K."
        ),
    ] = False,
    K: Annotated[
        str | None, typer.Option("--K", help="Calibration of a folder of unposed images (any mbp estimate --K form).")
    ] = None,
    frame_gap: Annotated[int, typer.Option(help="Pair each unposed image with this many following ones.")] = 2,
    train_scenes: TrainScenes = "",
    val_scenes: ValScenes = "",
    ratio: Ratio = 0.8,
    cache_dir: CacheDir = None,
    hypotheses: Hypotheses = 128,
    tau: Tau = 1.0,
    backprop: Backprop = "ift",
    threshold: Threshold = 1.0,
    loss_epipolar: LossEpipolar = 1.0,
    loss_pose: LossPose = 0.0,
    loss_classification: LossClassification = 0.1,
    loss_eigen_free: LossEigenFree = 0.0,
    expected: Expected = False,
    alpha: Alpha = 0.1,
    max_points: MaxPoints = 2000,
    batch_pairs: BatchPairs = 32,
    epochs: Epochs = 3,
    max_steps: MaxSteps = 0,
    lr: Lr = 3e-5,
    weight_decay: WeightDecay = 1e-4,
    clip: Clip = 5.0,
    val_pairs: ValPairs = 64,
    checkpoint_every: CheckpointEvery = 25,
    seed: Seed = 0,
    device: Device = "auto",
    resume: Resume = False,
) -> None:
    """Finetune a shipped model (or --weights) on your scenes; --self-supervised needs no poses."""
    if self_supervised and loss_eigen_free == 0.0:
        # The second term of the eigendecomposition-free loss is what keeps self-supervised weights from collapsing.
        loss_eigen_free = 1.0
    losses = LossWeights(loss_epipolar, loss_pose, loss_classification, loss_eigen_free)
    recipe = _recipe(hypotheses, tau, backprop, threshold, expected, alpha, max_points, self_supervised, losses)
    init = str(weights) if weights is not None else model
    options = TrainOptions(
        data=str(data), train_scenes=_names(train_scenes), val_scenes=_names(val_scenes), ratio=ratio,
        cache_dir=None if cache_dir is None else str(cache_dir), init=init, recipe=recipe, batch_pairs=batch_pairs,
        epochs=epochs, lr=lr, weight_decay=weight_decay, clip=clip, max_steps=max_steps, val_pairs=val_pairs,
        checkpoint_every=checkpoint_every, calibration=K, frame_gap=frame_gap, seed=seed, device=device,
    )  # fmt: skip
    _run(options, out, resume)
