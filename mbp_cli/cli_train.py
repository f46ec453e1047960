"""``mbp train`` and ``mbp finetune``: thin wrappers over :func:`mbp_cli.training.trainer.train`.

Registered on the ``mbp`` app by :mod:`mbp_cli.cli`. The options both commands share are the fields of
:class:`RecipeOptions`, defined once. Under ``torchrun --nproc-per-node N`` both run data-parallel.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import typer

from mbp_cli.cli import app, fail, stderr
from mbp_cli.cli_options import with_options
from mbp_cli.errors import ExitCode, MbpError
from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.weights import DEFAULT_MODEL
from mbp_cli.training.end_to_end import EndToEndConfig, LossWeights
from mbp_cli.training.trainer import TrainOptions, train


def _names(value: str) -> tuple[str, ...]:
    return tuple(n for n in (s.strip() for s in value.split(",")) if n)


@dataclasses.dataclass(frozen=True)
class RecipeOptions:
    """The command-line values shared by ``mbp train`` and ``mbp finetune`` (checked by :meth:`to_train_options`)."""

    data: Annotated[Path, typer.Option(help="A scene folder or a folder of scenes (COLMAP layout with pairs.txt).")]
    out: Annotated[Path, typer.Option(help="Run folder: config, checkpoints, log.jsonl, model.safetensors.")]
    train_scenes: Annotated[
        str, typer.Option(help="Comma-separated training scenes (default: all but --val-scenes).")
    ] = ""
    val_scenes: Annotated[str, typer.Option(help="Comma-separated validation scenes (never in training).")] = ""
    ratio: Annotated[float, typer.Option(help="Lowe ratio of the SIFT matches (cached per setting).")] = 0.8
    cache_dir: Annotated[Path | None, typer.Option(help="Match cache (default $MBP_CACHE_DIR or ~/.cache/mbp).")] = None
    hypotheses: Annotated[int, typer.Option(help="Minimal samples per pair per step.")] = 128
    tau: Annotated[float, typer.Option(help="Temperature of the straight-through Gumbel weights.")] = 1.0
    backprop: Annotated[str, typer.Option(help="Gradient through the 5-point solver: ift, ddn or autograd.")] = "ift"
    threshold: Annotated[float, typer.Option(help="Inlier threshold in pixels (labels, loss clamp, scores).")] = 1.0
    loss_epipolar: Annotated[float, typer.Option(help="Weight of the epipolar loss.")] = 1.0
    loss_pose: Annotated[float, typer.Option(help="Weight of the pose loss (degrees / 180).")] = 0.0
    loss_classification: Annotated[float, typer.Option(help="Weight of the inlier classification loss.")] = 0.1
    loss_eigen_free: Annotated[
        float, typer.Option(help="Weight of the eigendecomposition-free loss (self-supervised: 1 when 0).")
    ] = 0.0
    expected: Annotated[
        bool, typer.Option("--expected/--mean", help="DSAC expectation over hypotheses by score, or their mean.")
    ] = False
    alpha: Annotated[float, typer.Option(help="Inverse temperature of the DSAC selection.")] = 0.1
    max_points: Annotated[int, typer.Option(help="Correspondences per pair at most (random subset per step).")] = 2000
    batch_pairs: Annotated[int, typer.Option(help="Pairs per step, over all processes.")] = 32
    max_steps: Annotated[int, typer.Option(help="Stop after this many steps (0: --epochs decides).")] = 0
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-4
    clip: Annotated[float, typer.Option(help="Gradient-norm clipping.")] = 5.0
    val_pairs: Annotated[int, typer.Option(help="Validation pairs at most (evenly spread).")] = 64
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 25
    seed: Annotated[int, typer.Option(help="Seed of data order, subsets and Gumbel noise.")] = 0
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto"
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False

    def to_train_options(self, **command: object) -> TrainOptions:
        """The checked run options, with the command's own values (init, network, epochs, lr, ...).

        Raises:
            typer.Exit: a bad value, as a usage error.
        """
        self_supervised = bool(command.pop("self_supervised", False))
        eigen_free = self.loss_eigen_free
        if self_supervised and eigen_free == 0.0:
            # The second term of the eigendecomposition-free loss keeps self-supervised weights from collapsing.
            eigen_free = 1.0
        try:
            losses = LossWeights(self.loss_epipolar, self.loss_pose, self.loss_classification, eigen_free)
            recipe = EndToEndConfig(
                self.hypotheses, self.tau, self.backprop, self.threshold, self.expected, self.alpha,
                self.max_points, self_supervised, losses,
            )  # fmt: skip
            return TrainOptions(
                data=str(self.data), train_scenes=_names(self.train_scenes), val_scenes=_names(self.val_scenes),
                ratio=self.ratio, cache_dir=None if self.cache_dir is None else str(self.cache_dir), recipe=recipe,
                batch_pairs=self.batch_pairs, max_steps=self.max_steps, weight_decay=self.weight_decay, clip=self.clip,
                val_pairs=self.val_pairs, checkpoint_every=self.checkpoint_every, seed=self.seed, device=self.device,
                **command,  # type: ignore[arg-type]
            )  # fmt: skip
        except ValueError as exc:
            raise fail(str(exc), ExitCode.USAGE) from None


def _run(recipe: RecipeOptions, options: TrainOptions) -> None:
    try:
        state = train(options, recipe.out, resume=recipe.resume, console=stderr)
    except MbpError as exc:
        raise fail(exc.message, exc.exit_code) from None
    except ValueError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    last = state["history"][-1] if state["history"] else {}
    auc = f", validation AUC@5 {100 * last['val_auc5']:.1f}" if "val_auc5" in last else ""
    stderr.print(
        f"trained {state['step']} steps ({state['skipped']} skipped){auc}; weights: {recipe.out / 'model.safetensors'}"
    )


@app.command("train")
@with_options(RecipeOptions, "recipe")
def train_command(
    recipe: RecipeOptions,
    width: Annotated[int, typer.Option(help="Channels of the network's blocks (a new network).")] = 128,
    init: Annotated[str | None, typer.Option(help="Start from a shipped model name or a .safetensors file.")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training pairs.")] = 10,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
) -> None:
    """Train the consensus network end to end through the 5-point solver on posed scenes."""
    try:
        network = NetworkConfig(width=width, max_points=max(recipe.max_points, 9))
    except ValueError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None
    _run(recipe, recipe.to_train_options(network=network, init=init, epochs=epochs, lr=lr))


@app.command("finetune")
@with_options(RecipeOptions, "recipe")
def finetune_command(
    recipe: RecipeOptions,
    model: Annotated[str, typer.Option(help="Shipped model to start from.")] = DEFAULT_MODEL,
    weights: Annotated[Path | None, typer.Option(help="Start from this .safetensors file instead.")] = None,
    self_supervised: Annotated[
        bool,
        typer.Option(
            help="No ground-truth poses: pseudo-poses from the estimator (iMatching); --data may then be a folder "
            "of images with --K."
        ),
    ] = False,
    K: Annotated[
        str | None, typer.Option("--K", help="Calibration of a folder of unposed images (any mbp estimate --K form).")
    ] = None,
    frame_gap: Annotated[int, typer.Option(help="Pair each unposed image with this many following ones.")] = 2,
    epochs: Annotated[int, typer.Option(help="Passes over the training pairs.")] = 3,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-5,
) -> None:
    """Finetune a shipped model (or --weights) on your scenes; --self-supervised needs no poses."""
    init = str(weights) if weights is not None else model
    options = recipe.to_train_options(
        init=init, self_supervised=self_supervised, calibration=K, frame_gap=frame_gap, epochs=epochs, lr=lr
    )
    _run(recipe, options)
