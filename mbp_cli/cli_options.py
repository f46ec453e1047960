"""The estimation options that ``mbp estimate`` and ``mbp eval`` share: defined once, here.

A command takes them all with one parameter::

    @app.command()
    @with_estimate_options
    def estimate(image0: ..., estimate_options: EstimateOptions, json_output: ... = False) -> None:
        config = estimate_options.to_config()  # ValueError: a bad value, for a usage error

:func:`with_estimate_options` replaces the ``estimate_options`` parameter by one typer option per field of
:class:`EstimateOptions` (same place in ``--help``) and hands the command the values as one object. A new
option of both commands is one new field here and one line in :meth:`EstimateOptions.to_config`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from mbp_cli.pipeline import EstimateConfig

F = TypeVar("F", bound=Callable[..., Any])

PARAMETER_NAME = "estimate_options"


@dataclasses.dataclass(frozen=True)
class EstimateOptions:
    """The command-line values that determine matching and estimation, unchecked (see :meth:`to_config`)."""

    matcher: Annotated[str, typer.Option(help="sift (default backend), sift-opencv, sift-kornia or loftr.")] = "sift"
    resize: Annotated[
        int | None, typer.Option(help="Long side in pixels for matching; keypoints map back exactly.")
    ] = None
    ratio: Annotated[float, typer.Option(help="Lowe ratio-test threshold (SIFT).")] = 0.8
    num_features: Annotated[int, typer.Option(help="SIFT features per image at most.")] = 8000
    loftr_weights: Annotated[
        str | None, typer.Option(help="LoFTR checkpoint (else $MBP_LOFTR_WEIGHTS or torch-hub's cache).")
    ] = None
    threshold: Annotated[float, typer.Option(help="Inlier threshold on the Sampson distance, pixels.")] = 1.0
    confidence: Annotated[float, typer.Option(help="RANSAC confidence for adaptive termination.")] = 0.9999
    max_iterations: Annotated[int, typer.Option(help="Most minimal samples.")] = 10_000
    ill_conditioned_samples: Annotated[
        int,
        typer.Option(
            help="Minimal samples to go on to when sampling would stop with an ill-conditioned best model (narrow "
            "field of view); 0: stop as usual. +0.4 AUC@5 at Lowe ratio 0.95 on the held-out scenes, ~12 % more time.",
        ),
    ] = 512
    sampler: Annotated[
        str | None,
        typer.Option(
            help="gumbel (by the network's inlier probabilities; default with a network), prosac (ordered by the "
            "network's scores, or by Lowe ratio with --no-network; the default then) or uniform.",
            show_default=False,
        ),
    ] = None
    scoring: Annotated[str, typer.Option(help="magsac (MAGSAC++) or msac.")] = "magsac"
    local_optimization: Annotated[
        bool, typer.Option("--lo/--no-lo", help="Local optimisation of each new best model.")
    ] = True
    refinement: Annotated[bool, typer.Option("--refine/--no-refine", help="Final Levenberg-Marquardt refinement.")] = (
        True
    )
    refine_scale: Annotated[
        float,
        typer.Option(
            help="Cauchy scale of the final refinement as a fraction of --threshold (0.5 gains 0.11-0.23 AUC@5 over 1 "
            "on the training scenes, benchmarks/settings.py)."
        ),
    ] = 0.5
    basin_hops: Annotated[
        bool,
        typer.Option(
            "--basin-hops/--no-basin-hops",
            help="Restart the final fit along its weakest direction when it is ill-conditioned (narrow field of "
            "view) and keep the lowest minimum of its cost: +0.6 AUC@5 on the held-out scenes, 1-3 % more time.",
        ),
    ] = True
    scale_noise: Annotated[
        bool,
        typer.Option(
            "--scale-noise/--no-scale-noise",
            help="Fit the final pose with each SIFT keypoint's noise proportional to its detection scale "
            "(heteroscedastic Sampson distance); matchers without scales (LoFTR) fit equal noise.",
        ),
    ] = True
    probability_weights: Annotated[
        bool,
        typer.Option(
            "--probability-weights/--no-probability-weights",
            help="Weigh each match of the final fit by the consensus network's inlier probability (models without "
            "a fit head; no effect with --no-network): +0.6 AUC@5 at Lowe ratio 0.95 leaving one scene out.",
        ),
    ] = True
    seed: Annotated[int, typer.Option(help="Random seed; equal seeds give equal results.")] = 0
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu"
    network: Annotated[
        bool,
        typer.Option(
            "--network/--no-network", help="Guide sampling with the consensus network (--no-network: classical)."
        ),
    ] = True
    model: Annotated[
        str | None,
        typer.Option(
            help="Shipped network by name (default: the best shipped model for the matcher).", show_default=False
        ),
    ] = None
    weights: Annotated[
        str | None, typer.Option(help="Network weights file (.safetensors) instead of a shipped model.")
    ] = None

    def to_config(self) -> EstimateConfig:
        """The checked configuration.

        Raises:
            ValueError: a value out of range or unknown (the message names it), or ``cuda`` without a GPU.
        """
        from mbp_cli.network.weights import DEFAULT_MODELS
        from mbp_cli.pipeline import EstimateConfig, matches_kind, resolve_device
        from mbp_cli.robust.ransac import BASIN_HOPS, RansacOptions

        # With neither --model nor --weights, matches without a shipped default model take the classical path.
        chosen = self.model is not None or self.weights is not None
        network = self.network and (chosen or matches_kind(self.matcher) in DEFAULT_MODELS)
        ransac = RansacOptions(
            threshold_px=self.threshold,
            confidence=self.confidence,
            max_iterations=self.max_iterations,
            min_iterations=min(RansacOptions.min_iterations, self.max_iterations),
            ill_conditioned_iterations=self.ill_conditioned_samples,
            sampler=self.sampler or ("gumbel" if network else "prosac"),
            scoring=self.scoring,
            local_optimization=self.local_optimization,
            final_refinement=self.refinement,
            refine_scale=self.refine_scale,
            basin_hops=BASIN_HOPS if self.basin_hops else (),
            scale_noise=self.scale_noise,
            probability_weights=self.probability_weights,
            seed=self.seed,
        )
        config = EstimateConfig(
            matcher=self.matcher,
            num_features=self.num_features,
            ratio=self.ratio,
            resize=self.resize,
            loftr_weights=self.loftr_weights,
            ransac=ransac,
            device=self.device,
            network=network,
            model=self.model,
            weights=self.weights,
        )
        resolve_device(self.device)
        return config


def _option_parameters(options_cls: type) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(options_cls, include_extras=True)
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            # a field without a default is a required option
            default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default,
            annotation=hints[f.name],
        )
        for f in dataclasses.fields(options_cls)
    ]


def with_options(options_cls: type, parameter_name: str) -> Callable[[F], F]:
    """A decorator giving a typer command one option per field of the dataclass ``options_cls``, handed to the
    command as one instance through its parameter ``parameter_name``."""

    def decorate(command: F) -> F:
        signature = inspect.signature(command)
        if parameter_name not in signature.parameters:
            raise TypeError(f"{command.__name__} has no {parameter_name} parameter")
        hints = typing.get_type_hints(command, include_extras=True)
        shared = _option_parameters(options_cls)
        names = [p.name for p in shared]
        parameters: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            if p.name == parameter_name:
                parameters += shared
            else:
                kind = inspect.Parameter.KEYWORD_ONLY if p.default is not inspect.Parameter.empty else p.kind
                parameters.append(p.replace(annotation=hints.get(p.name, p.annotation), kind=kind))
        clash = {p.name for p in signature.parameters.values()} & set(names)
        if clash:
            raise TypeError(f"{command.__name__} already has parameters {sorted(clash)} of the shared options")

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names if name in kwargs}
            return command(*args, **kwargs, **{parameter_name: options_cls(**values)})

        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": hints.get("return")}
        return typing.cast(F, wrapper)

    return decorate


with_estimate_options = with_options(EstimateOptions, PARAMETER_NAME)
with_estimate_options.__doc__ = (
    "Give a typer command every option of :class:`EstimateOptions` through its ``estimate_options`` parameter."
)
