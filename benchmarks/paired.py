"""Is a difference between two methods more than the choice of pairs? Paired bootstrap of their AUC difference.

Reads the per-pair results that the other benchmarks write (``.json`` with ``rows``) in either layout:

* one row per pair and method (``network.py``, ``loso.py``, ``peers.py``): a column is a ``method`` value;
* one row per pair with a column per variant holding the pose error (``settings.py``, ``poselib_seeds.py``).

A side is ``FILE:COLUMNS``, the columns separated by ``;``; several columns are runs of one method (e.g. RANSAC
seeds) and its AUC is their mean. The pairs that both sides have are matched by scene and image names (and Lowe
ratio with ``--ratio``), resampled with replacement, and the AUC difference a − b is reported with its 95 % interval
(:func:`mbp_cli.metrics.paired_auc_difference`).

Usage::

    python benchmarks/paired.py \\
        --a "benchmarks/results/settings_heldout_seeds_ratio0.95.json:seed=0;seed=1;seed=2;seed=3;seed=4" \\
        --b "benchmarks/results/poselib_seeds_ratio0.95.json:seed=0;seed=1;seed=2;seed=3;seed=4"
    python benchmarks/paired.py --ratio 0.95 --a benchmarks/results/network_sift-kl-w32-small.json:mbp-gumbel \\
        --b benchmarks/results/network_sift-kl-w32-small.json:poselib
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mbp_cli.metrics import paired_auc_difference, pose_auc  # noqa: E402

THRESHOLDS = (5.0, 10.0, 20.0)


def side_errors(spec: str, ratio: float | None) -> tuple[str, dict[tuple, list[float]]]:
    """``FILE:COL;COL`` -> (label, pair key -> the pose error of each column, in the order given)."""
    path, _, columns = spec.rpartition(":")
    if not path or not columns:
        raise SystemExit(f"bad side {spec!r}: use FILE:COLUMN[;COLUMN...]")
    try:
        rows = json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"cannot read the rows of {path}: {exc}") from None
    names = [c.strip() for c in columns.split(";") if c.strip()]
    by_pair: dict[tuple, dict[str, float]] = {}
    for row in rows:
        if ratio is not None and "ratio" in row and abs(float(row["ratio"]) - ratio) > 1e-9:
            continue
        key = (row["scene"], row["image0"], row["image1"])
        if "method" in row:  # one row per pair and method
            if row["method"] in names and row.get("err_R_deg") is not None:
                by_pair.setdefault(key, {})[row["method"]] = max(float(row["err_R_deg"]), float(row["err_t_deg"]))
        else:  # one column per variant
            by_pair.setdefault(key, {}).update({n: float(row[n]) for n in names if row.get(n) is not None})
    complete = {k: [v[n] for n in names] for k, v in by_pair.items() if all(n in v for n in names)}
    if not complete:
        raise SystemExit(f"no pair of {path} has every column of {names} (columns are method names or variant names)")
    return f"{Path(path).name}:{';'.join(names)}", complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="FILE:COLUMN[;COLUMN...] of the first method")
    parser.add_argument("--b", required=True, help="FILE:COLUMN[;COLUMN...] of the second method")
    parser.add_argument("--ratio", type=float, default=None, help="only rows of this Lowe ratio (files that have one)")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    label_a, a = side_errors(args.a, args.ratio)
    label_b, b = side_errors(args.b, args.ratio)
    keys = sorted(set(a) & set(b))
    if not keys:
        raise SystemExit("the two sides have no pair in common")
    errors_a = np.array([a[k] for k in keys]).T  # (runs, pairs)
    errors_b = np.array([b[k] for k in keys]).T
    diffs = paired_auc_difference(errors_a, errors_b, THRESHOLDS, resamples=args.resamples)
    mean_a = np.mean([pose_auc(run, THRESHOLDS) for run in errors_a], axis=0)
    mean_b = np.mean([pose_auc(run, THRESHOLDS) for run in errors_b], axis=0)
    print(f"a = {label_a} ({errors_a.shape[0]} run(s)); b = {label_b} ({errors_b.shape[0]} run(s)); {len(keys)} pairs")
    print()
    print("| threshold | AUC a | AUC b | a − b | 95 % interval (paired bootstrap over pairs) |")
    print("|---|---|---|---|---|")
    for t, ma, mb, (d, lo, hi) in zip(THRESHOLDS, mean_a, mean_b, diffs, strict=True):
        print(f"| {t:g} deg | {100 * ma:.2f} | {100 * mb:.2f} | {100 * d:+.2f} | [{100 * lo:+.2f}, {100 * hi:+.2f}] |")


if __name__ == "__main__":
    main()
