"""The ``mbp`` command line: thin typer wrappers over the library functions.

stdout carries data (``--json``); stderr carries messages for people. Every user error ends with a one-line
message and the exit code of :class:`mbp_cli.errors.ExitCode`, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from mbp_cli import __version__
from mbp_cli.cli_options import EstimateOptions, with_estimate_options
from mbp_cli.errors import ExitCode, MbpError

app = typer.Typer(
    name="mbp",
    help="Relative pose of two calibrated images with a learned robust estimator (x1 = R x0 + t).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mbp {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """mbp: relative pose estimation for calibrated image pairs."""


def _silence_opencv_log() -> None:
    """Keep OpenCV's own log lines (e.g. ``[ WARN:0@1.2] ... PNG input buffer is incomplete`` for a truncated
    image, ``[ERROR:0@...]`` for a truncated TIFF/BMP) off stderr: mbp reports those problems itself, in one line.
    A user who sets ``OPENCV_LOG_LEVEL`` gets OpenCV's logging as asked."""
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _existing_files(*specs: str | None) -> list[Path]:
    """The specs that name existing files (calibration and weights options also take inline values)."""
    files = []
    for spec in specs:
        if spec is None:
            continue
        try:
            path = Path(spec.strip()).expanduser()
            if path.is_file():
                files.append(path)
        except (OSError, ValueError, RuntimeError):  # a name too long, a NUL byte, an unknown ~user
            continue
    return files


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(int(code))


