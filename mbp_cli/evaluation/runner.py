"""Running an evaluation: every pair through the code path of ``mbp estimate``, results appended as they come.

Per pair: the images are loaded and checked as :func:`mbp_cli.pipeline.estimate_pair` checks them, matched,
and the matches go to :func:`mbp_cli.pipeline.estimate_matches` (what ``mbp estimate`` runs) and to every
baseline of ``--baselines`` through :mod:`mbp_cli.estimators`, on the very same matches. Features are extracted
once per image and kept in a small cache of each worker, so a worker holding a block of a scene's pairs extracts
each image about once.

Robustness: a record is appended to ``pairs.jsonl`` (flushed and fsynced) as soon as its pair is done, so a
killed run loses only the pairs in flight; a run started again skips the pairs already there. Workers are
processes (spawned, one thread each); the parent alone writes the file.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbp_cli import CONVENTION, __version__
from mbp_cli.errors import CalibrationError, ExitCode, ImageError, MbpError, OutputError, TooFewMatchesError
from mbp_cli.evaluation.inputs import EvalInputs, PairTask
from mbp_cli.evaluation.plots import PLOT_FILES
from mbp_cli.geometry.solver import SAMPLE_SIZE
from mbp_cli.metrics import pose_error_deg
from mbp_cli.pipeline import EstimateConfig

PAIRS_FILE = "pairs.jsonl"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
# Features of this many images stay cached in each worker (about 5 MB each at 8000 SIFT features).
IMAGE_CACHE_SIZE = 48
_DIGITS = 10


class EvaluationError(MbpError):
    """The run itself cannot go on (a worker process died or failed); the pairs written so far are kept."""

    exit_code = ExitCode.NO_MODEL

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


@dataclass(frozen=True)
class Baseline:
    """A baseline of ``--baselines``: an estimator of :mod:`mbp_cli.estimators`, at mbp's threshold or its own.

    Attributes:
        name: ``opencv``, ``poselib``, ``pycolmap``, ``pymagsac`` (or ``mbp-msac``).
        threshold_px: its inlier threshold in pixels; None: the threshold of mbp (``--threshold``).
    """

    name: str
    threshold_px: float | None = None

    @property
    def label(self) -> str:
        return self.name if self.threshold_px is None else f"{self.name}@{self.threshold_px:g}"


def parse_baselines(spec: str | None) -> tuple[Baseline, ...]:
    """``opencv,poselib@0.5,pycolmap`` → baselines (``@PX`` sets a baseline's own threshold).

    Raises:
        ValueError: an unknown name, a bad threshold, or a baseline given twice.
    """
    from mbp_cli.estimators import ESTIMATORS

    names = [*(e for e in ESTIMATORS if e != "mbp"), "mbp-msac"]
    out: list[Baseline] = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, thr = item.partition("@")
        name = name.strip().lower()
        if name not in names:
            raise ValueError(f"unknown baseline {name!r} in --baselines; choose among {', '.join(names)}")
        threshold = None
        if thr:
            try:
                threshold = float(thr)
            except ValueError:
                raise ValueError(f"baseline {item!r}: the threshold after @ must be a number of pixels") from None
            if not threshold > 0:
                raise ValueError(f"baseline {item!r}: the threshold must be positive")
        baseline = Baseline(name, threshold)
        if baseline.label in {b.label for b in out}:
            raise ValueError(f"baseline {baseline.label} is given twice in --baselines")
        out.append(baseline)
    return tuple(out)


@dataclass(frozen=True)
class EvalSettings:
    """What determines every pair's result: the options of ``mbp estimate`` and the baselines."""

    config: EstimateConfig = field(default_factory=EstimateConfig)
    baselines: tuple[Baseline, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.config.to_dict(),
            "baselines": [
                {"name": b.name, "threshold_px": b.threshold_px or self.config.ransac.threshold_px}
                for b in self.baselines
            ],
        }

    def check_baselines(self) -> None:
        """Build every baseline once, so that a missing optional package stops the run before any work.

        Raises:
            MissingDependencyError: with the command that installs it.
        """
        from mbp_cli.estimators import create_estimator

        for b in self.baselines:
            create_estimator(b.name, self.config.ransac)


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``i/n`` (0-based i) → (i, n); ``auto`` → torchrun's ``RANK``/``WORLD_SIZE`` (None when unset).

    Raises:
        ValueError: not ``i/n`` with ``0 <= i < n``.
    """
    if spec is None:
        return None
    if spec.strip().lower() == "auto":
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            return None
        spec = f"{rank}/{world}"
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard {spec!r}: expected i/n, e.g. 0/4 (shard 0 of 4), or auto") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {spec!r}: need 0 <= i < n")
    return i, n


def shard_tasks(tasks: Sequence[PairTask], shard: tuple[int, int] | None) -> list[PairTask]:
    """Shard ``i`` of ``n``: the ``i``-th of ``n`` contiguous blocks of the task list (keeps scenes together)."""
    if shard is None:
        return list(tasks)
    i, n = shard
    return list(tasks[len(tasks) * i // n : len(tasks) * (i + 1) // n])


def worker_blocks(tasks: Sequence[PairTask], workers: int) -> list[list[PairTask]]:
    """Split tasks among workers: each scene's pairs in ``workers`` contiguous blocks, one per worker, so that a
    worker sees few images of a scene (features cached per image); blocks of successive scenes rotate."""
    by_scene: dict[str, list[PairTask]] = {}
    for task in tasks:
        by_scene.setdefault(task.scene, []).append(task)
    blocks: list[list[PairTask]] = [[] for _ in range(workers)]
    offset = 0
    for scene_tasks in by_scene.values():
        n = len(scene_tasks)
        parts = [scene_tasks[n * j // workers : n * (j + 1) // workers] for j in range(workers)]
        for part in (p for p in parts if p):
            blocks[offset % workers] += part
            offset += 1
    return blocks


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """torch and OpenCV on one thread in the block (one process per core; results independent of threads)."""
    import cv2
    import torch

    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv_threads)


def _rounded(a: Any) -> list[Any] | None:
    return None if a is None else np.round(np.asarray(a, dtype=np.float64), _DIGITS).tolist()


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


@dataclass
class _CachedImage:
    image: Any = None
    error: MbpError | None = None
    textureless: bool = False
    features: Any = None


def new_record(task: PairTask) -> dict[str, Any]:
    """The ``pairs.jsonl`` record of a pair before it is evaluated (every field present)."""
    return {
        "scene": task.scene,
        "image0": task.image0,
        "image1": task.image1,
        "status": "error",
        "reason": task.error or task.gt_reason,
        "gt": task.R_gt is not None,
        "R": None,
        "t": None,
        "E": None,
        "num_matches": None,
        "num_inliers": None,
        "err_R_deg": None,
        "err_t_deg": None,
        "predicted_error_deg": None,
        "time_ms": None,
        "timings_ms": {},
        "baselines": {},
    }


class PairEvaluator:
    """Evaluates pairs one by one with one matcher, mbp's estimator and the baselines (one per worker).

    Args:
        settings: matcher, estimator options and baselines.
        cache_size: images whose features stay cached.
    """

    def __init__(self, settings: EvalSettings, cache_size: int = IMAGE_CACHE_SIZE) -> None:
        from mbp_cli.estimators import create_estimator
        from mbp_cli.pipeline import create_pair_matcher

        self.settings = settings
        self.matcher = create_pair_matcher(settings.config)
        threshold = settings.config.ransac.threshold_px
        self.baselines = {
            b.label: (create_estimator(b.name, settings.config.ransac), b.threshold_px or threshold)
            for b in settings.baselines
        }
        self.cache_size = cache_size
        self._images: OrderedDict[str, _CachedImage] = OrderedDict()
        self._warm = False

    def _image(self, path: Path, timings: dict[str, float]) -> _CachedImage:
        from mbp_cli.io.images import is_textureless
        from mbp_cli.pipeline import load_image_quietly

        key = str(path)
        entry = self._images.get(key)
        if entry is None:
            start = time.perf_counter()
            entry = _CachedImage()
            try:
                entry.image = load_image_quietly(path)
                entry.textureless = is_textureless(entry.image)
            except MbpError as exc:
                entry.error = exc
            timings["load"] += _ms(start)
            self._images[key] = entry
            while len(self._images) > self.cache_size:
                self._images.popitem(last=False)
        self._images.move_to_end(key)
        if entry.error is not None:
            raise entry.error
        return entry

    def _match(self, entry0: _CachedImage, entry1: _CachedImage, timings: dict[str, float]) -> Any:
        if not hasattr(self.matcher, "extract"):  # LoFTR: matches a pair of images, no per-image features
            start = time.perf_counter()
            matches = self.matcher(entry0.image, entry1.image)
            timings["matching"] = _ms(start)
            return matches
        start = time.perf_counter()
        for entry in (entry0, entry1):
            if entry.features is None:
                entry.features = self.matcher.extract(entry.image)
        timings["features"] = _ms(start)
        start = time.perf_counter()
        matches = self.matcher.match(entry0.features, entry1.features)
        timings["matching"] = _ms(start)
        return matches

    def _warm_up(self, matches: Any, task: PairTask) -> None:
        """One untimed run of every estimator: first calls pay one-off library set-up (kept out of timings)."""
        from mbp_cli.pipeline import estimate_matches

        self._warm = True
        estimate_matches(matches, task.camera0, task.camera1, self.settings.config)
        x0, x1, focal = self._normalized(matches, task)
        for estimator, threshold in self.baselines.values():
            estimator.estimate(x0, x1, focal, threshold, matches.side)

    @staticmethod
    def _normalized(matches: Any, task: PairTask) -> tuple[np.ndarray, np.ndarray, float]:
        from mbp_cli.estimator import mean_focal

        assert task.camera0 is not None and task.camera1 is not None
        return (
            task.camera0.pixels_to_normalized(matches.keypoints0).numpy(),
            task.camera1.pixels_to_normalized(matches.keypoints1).numpy(),
            mean_focal(task.camera0, task.camera1),
        )

    def _errors(self, record: dict[str, Any], R: Any, t: Any, task: PairTask) -> None:
        if task.R_gt is not None and task.t_gt is not None:
            record["err_R_deg"], record["err_t_deg"] = pose_error_deg(R, t, task.R_gt, task.t_gt)

    def _run_baselines(self, record: dict[str, Any], matches: Any, task: PairTask) -> None:
        if not self.baselines:
            return
        enough = len(matches) >= SAMPLE_SIZE
        inputs = self._normalized(matches, task) if enough else None
        for label, (estimator, threshold) in self.baselines.items():
            row: dict[str, Any] = {"status": "no_model", "R": None, "t": None, "num_inliers": 0, "time_ms": 0.0}
            if inputs is not None:
                x0, x1, focal = inputs
                out = estimator.estimate(x0, x1, focal, threshold, matches.side)
                row.update(
                    status=out.status,
                    R=_rounded(out.R),
                    t=_rounded(out.t),
                    num_inliers=int(out.inliers.sum()),
                    time_ms=out.time_ms,
                )
                R, t = out.R, out.t
            else:
                R = t = None
            row["err_R_deg"] = row["err_t_deg"] = None
            self._errors(row, R, t, task)
            record["baselines"][label] = row
            record["timings_ms"][label] = row["time_ms"]

    def evaluate(self, task: PairTask) -> dict[str, Any]:
        """The record of one pair.

        A problem of the pair (its images or its calibration) goes into ``status``/``reason``, and so does an
        unexpected exception (a bug must not stop a long run). A problem of the whole run (e.g. missing weights,
        :class:`WeightsError`) raises: it would fail every pair.
        """
        record = new_record(task)
        if task.error is not None:
            return record
        try:
            self._evaluate(task, record)
        except (ImageError, CalibrationError) as exc:
            record.update(status="error", reason=exc.message)
        except MbpError:
            raise
        except Exception as exc:  # a bug must not stop a long run: the pair records it, the others go on
            last = traceback.extract_tb(exc.__traceback__)[-1]
            record.update(
                status="error",
                reason=f"internal error: {type(exc).__name__}: {exc} ({Path(last.filename).name}:{last.lineno})",
            )
        if record["status"] == "error":
            record.update(R=None, t=None, E=None, err_R_deg=None, err_t_deg=None, time_ms=None, baselines={})
        return record

    def _evaluate(self, task: PairTask, record: dict[str, Any]) -> None:
        from mbp_cli.io.images import check_pair_distinct
        from mbp_cli.pipeline import check_image, estimate_matches

        assert task.path0 is not None and task.path1 is not None
        assert task.camera0 is not None and task.camera1 is not None
        start = time.perf_counter()
        timings = {"load": 0.0}
        entry0 = self._image(task.path0, timings)
        entry1 = self._image(task.path1, timings)
        check_pair_distinct(entry0.image, entry1.image, task.path0, task.path1)
        check_image(entry0.image, task.camera0, "image 0", task.path0, entry0.textureless)
        check_image(entry1.image, task.camera1, "image 1", task.path1, entry1.textureless)
        matches = self._match(entry0, entry1, timings)
        record["timings_ms"] = timings
        record["num_matches"] = len(matches)
        if not self._warm and len(matches) >= SAMPLE_SIZE:
            self._warm_up(matches, task)
        try:
            pose, info, timings["estimation"] = estimate_matches(
                matches, task.camera0, task.camera1, self.settings.config, task.image0, task.image1
            )
        except TooFewMatchesError as exc:
            record.update(status="no_model", reason=exc.message, num_inliers=0, time_ms=0.0)
            timings["estimation"] = 0.0
            pose = None
        else:
            record.update(status=info["status"], num_inliers=info["num_inliers"], time_ms=timings["estimation"])
            if info.get("sigma_deg") is not None:  # the final fit's predicted rms errors (rotation, translation)
                record["predicted_error_deg"] = [round(float(v), 6) for v in info["sigma_deg"]]
            if pose is not None:
                record.update(R=_rounded(pose.R), t=_rounded(pose.t), E=_rounded(pose.E))
        self._errors(record, None if pose is None else pose.R, None if pose is None else pose.t, task)
        self._run_baselines(record, matches, task)
        timings["total"] = _ms(start)


def _silence_opencv() -> None:
    if "OPENCV_LOG_LEVEL" not in os.environ:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _worker_main(worker: int, tasks: list[PairTask], settings: EvalSettings, results: Any) -> None:
    """Body of a worker process: evaluate ``tasks`` and put ``("record", dict)`` per pair, then ``("done",)``."""
    try:
        _silence_opencv()
        with single_threaded():
            evaluator = PairEvaluator(settings)
            for task in tasks:
                results.put(("record", evaluator.evaluate(task)))
        results.put(("done", worker))
    except MbpError as exc:
        results.put(("failed", worker, exc.message, int(exc.exit_code)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops the run
        results.put(("failed", worker, f"{type(exc).__name__}: {exc}", int(ExitCode.NO_MODEL)))


def _records_in_processes(
    tasks: list[PairTask], settings: EvalSettings, workers: int, emit: Callable[[dict[str, Any]], None]
) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    blocks = [b for b in worker_blocks(tasks, workers) if b]
    processes = [
        context.Process(target=_worker_main, args=(w, block, settings, results), daemon=True)
        for w, block in enumerate(blocks)
    ]
    for p in processes:
        p.start()
    pending = set(range(len(processes)))
    finished = False
    try:
        while pending:
            try:
                message = results.get(timeout=1.0)
            except queue.Empty:
                dead = [w for w in pending if processes[w].exitcode not in (None, 0)]
                if dead:
                    w = dead[0]
                    raise EvaluationError(
                        f"worker {w} stopped with exit code {processes[w].exitcode} (out of memory?); the pairs "
                        "written so far are kept: run the same command again to go on"
                    ) from None
                continue
            if message[0] == "record":
                emit(message[1])
            elif message[0] == "done":
                pending.discard(message[1])
            else:
                raise EvaluationError(message[2], ExitCode(message[3]))
        finished = True
    finally:
        for p in processes:
            if finished:  # done: let it exit by itself (freeing its caches takes a moment)
                p.join(timeout=60)
            if p.is_alive():  # stopped early: SIGKILL, as its state is all in the parent (and no library prints)
                p.kill()
            p.join(timeout=10)
        results.close()


def evaluate_tasks(
    tasks: list[PairTask],
    settings: EvalSettings,
    workers: int = 1,
    emit: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate pairs, in this process (``workers=1``) or in ``workers`` processes.

    Args:
        tasks: the pairs.
        settings: matcher, estimator options and baselines.
        workers: 1 runs here; more spawn that many single-threaded processes.
        emit: called with each record as soon as it is done.

    Returns:
        The records, in task order with one worker, else in completion order.

    Raises:
        EvaluationError: a worker process died.
    """
    records: list[dict[str, Any]] = []

    def collect(record: dict[str, Any]) -> None:
        records.append(record)
        if emit is not None:
            emit(record)

    ready = [t for t in tasks if t.error is None]
    if workers <= 1 or len(ready) <= 1:  # in task order
        with single_threaded():
            evaluator = PairEvaluator(settings) if ready else None
            for task in tasks:
                collect(new_record(task) if evaluator is None else evaluator.evaluate(task))
    else:  # the pairs that need no work first, then as the workers finish them
        for task in tasks:
            if task.error is not None:
                collect(new_record(task))
        _records_in_processes(ready, settings, workers, collect)
    return records


# ---------------------------------------------------------------------------------------------------------------
# The output folder


def read_records(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a ``pairs.jsonl``.

    A last line without its newline is what a killed run leaves: it is dropped (and cut from the file with
    ``repair``). A broken line elsewhere is an error: the file is not one this program wrote.

    Raises:
        OutputError: a malformed line before the last one.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if repair and len(complete) < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(len(complete))
    records = []
    for lineno, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["scene"], record["image0"], record["image1"], record["status"]  # noqa: B018 - required keys
        except (json.JSONDecodeError, KeyError, TypeError):
            raise OutputError(
                f"{path} line {lineno} is not a pair record of mbp eval; use another --out or --overwrite"
            ) from None
        records.append(record)
    return records


def record_key(record: dict[str, Any]) -> tuple[str, str, str]:
    return (record["scene"], record["image0"], record["image1"])


class RecordWriter:
    """Appends records to ``pairs.jsonl``, each line flushed and fsynced before the next."""

    def __init__(self, path: Path) -> None:
        try:
            self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, allow_nan=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def prepare_output(out: Path, run_info: dict[str, Any], overwrite: bool) -> list[dict[str, Any]]:
    """Create ``out``, check it belongs to this configuration, and return the records already there.

    Raises:
        OutputError: ``out`` is a file or cannot be created, or holds a run of another configuration or
            another shard (without ``overwrite``).
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK):
        raise OutputError(f"output folder {out} is not writable; choose another --out")
    pairs, run_file = out / PAIRS_FILE, out / RUN_FILE
    if overwrite:
        for name in (PAIRS_FILE, RUN_FILE, SUMMARY_FILE, REPORT_FILE, *PLOT_FILES):
            (out / name).unlink(missing_ok=True)
        return []
    if not pairs.exists():
        return []
    previous = None
    with contextlib.suppress(OSError, json.JSONDecodeError):
        previous = json.loads(run_file.read_text(encoding="utf-8"))
    if not isinstance(previous, dict):
        raise OutputError(f"{pairs} exists but {run_file.name} is missing; pass --overwrite or choose another --out")
    for key in ("settings", "shard"):
        # compared as stored: JSON turns the tuples of the options (e.g. basin_hops) into lists
        if previous.get(key) != json.loads(json.dumps(run_info[key])):
            what = "configuration" if key == "settings" else "shard"
            raise OutputError(
                f"{out} holds results of another {what}; pass --overwrite to replace them or choose another --out"
            )
    run_info["sessions"] = previous.get("sessions", [])
    return read_records(pairs, repair=True)


def shard_folder(out: Path, shard: tuple[int, int] | None) -> Path:
    """Where a run writes: ``out`` itself, or ``out/shard-i-of-n`` for a shard."""
    return out if shard is None else out / f"shard-{shard[0]}-of-{shard[1]}"


def write_results(
    out: Path, records: list[dict[str, Any]], run_info: dict[str, Any], console: Any = None, plots: bool = True
) -> dict[str, Any]:
    """``summary.json``, ``report.md`` and (with ``plots``) the PNGs from the records, each written atomically."""
    from mbp_cli.evaluation.plots import write_plots
    from mbp_cli.evaluation.report import markdown_report
    from mbp_cli.evaluation.summary import summarize
    from mbp_cli.io.output import atomic_write_text

    keys = ("mbp_version", "command", "input", "shard", "settings", "inputs", "sessions", "merge")
    summary = summarize(records) | {key: run_info[key] for key in keys if key in run_info}
    summary["convention"] = CONVENTION
    summary["plots"], plot_note = write_plots(summary, records, out) if plots else ([], None)
    if plot_note and console is not None:
        console.print(f"[yellow]warning:[/] {plot_note}")
    summary["plot_note"] = plot_note
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / REPORT_FILE, markdown_report(summary, records))
    return summary


def run_info_for(
    inputs: EvalInputs, settings: EvalSettings, shard: tuple[int, int] | None, input_path: str, command: str
) -> dict[str, Any]:
    return {
        "mbp_version": __version__,
        "command": command,
        "input": input_path,
        "shard": None if shard is None else list(shard),
        "settings": settings.to_dict(),
        "inputs": {
            "kind": inputs.kind,
            "pairs": len(inputs.tasks),
            "duplicates": inputs.duplicates,
            "scenes": inputs.sources,
        },
        "sessions": [],
    }


def _progress(console: Any, total: int, done: int) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]eval[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("pairs"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[last]}", style="dim"),
        console=console,
        disable=console is None or not console.is_terminal,
        transient=False,
    )
    task_id = progress.add_task("eval", total=total, completed=done, last="")
    return progress, task_id


def run_evaluation(
    inputs: EvalInputs,
    out: str | os.PathLike[str],
    settings: EvalSettings = EvalSettings(),
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    input_path: str = "",
    command: str = "",
    console: Any = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate every pair of ``inputs`` (of one shard) into the folder ``out``, resuming what is there.

    Args:
        inputs: the pairs (:func:`mbp_cli.evaluation.inputs.collect_inputs`).
        out: output folder (``out/shard-i-of-n`` with ``shard``).
        settings: matcher, estimator options and baselines.
        workers: worker processes (1: this process).
        shard: ``(i, n)``: evaluate only the i-th of n contiguous blocks of pairs.
        overwrite: replace earlier results instead of resuming.
        input_path, command: recorded in the report.
        console: rich console for the progress bar (None: silent).
        plots: write the PNG plots (matplotlib).

    Returns:
        The summary (also in ``summary.json``).

    Raises:
        OutputError: see :func:`prepare_output`. MissingDependencyError: a baseline's package is missing.
        EvaluationError: a worker died (the pairs written so far are kept).
    """
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    settings.check_baselines()
    folder = shard_folder(Path(out), shard)
    run_info = run_info_for(inputs, settings, shard, input_path, command)
    tasks = shard_tasks(inputs.tasks, shard)
    run_info["inputs"]["shard_pairs"] = len(tasks)
    existing = prepare_output(folder, run_info, overwrite)
    from mbp_cli.io.output import atomic_write_text

    atomic_write_text(folder / RUN_FILE, json.dumps(run_info, indent=1) + "\n")
    keys = {t.key for t in tasks}
    done = {record_key(r): r for r in existing if record_key(r) in keys}
    todo = [t for t in tasks if t.key not in done]
    new: list[dict[str, Any]] = []
    writer = RecordWriter(folder / PAIRS_FILE)
    progress, task_id = _progress(console, len(tasks), len(done))
    start = time.perf_counter()

    log_every = max(1, len(todo) // 20)  # without a terminal (a log file): a line every 5 %

    def emit(record: dict[str, Any]) -> None:
        writer.write(record)
        new.append(record)
        progress.update(task_id, advance=1, last=f"{record['scene']} {record['status']}")
        if progress.disable and console is not None and (len(new) % log_every == 0 or len(new) == len(todo)):
            elapsed = time.perf_counter() - start
            rate = len(new) / elapsed
            eta = (len(todo) - len(new)) / rate if rate > 0 else 0.0
            console.print(
                f"eval: {len(done) + len(new)}/{len(tasks)} pairs, {rate:.2f} pairs/s, "
                f"elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min"
            )

    try:
        with progress:
            evaluate_tasks(todo, settings, workers, emit)
    finally:
        writer.close()
        run_info["sessions"].append(
            {"pairs": len(new), "wall_s": round(time.perf_counter() - start, 3), "workers": workers}
        )
        atomic_write_text(folder / RUN_FILE, json.dumps(run_info, indent=1) + "\n")
    for record in new:
        done.setdefault(record_key(record), record)
    records = [done[t.key] for t in tasks if t.key in done]
    return write_results(folder, records, run_info, console, plots)


def merge_runs(
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    overwrite: bool = False,
    console: Any = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Merge the outputs of shards (or of any runs of one configuration) into one evaluation in ``out``.

    Args:
        sources: run folders (each with ``run.json`` and ``pairs.jsonl``); empty: ``out/shard-*-of-*``.
        out: folder of the merged ``pairs.jsonl``, summary, report and plots.
        overwrite: replace a merged result already in ``out``.
        console: rich console for warnings (None: silent).
        plots: write the PNG plots (matplotlib).

    Returns:
        The merged summary; ``merge`` in it lists the shards found, missing and incomplete.

    Raises:
        OutputError: no source, a source without results, sources of different configurations, or results
            already in ``out`` without ``overwrite``.
    """
    from mbp_cli.io.output import atomic_write_text

    out = Path(out)
    folders = [Path(s) for s in sources] or sorted(out.glob("shard-*-of-*"))
    if not folders:
        raise OutputError(f"no shard folders (shard-i-of-n) in {out}; give the folders to merge")
    infos = []
    for folder in folders:
        try:
            infos.append(json.loads((folder / RUN_FILE).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            raise OutputError(f"{folder} holds no mbp eval results ({RUN_FILE} missing or unreadable)") from None
    first = infos[0]
    for folder, info in zip(folders, infos, strict=True):
        if info.get("settings") != first.get("settings"):
            raise OutputError(f"{folder} was evaluated with another configuration than {folders[0]}; cannot merge")
    if (out / PAIRS_FILE).exists() and not overwrite and out.resolve() not in {f.resolve() for f in folders}:
        raise OutputError(f"{out / PAIRS_FILE} already exists; pass --overwrite to replace it")
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    shards = []
    for folder, info in zip(folders, infos, strict=True):
        records = read_records(folder / PAIRS_FILE)
        for record in records:
            merged.setdefault(record_key(record), record)
        expected = info.get("inputs", {}).get("shard_pairs")
        shards.append(
            {"folder": str(folder), "shard": info.get("shard"), "pairs": len(records), "expected_pairs": expected}
        )
    counts = {tuple(s["shard"])[1] for s in shards if s["shard"]}
    present = {tuple(s["shard"])[0] for s in shards if s["shard"]}
    missing = [f"{i}/{n}" for n in counts for i in range(n) if i not in present]
    incomplete = [s for s in shards if s["expected_pairs"] is not None and s["pairs"] < s["expected_pairs"]]
    run_info = dict(first)
    run_info.update(
        shard=None,
        sessions=[dict(s, shard=info.get("shard")) for info in infos for s in info.get("sessions", [])],
        merge={"sources": shards, "missing_shards": missing, "incomplete": [s["folder"] for s in incomplete]},
    )
    run_info["inputs"] = dict(first.get("inputs", {}), shard_pairs=len(merged))
    out.mkdir(parents=True, exist_ok=True)
    records = list(merged.values())
    atomic_write_text(out / PAIRS_FILE, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
    atomic_write_text(out / RUN_FILE, json.dumps(run_info, indent=1) + "\n")
    return write_results(out, records, run_info, console, plots)


__all__ = [
    "Baseline",
    "EvalSettings",
    "EvaluationError",
    "PairEvaluator",
    "evaluate_tasks",
    "merge_runs",
    "parse_baselines",
    "parse_shard",
    "read_records",
    "run_evaluation",
    "shard_folder",
    "shard_tasks",
    "worker_blocks",
]
