"""The training loop of ``mbp train`` / ``mbp finetune``: data, AdamW, checkpoints, resume, validation, DDP.

A run directory holds:

- ``config.json``: the resolved options of the run (written once; a resumed run must match it);
- ``checkpoint.json`` + ``checkpoint-<step>.safetensors``: the latest state (model, optimizer, counters),
  written atomically — the tensors first, then the JSON that names them — so that a kill at any moment leaves a
  complete checkpoint to ``--resume`` from;
- ``log.jsonl``: one line per step and per validation;
- ``model.safetensors``: the trained network (the format of ``mbp estimate --weights``), and ``best.safetensors``
  with the best validation AUC@5.

Determinism: the data order of each epoch, the subset of each pair and the Gumbel noise of each step come from
generators seeded by ``(seed, epoch|step, rank)``, so a resumed run continues exactly as an uninterrupted one.

Several processes (``torchrun --nproc-per-node N mbp train ...``): ``torch.distributed`` with ``env://``, gloo on
CPU and nccl on GPU; each rank takes every N-th pair of the global batch and gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel`. Rank 0 validates and writes. A world size of 1 needs no
launcher.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file

from mbp_cli.data.matches import PairMatches, load_scene_matches, scene_dirs
from mbp_cli.data.tasks import load_task_matches
from mbp_cli.errors import OutputError
from mbp_cli.evaluation.inputs import PairRule, collect_inputs
from mbp_cli.io.calibration import load_camera
from mbp_cli.io.output import atomic_write_text
from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.consensus import ConsensusNetwork
from mbp_cli.network.weights import save_weights
from mbp_cli.pipeline import resolve_device
from mbp_cli.robust.ransac import RansacOptions
from mbp_cli.training.end_to_end import EndToEndConfig, make_batch, seeded_generator, step_losses
from mbp_cli.training.init import pose_metrics


@dataclass(frozen=True)
class TrainOptions:
    """Everything that determines a training run.

    Attributes:
        data: a scene folder or a folder of scenes (COLMAP layout with ``pairs.txt``).
        train_scenes / val_scenes: scene names of each split (empty train: every scene not in val).
        ratio: Lowe ratio of the SIFT matches; matcher / num_features: the matcher settings (cache key).
        cache_dir: where matches are cached (None: ``$MBP_CACHE_DIR`` or ``~/.cache/mbp``).
        network: architecture of a new network (ignored when ``init`` names weights).
        init: weights to start from (a shipped model name or a .safetensors path); None: random.
        recipe: the end-to-end step (hypotheses, backprop, losses, ...).
        batch_pairs: pairs per step (over all ranks); epochs; lr; weight_decay; clip: gradient-norm clipping.
        max_steps: stop after this many steps in all (0: epochs decide).
        val_pairs: validation pairs at most (a fixed, evenly spread subset).
        checkpoint_every: steps between checkpoints (also at the end of every epoch).
        calibration / frame_gap: for a folder of images without poses (self-supervised only): their shared
            calibration (any ``--K`` format) and how many following images each one is paired with.
        seed: seed of everything.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    data: str
    train_scenes: tuple[str, ...] = ()
    val_scenes: tuple[str, ...] = ()
    ratio: float = 0.8
    matcher: str = "sift"
    num_features: int = 8000
    cache_dir: str | None = None
    network: NetworkConfig = field(default_factory=NetworkConfig)
    init: str | None = None
    recipe: EndToEndConfig = field(default_factory=EndToEndConfig)
    batch_pairs: int = 32
    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-4
    clip: float = 5.0
    max_steps: int = 0
    val_pairs: int = 64
    checkpoint_every: int = 25
    calibration: str | None = None
    frame_gap: int = 2
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["network"] = self.network.to_dict()
        d["recipe"] = self.recipe.to_dict()
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrainOptions:
        d = dict(d)
        d["network"] = NetworkConfig.from_dict(d["network"])
        d["recipe"] = EndToEndConfig.from_dict(d["recipe"])
        d["train_scenes"], d["val_scenes"] = tuple(d["train_scenes"]), tuple(d["val_scenes"])
        return TrainOptions(**d)


class _BothHeads(torch.nn.Module):
    """The network with ``forward = forward_both``, so that DDP's hooks see the call that training makes."""

    def __init__(self, model: ConsensusNetwork) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_both(inputs, mask)


