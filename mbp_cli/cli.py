"""The ``mbp`` command line: thin typer wrappers over the library functions.

stdout carries data (``--json``); stderr carries messages for people. Every user error ends with a one-line
message and the exit code of :class:`mbp_cli.errors.ExitCode`, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from mbp_cli import __version__
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
        int | None, typer.Option("--camera-id", help="Camera id in a COLMAP file with several cameras.")
    ] = None,
    camera_id0: Annotated[
        int | None, typer.Option("--camera-id0", help="COLMAP camera id of image 0 (overrides --camera-id).")
    ] = None,
    camera_id1: Annotated[
        int | None, typer.Option("--camera-id1", help="COLMAP camera id of image 1 (overrides --camera-id).")
    ] = None,
    matcher: Annotated[str, typer.Option(help="sift (default backend), sift-opencv, sift-kornia or loftr.")] = "sift",
    resize: Annotated[
        int | None, typer.Option(help="Long side in pixels for matching; keypoints map back exactly.")
    ] = None,
    ratio: Annotated[float, typer.Option(help="Lowe ratio-test threshold (SIFT).")] = 0.8,
    num_features: Annotated[int, typer.Option(help="SIFT features per image at most.")] = 8000,
    loftr_weights: Annotated[
        str | None, typer.Option(help="LoFTR checkpoint (else $MBP_LOFTR_WEIGHTS or torch-hub's cache).")
    ] = None,
    threshold: Annotated[float, typer.Option(help="Inlier threshold on the Sampson distance, pixels.")] = 1.0,
    confidence: Annotated[float, typer.Option(help="RANSAC confidence for adaptive termination.")] = 0.9999,
    max_iterations: Annotated[int, typer.Option(help="Most minimal samples.")] = 10_000,
    sampler: Annotated[str, typer.Option(help="prosac (by match quality) or uniform.")] = "prosac",
    scoring: Annotated[str, typer.Option(help="magsac (MAGSAC++) or msac.")] = "magsac",
    local_optimization: Annotated[
        bool, typer.Option("--lo/--no-lo", help="Local optimisation of each new best model.")
    ] = True,
    refinement: Annotated[
        bool, typer.Option("--refine/--no-refine", help="Final Levenberg-Marquardt refinement.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Random seed; equal seeds give equal results.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
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
    from mbp_cli.pipeline import EstimateConfig, create_pair_matcher, estimate_pair, resolve_device
    from mbp_cli.report import check_visualization_path, print_summary, save_visualization, to_json
    from mbp_cli.report import save_matches as write_matches
    from mbp_cli.robust.ransac import RansacOptions

    _silence_opencv_log()
    try:
        try:
            ransac = RansacOptions(
                threshold_px=threshold,
                confidence=confidence,
                max_iterations=max_iterations,
                min_iterations=min(RansacOptions.min_iterations, max_iterations),
                sampler=sampler,
                scoring=scoring,
                local_optimization=local_optimization,
                final_refinement=refinement,
                seed=seed,
            )
            config = EstimateConfig(
                matcher=matcher,
                num_features=num_features,
                ratio=ratio,
                resize=resize,
                loftr_weights=loftr_weights,
                ransac=ransac,
                device=device,
            )
            resolve_device(device)
        except ValueError as exc:
            raise fail(f"{exc}", ExitCode.USAGE) from None
        outputs = [p for p in (save_viz, save_matches) if p is not None]
        # Every input file is protected, the calibration and weights files too (--overwrite included).
        inputs = (image0, image1, *_existing_files(K, K0, K1, loftr_weights))
        for out in outputs:
            check_output_path(out, overwrite, inputs)
        if save_viz is not None:
            check_visualization_path(save_viz)
        if save_viz is not None and save_matches is not None and save_viz.resolve() == save_matches.resolve():
            raise fail("--save-viz and --save-matches name the same file; give two paths", ExitCode.OUTPUT)
        camera0, camera1 = resolve_cameras(K, K0, K1, camera_id, camera_id0=camera_id0, camera_id1=camera_id1)
        try:
            pair_matcher = create_pair_matcher(config)
        except (ValueError, TypeError) as exc:
            raise fail(f"{exc}", ExitCode.USAGE) from None
        result = estimate_pair(image0, image1, camera0, camera1, config, matcher=pair_matcher)
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


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