@app.command()
@with_estimate_options
def estimate(
    image0: Annotated[str, typer.Argument(help="Image 0 (the pose maps camera 0 to camera 1).", show_default=False)],
    image1: Annotated[str, typer.Argument(help="Image 1.", show_default=False)],
    K: Annotated[
        str | None,
        typer.Option(
            "--K",
            help="Calibration of both images: 3x3 text file, 'fx,fy,cx,cy', OpenCV YAML/XML, or COLMAP cameras.txt/.bin.",
        ),
    ] = None,
    K0: Annotated[str | None, typer.Option("--K0", help="Calibration of image 0 (with --K1).")] = None,
    K1: Annotated[str | None, typer.Option("--K1", help="Calibration of image 1 (with --K0).")] = None,
    camera_id: Annotated[
        int | None,
        typer.Option(
            "--camera-id",
            help="Camera id in a COLMAP file with several cameras (default: each image's camera in the model's "
            "images.txt/.bin, found by file name).",
        ),
    ] = None,
    camera_id0: Annotated[
        int | None, typer.Option("--camera-id0", help="COLMAP camera id of image 0 (overrides --camera-id).")
    ] = None,
    camera_id1: Annotated[
        int | None, typer.Option("--camera-id1", help="COLMAP camera id of image 1 (overrides --camera-id).")
    ] = None,
    estimate_options: EstimateOptions = EstimateOptions(),
    json_output: Annotated[bool, typer.Option("--json", help="Print the full result as JSON on stdout.")] = False,
    save_viz: Annotated[
        Path | None, typer.Option(help="Draw inliers (green) and outliers (red) into this PNG/JPG.")
    ] = None,
    save_matches: Annotated[
        Path | None, typer.Option(help="Write the matches, side information and inlier flags (.npz or .csv).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Allow replacing existing output files.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> None:
    """Estimate the relative pose of IMAGE0 and IMAGE1 (x1 = R x0 + t, |t| = 1)."""
    # Imports here keep `mbp --help` and `mbp --version` fast.
    from mbp_cli.io.calibration import resolve_cameras
    from mbp_cli.io.output import check_output_path
    from mbp_cli.pipeline import create_network, create_pair_matcher, estimate_pair
    from mbp_cli.report import check_visualization_path, print_summary, save_visualization, to_json
    from mbp_cli.report import save_matches as write_matches

    _silence_opencv_log()
    try:
        try:
            config = estimate_options.to_config()
        except ValueError as exc:
            raise fail(f"{exc}", ExitCode.USAGE) from None
        outputs = [p for p in (save_viz, save_matches) if p is not None]
        # Every input file is protected, the calibration and weights files too (--overwrite included).
        inputs = (image0, image1, *_existing_files(K, K0, K1, config.loftr_weights, config.weights))
        for out in outputs:
            check_output_path(out, overwrite, inputs)
        if save_viz is not None:
            check_visualization_path(save_viz)
        if save_viz is not None and save_matches is not None and save_viz.resolve() == save_matches.resolve():
            raise fail("--save-viz and --save-matches name the same file; give two paths", ExitCode.OUTPUT)
        camera0, camera1 = resolve_cameras(
            K, K0, K1, camera_id, camera_id0=camera_id0, camera_id1=camera_id1, image0=image0, image1=image1
        )
        try:
            pair_matcher = create_pair_matcher(config)
            network = create_network(config)
        except (ValueError, TypeError) as exc:
            raise fail(f"{exc}", ExitCode.USAGE) from None
        result = estimate_pair(image0, image1, camera0, camera1, config, matcher=pair_matcher, network=network)
        if save_viz is not None:
            save_visualization(result, save_viz)
        if save_matches is not None:
            write_matches(result, save_matches)
    except MbpError as exc:
        raise fail(exc.message, exc.exit_code) from None
    if not quiet:
        print_summary(result, stderr)
    if json_output:
        sys.stdout.write(to_json(result, config) + "\n")
    if result.status == "no_model":
        raise typer.Exit(int(ExitCode.NO_MODEL))


def _print_eval_summary(summary: dict, folder: Path) -> None:
    """The headline figures of an evaluation on stderr."""
    from rich.table import Table

    pairs = summary["pairs"]
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("method", "pairs", "AUC@5", "AUC@10", "AUC@20", "failures", "median ms"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, figures in summary["methods"].items():
        m = figures["overall"]
        ms = "-" if m["median_time_ms"] is None else f"{m['median_time_ms']:.1f}"
        table.add_row(method, str(m["pairs"]), *(f"{100 * v:.1f}" for v in m["auc"]), str(m["failures"]), ms)
    stderr.print(table)
    stderr.print(
        f"{pairs['total']} pairs: {pairs['scored']} scored, {pairs['no_ground_truth']} without ground truth, "
        f"{pairs['errors']} errors (see the report).  Results: {escape(str(folder))}/report.md, pairs.jsonl, "
        "summary.json"
    )


@app.command("eval")
@with_estimate_options
def evaluate(
    input_path: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="A COLMAP scene folder (images/, sparse/ text or .bin, optional pairs.txt), a folder of scenes, "
            "a pairs file 'name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)' (ScanNet/MegaDepth-1500 style), or a "
            "folder of images (with --K; estimated only).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder (created); a run resumes what it holds.")],
    images: Annotated[
        Path | None, typer.Option(help="Image folder of a pairs file (default: the pairs file's folder).")
    ] = None,
    K: Annotated[
        str | None,
        typer.Option("--K", help="Calibration of a folder of images, and of pairs-file lines without K0/K1."),
    ] = None,
    camera_id: Annotated[int | None, typer.Option("--camera-id", help="Camera id in a COLMAP --K file.")] = None,
    frame_gap: Annotated[
        int,
        typer.Option(help="Without pairs.txt and 3D point tracks: pair images at most this far apart in name order."),
    ] = 2,
    min_covisible: Annotated[
        int,
        typer.Option(help="Without pairs.txt, with 3D point tracks: pair images sharing at least this many points."),
    ] = 100,
    max_pairs: Annotated[int, typer.Option(help="Keep at most this many pairs per scene, evenly spread (0: all).")] = 0,
    baselines: Annotated[
        str,
        typer.Option(
            help="Also run these on the same matches: opencv,poselib,pycolmap,pymagsac (NAME@PX: own threshold)."
        ),
    ] = "",
    workers: Annotated[int, typer.Option(help="Worker processes, one thread each (1: this process).")] = 1,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/n: evaluate the i-th of n blocks of pairs into OUT/shard-i-of-n (auto: torchrun's RANK/"
            "WORLD_SIZE); combine with mbp eval-merge."
        ),
    ] = None,
    estimate_options: EstimateOptions = EstimateOptions(),
    json_output: Annotated[bool, typer.Option("--json", help="Print summary.json on stdout.")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write the PNG plots (matplotlib).")] = True,
    overwrite: Annotated[
        bool, typer.Option(help="Start afresh: replace the results in OUT instead of resuming.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary on stderr.")] = False,
) -> None:
    """Evaluate pose estimation on posed pairs: AUC@5/10/20 per scene and overall, with optional baselines.

    Pairs of a scene are exactly those of its pairs.txt. Without pairs.txt: images sharing at least --min-covisible 3D points when the model has point tracks, else images at most --frame-gap apart in name order; --max-pairs caps either.

    Writes OUT/pairs.jsonl (one line per pair, appended as it is done: a killed run resumes where it stopped), summary.json, report.md and PNG plots.
    """
    import shlex

    from mbp_cli.estimators import MissingDependencyError
    from mbp_cli.evaluation import EvalSettings, PairRule, collect_inputs, parse_baselines, parse_shard, run_evaluation
    from mbp_cli.io.calibration import load_camera
    from mbp_cli.pipeline import create_network, create_pair_matcher

    _silence_opencv_log()
    try:
        try:
            config = estimate_options.to_config()
            rule = PairRule(frame_gap=frame_gap, min_covisible=min_covisible, max_pairs=max_pairs)
            settings = EvalSettings(config, parse_baselines(baselines))
            shard_spec = parse_shard(shard)
            if workers < 1:
                raise ValueError(f"--workers must be at least 1, got {workers}")
            create_pair_matcher(config)
            create_network(config)  # missing weights: one error before any work, not one per pair
        except (ValueError, TypeError) as exc:
            raise fail(f"{exc}", ExitCode.USAGE) from None
        calibration = None if K is None else load_camera(K, camera_id)
        inputs = collect_inputs(input_path, rule, images, calibration)
        summary = run_evaluation(
            inputs,
            out,
            settings,
            workers=workers,
            shard=shard_spec,
            overwrite=overwrite,
            input_path=input_path,
            command="mbp " + shlex.join(sys.argv[1:]),
            console=None if quiet else stderr,
            plots=plots,
        )
    except MissingDependencyError as exc:
        raise fail(f"{exc.message} (needed by --baselines)", ExitCode.USAGE) from None
    except MbpError as exc:
        raise fail(exc.message, exc.exit_code) from None
    except KeyboardInterrupt:
        stderr.print("interrupted: the pairs done so far are in pairs.jsonl; run the same command again to go on")
        raise typer.Exit(130) from None
    if not quiet:
        from mbp_cli.evaluation.runner import shard_folder

        _print_eval_summary(summary, shard_folder(out, shard_spec))
    if json_output:
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")


@app.command("eval-merge")
def evaluate_merge(
    out: Annotated[Path, typer.Argument(help="Folder of the merged results.", show_default=False)],
    sources: Annotated[
        list[Path] | None,
        typer.Argument(help="Result folders to merge (default: OUT/shard-*-of-*).", show_default=False),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print summary.json on stdout.")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write the PNG plots (matplotlib).")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace merged results already in OUT.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> None:
    """Merge the shards of an evaluation (mbp eval --shard i/n) into one pairs.jsonl, summary, report and plots."""
    from mbp_cli.evaluation import merge_runs

    try:
        summary = merge_runs(sources or [], out, overwrite=overwrite, console=None if quiet else stderr, plots=plots)
    except MbpError as exc:
        raise fail(exc.message, exc.exit_code) from None
    if not quiet:
        merge = summary["merge"]
        if merge["missing_shards"] or merge["incomplete"]:
            stderr.print(
                f"[yellow]warning:[/] missing shards: {', '.join(merge['missing_shards']) or 'none'}; "
                f"incomplete: {', '.join(escape(f) for f in merge['incomplete']) or 'none'}"
            )
        _print_eval_summary(summary, out)
    if json_output:
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")


# `mbp train` and `mbp finetune` live in their own module, which registers them on `app`.
import mbp_cli.cli_train  # noqa: E402, F401


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