@dataclass
class _Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return _Distributed(dist.get_rank(), dist.get_world_size())


def resolve_training_device(name: str) -> torch.device:
    """:func:`mbp_cli.pipeline.resolve_device`, on the GPU of this process's ``LOCAL_RANK`` under torchrun."""
    device = resolve_device(name)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def _is_scene(path: Path) -> bool:
    return (path / "sparse").is_dir()


def split_scenes(options: TrainOptions) -> tuple[list[Path], list[Path]]:
    """The train and validation sources: scene folders (whole scenes, never shared), or the one pairs file or
    folder of images ``--data`` names (no validation split then).

    Raises:
        ValueError: unknown scene names, a scene in both splits, or an empty training split.
    """
    root = Path(options.data)
    if not root.exists():
        raise ValueError(f"--data {root} does not exist; give a scene folder, a folder of scenes or a pairs file")
    if _is_scene(root) or root.is_file() or not any(_is_scene(d) for d in root.iterdir() if d.is_dir()):
        return [root], []
    every = scene_dirs(root)
    names = {p.name: p for p in every}
    for n in (*options.train_scenes, *options.val_scenes):
        if n not in names:
            raise ValueError(f"no scene {n!r} under {root}; found {', '.join(names) or 'none'}")
    both = set(options.train_scenes) & set(options.val_scenes)
    if both:
        raise ValueError(f"scene(s) {', '.join(sorted(both))} are in both the train and validation splits")
    train = list(options.train_scenes) or [n for n in names if n not in options.val_scenes]
    if not train:
        raise ValueError(f"no training scenes under {root}")
    return [names[n] for n in train], [names[n] for n in options.val_scenes]


def load_pairs(sources: Sequence[Path], options: TrainOptions, console: Console | None = None) -> list[PairMatches]:
    """Cached matches (built once, with a progress bar) of every usable pair with at least 8 matches.

    A COLMAP scene gives its ``pairs.txt``; a pairs file with ground truth or a folder of images (with
    ``calibration``, pairs within ``frame_gap``) gives the pairs ``mbp eval`` would evaluate. Pairs without
    ground truth are only for self-supervised training.
    """
    pairs: list[PairMatches] = []
    for source in sources:
        if _is_scene(source):
            found = load_scene_matches(
                source, options.ratio, options.matcher, options.num_features, options.cache_dir, console
            )
        else:
            calibration = None if options.calibration is None else load_camera(options.calibration)
            inputs = collect_inputs(source, PairRule(frame_gap=options.frame_gap), calibration=calibration)
            found = []
            for scene in dict.fromkeys(t.scene for t in inputs.tasks):
                tasks = [t for t in inputs.tasks if t.scene == scene]
                found += load_task_matches(
                    tasks, options.ratio, options.matcher, options.num_features, options.cache_dir, console
                )
        posed = [p for p in found if np.isfinite(p.R).all()]
        if not options.recipe.self_supervised:
            if found and not posed:
                raise ValueError(
                    f"{source} has no ground-truth poses; train on posed scenes or a pairs file with poses, or "
                    "finetune with --self-supervised"
                )
            found = posed
        pairs += [p for p in found if len(p) >= 8]
    return pairs


def _evenly(pairs: Sequence[PairMatches], count: int) -> list[PairMatches]:
    if count <= 0 or len(pairs) <= count:
        return list(pairs)
    return [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, count).round()]


def _initial_model(options: TrainOptions) -> ConsensusNetwork:
    if options.init is None:
        torch.manual_seed(options.seed)
        return ConsensusNetwork(options.network)
    from mbp_cli.network.weights import load_model, load_weights

    path = Path(options.init).expanduser()
    return load_weights(path) if path.suffix == ".safetensors" or path.exists() else load_model(options.init)


# ---------------------------------------------------------------------------------------------- checkpoints


