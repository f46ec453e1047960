"""Batch evaluation (``mbp eval``): pairs of posed scenes or pairs files through the code path of ``mbp estimate``,
scored against ground truth (method.md §8), with the baselines on the same matches.

``inputs`` finds the pairs, ``runner`` evaluates them (workers, shards, resume) into ``pairs.jsonl``, ``summary``
aggregates, ``report`` and ``plots`` write the markdown report and the figures.
"""

from mbp_cli.evaluation.inputs import EvalInputs, InputError, PairRule, PairTask, collect_inputs
from mbp_cli.evaluation.runner import (
    Baseline,
    EvalSettings,
    EvaluationError,
    merge_runs,
    parse_baselines,
    parse_shard,
    run_evaluation,
)
from mbp_cli.evaluation.summary import pose_metrics, summarize

__all__ = [
    "Baseline",
    "EvalInputs",
    "EvalSettings",
    "EvaluationError",
    "InputError",
    "PairRule",
    "PairTask",
    "collect_inputs",
    "merge_runs",
    "parse_baselines",
    "parse_shard",
    "pose_metrics",
    "run_evaluation",
    "summarize",
]