def _save_checkpoint(
    run: Path, model: ConsensusNetwork, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_state = optimizer.state_dict()
    scalars: dict[str, dict[str, float]] = {}
    for index, param_state in optim_state["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = float(value)
    step = int(state["step"])
    name = f"checkpoint-{step}.safetensors"
    tmp = run / (name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, run / name)
    previous = _read_checkpoint_json(run)
    full = dict(state, tensors=name, optimizer_scalars=scalars, param_groups=optim_state["param_groups"])
    atomic_write_text(run / "checkpoint.json", json.dumps(full, indent=1))
    if previous and previous.get("tensors") != name:
        (run / previous["tensors"]).unlink(missing_ok=True)


def _read_checkpoint_json(run: Path) -> dict[str, Any] | None:
    path = run / "checkpoint.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _load_checkpoint(run: Path, model: ConsensusNetwork, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = _read_checkpoint_json(run)
    if state is None:
        raise ValueError(f"no checkpoint in {run} to resume from; start without --resume")
    tensors = load_file(str(run / state["tensors"]))
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    optim_state: dict[str, Any] = {"state": {}, "param_groups": state["param_groups"]}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state["state"].setdefault(int(index), {})[name] = value
    for index, scalars in state["optimizer_scalars"].items():
        for name, value in scalars.items():
            optim_state["state"].setdefault(int(index), {})[name] = torch.tensor(value)
    optimizer.load_state_dict(optim_state)
    return state


# ----------------------------------------------------------------------------------------------- the loop


def _log(run: Path, record: dict[str, Any]) -> None:
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# Minimal samples of the budgeted validation AUCs (see validate): raw hypotheses, and the whole estimator.
BUDGET = 8
ESTIMATOR_BUDGET = 16


def validate(
    model: ConsensusNetwork, pairs: Sequence[PairMatches], options: TrainOptions, device: torch.device
) -> dict[str, float]:
    """Validation loss (same recipe, fixed noise) and AUC@5/10/20 of mbp's estimator with the network's scores.

    Also ``val_auc5_budget8``: AUC@5 of the best of 8 Gumbel minimal samples without local optimisation or
    refinement (three seeds), the quantity end-to-end training acts on most directly; and ``val_auc5_iter16``:
    the whole estimator (local optimisation, LM) stopped after 16 Gumbel minimal samples (three seeds), where
    better hypotheses buy speed.
    """
    if not pairs:
        return {}
    model.eval()
    losses = []
    with torch.no_grad():
        for start in range(0, len(pairs), options.batch_pairs):
            chunk = pairs[start : start + options.batch_pairs]
            batch = make_batch(chunk, model.config, options.recipe, seeded_generator(options.seed, -1, start)).to(
                device
            )
            loss, _ = step_losses(model.forward_both, batch, options.recipe, seeded_generator(options.seed, -2, start))
            losses.append(float(loss) * len(chunk))
    model.cpu()
    threshold = options.recipe.threshold_px
    metrics = pose_metrics(model, pairs, ["gumbel"], threshold)["gumbel"]
    # The full estimator (>= 128 samples, local optimisation, LM) hides most of the sampler's effect; what the
    # training optimises shows with a small budget of minimal samples and no polishing.
    budget = RansacOptions(
        min_iterations=BUDGET, max_iterations=BUDGET, batch_size=BUDGET, local_optimization=False,
        final_refinement=False,
    )  # fmt: skip
    budgeted = pose_metrics(model, pairs, ["gumbel"], threshold, budget, seeds=(0, 1, 2))["gumbel"]
    short = RansacOptions(
        min_iterations=ESTIMATOR_BUDGET, max_iterations=ESTIMATOR_BUDGET, batch_size=ESTIMATOR_BUDGET
    )  # fmt: skip
    short_run = pose_metrics(model, pairs, ["gumbel"], threshold, short, seeds=(0, 1, 2))["gumbel"]
    model.to(device)
    return {
        f"val_auc5_budget{BUDGET}": budgeted["auc5"],
        f"val_auc5_iter{ESTIMATOR_BUDGET}": short_run["auc5"],
        "val_loss": sum(losses) / len(pairs),
        "val_auc5": metrics["auc5"],
        "val_auc10": metrics["auc10"],
        "val_auc20": metrics["auc20"],
        "val_mean_iterations": metrics["mean_iterations"],
    }


def train(
    options: TrainOptions, run: str | os.PathLike[str], resume: bool = False, console: Console | None = None
) -> dict[str, Any]:
    """Train (or resume) a run in the folder ``run``; returns the final state (step, skipped, metrics)."""
    console = console or Console(stderr=True)
    run = Path(run)
    device = resolve_training_device(options.device)
    ddp = _init_distributed(device)
    config_path = run / "config.json"
    if ddp.main:
        run.mkdir(parents=True, exist_ok=True)
        if resume:
            if not config_path.is_file():
                raise ValueError(f"no run to resume in {run} (config.json missing); start without --resume")
            saved = json.loads(config_path.read_text())
            if saved != json.loads(json.dumps(options.to_dict())):
                raise ValueError(f"the options differ from those of the run in {run}; resume with the same options")
        elif config_path.exists():
            raise OutputError(f"{run} already holds a run; use --resume to continue it or choose another --out")
        else:
            atomic_write_text(config_path, json.dumps(options.to_dict(), indent=1))

    train_scenes, val_scenes = split_scenes(options)
    train_pairs = load_pairs(train_scenes, options, console if ddp.main else None)
    val_pairs = _evenly(load_pairs(val_scenes, options, console if ddp.main else None), options.val_pairs)
    if not train_pairs:
        raise ValueError(f"no training pairs with at least 8 matches under {options.data}")

    model = _initial_model(options).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    state: dict[str, Any] = {"step": 0, "skipped": 0, "best_auc5": None, "history": []}
    if resume:
        state = _load_checkpoint(run, model, optimizer)
        model.to(device)
    if ddp.world > 1:
        heads: Any = torch.nn.parallel.DistributedDataParallel(_BothHeads(model))
    else:
        heads = model.forward_both

    steps_per_epoch = max(1, len(train_pairs) // options.batch_pairs)
    total_steps = options.max_steps or steps_per_epoch * options.epochs
    if ddp.main and state["step"] == 0 and val_pairs:
        initial = validate(model, val_pairs, options, device)
        state["history"].append({"step": 0, **initial})
        _log(run, {"step": 0, **initial})
        model.train()

    progress = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not ddp.main or not console.is_terminal,
    )
    with progress:
        task = progress.add_task("train", total=total_steps, completed=state["step"], info="")
        while state["step"] < total_steps:
            step = state["step"]
            epoch, within = divmod(step, steps_per_epoch)
            order = torch.randperm(len(train_pairs), generator=seeded_generator(options.seed, epoch))
            chosen = order[within * options.batch_pairs : (within + 1) * options.batch_pairs].tolist()
            mine = [train_pairs[i] for i in chosen[ddp.rank :: ddp.world]]
            start = time.perf_counter()
            batch = make_batch(
                mine, model.config, options.recipe, seeded_generator(options.seed, step, ddp.rank, 1)
            ).to(device)
            loss, stats = step_losses(heads, batch, options.recipe, seeded_generator(options.seed, step, ddp.rank, 2))
            optimizer.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(loss))
            # Under DDP every rank must run backward (it all-reduces the gradients); a non-finite loss then gives
            # non-finite gradients on every rank, and all ranks skip the step below.
            if finite or ddp.world > 1:
                loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), options.clip)  # 0 without gradients
            ok = torch.tensor([1.0 if finite and bool(torch.isfinite(grad_norm)) else 0.0], device=device)
            if ddp.world > 1:  # every rank skips together
                dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            if bool(ok.item() == 1.0):
                optimizer.step()
            else:
                state["skipped"] += 1
            state["step"] = step + 1
            record = {
                "step": step + 1,
                "epoch": epoch,
                **stats,
                "grad_norm": float(grad_norm),
                "skipped": state["skipped"],
                "seconds": time.perf_counter() - start,
            }
            if ddp.main:
                _log(run, record)
                progress.update(task, advance=1, info=f"loss {stats['loss']:.4f} skipped {state['skipped']}")
            end_of_epoch = state["step"] % steps_per_epoch == 0 or state["step"] == total_steps
            if ddp.main and end_of_epoch and val_pairs:
                metrics = validate(model, val_pairs, options, device)
                model.train()
                state["history"].append({"step": state["step"], **metrics})
                _log(run, {"step": state["step"], **metrics})
                if state["best_auc5"] is None or metrics["val_auc5"] > state["best_auc5"]:
                    state["best_auc5"] = metrics["val_auc5"]
                    save_weights(model, run / "best.safetensors", {"run": str(run), "step": str(state["step"])})
            if ddp.main and (end_of_epoch or state["step"] % options.checkpoint_every == 0):
                _save_checkpoint(run, model, optimizer, state)
                save_weights(model, run / "model.safetensors", {"run": str(run), "step": str(state["step"])})
            if ddp.world > 1:
                dist.barrier()
    return state
