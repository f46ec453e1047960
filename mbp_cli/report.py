"""Reporting a pair result: the JSON document, the human summary, the match visualisation and match files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mbp_cli import CONVENTION, __version__
from mbp_cli.errors import OutputError
from mbp_cli.io.images import load_image
from mbp_cli.io.output import atomic_write_bytes, atomic_write_text
from mbp_cli.pipeline import EstimateConfig, PairResult

# Predicted rms error above which the summary warns: the matches do not determine the pose to this level.
UNCERTAIN_DEG = 1.0


def _rounded(a: np.ndarray, digits: int = 10) -> list[Any]:
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


def _predicted_error(sigma: tuple[float, float] | None) -> dict[str, float] | None:
    """The final fit's predicted root-mean-square errors (``info["sigma_deg"]``) as ``{"rotation", "translation"}``."""
    if sigma is None:
        return None
    return {"rotation": round(float(sigma[0]), 4), "translation": round(float(sigma[1]), 4)}


def result_to_dict(result: PairResult, config: EstimateConfig) -> dict[str, Any]:
    """The ``--json`` document: pose, matrices, convention, counts, timings, status and configuration."""
    info = result.info
    pose = result.pose
    doc: dict[str, Any] = {
        "mbp_version": __version__,
        "status": result.status,
        "convention": CONVENTION,
        "image0": result.image0,
        "image1": result.image1,
        "R": _rounded(pose.R) if pose else None,
        "t": _rounded(pose.t) if pose else None,
        "E": _rounded(pose.E) if pose else None,
        "F": _rounded(pose.F(result.camera0, result.camera1)) if pose else None,
        "num_matches": len(result.matches),
        "num_inliers": info["num_inliers"],
        "inlier_ratio": round(float(info["inlier_ratio"]), 6),
        "inliers": np.flatnonzero(info["inliers"]).tolist(),
        "median_parallax_deg": round(float(info["median_parallax_deg"]), 4),
        "predicted_error_deg": _predicted_error(info.get("sigma_deg")),
        "iterations": info["iterations"],
        "models_scored": info["models"],
        "local_optimizations": info["lo_runs"],
        "timings_ms": {k: round(v, 2) for k, v in {**result.timings_ms, **info["timings_ms"]}.items()},
        "camera0": result.camera0.to_dict(),
        "camera1": result.camera1.to_dict(),
        "matcher": result.matches.matcher,
        "network": info.get("network"),
        "config": config.to_dict(),
    }
    return doc


def to_json(result: PairResult, config: EstimateConfig) -> str:
    return json.dumps(result_to_dict(result, config), indent=2)


def print_summary(result: PairResult, console: Console) -> None:
    """A readable summary for people (stderr)."""
    info = result.info
    status_style = {"ok": "green", "degenerate": "yellow", "no_model": "red"}[result.status]
    console.print(
        f"[bold]{escape(result.image0)}[/] -> [bold]{escape(result.image1)}[/]   status: [{status_style}]{result.status}[/]"
    )
    console.print(
        f"matches {len(result.matches)}  inliers {info['num_inliers']} ({100 * info['inlier_ratio']:.1f} %)  "
        f"samples {info['iterations']}  median parallax {info['median_parallax_deg']:.2f} deg   [dim]{escape(result.matches.matcher)}"
        f"  network {escape(str(info.get('network') or 'none'))}[/]"
    )
    if result.pose is not None:
        R, t = result.pose.R, result.pose.t
        angle = np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1)))
        table = Table(show_header=False, box=None, pad_edge=False)
        for i in range(3):
            table.add_row(
                "R =" if i == 1 else "", *[f"{v: .6f}" for v in R[i]], "  t =" if i == 1 else "", f"{t[i]: .6f}"
            )
        console.print(table)
        console.print(f"rotation {angle:.3f} deg   [dim]{escape(CONVENTION)}[/]")
        sigma = info.get("sigma_deg")
        if sigma is not None:
            # what the matches' own noise leaves open; large along a narrow view's rotation-translation ambiguity
            console.print(
                f"predicted error (rms, from the fit): rotation {sigma[0]:.3f} deg, translation direction {sigma[1]:.3f} deg"
            )
    if result.status == "degenerate":
        console.print("[yellow]warning:[/] the translation is barely observable (little parallax or few inliers)")
    elif result.pose is not None and info.get("sigma_deg") is not None and max(info["sigma_deg"]) > UNCERTAIN_DEG:
        console.print(
            f"[yellow]warning:[/] the matches leave the pose uncertain by more than {UNCERTAIN_DEG:g} deg "
            "(a narrow field of view or few, poorly spread matches)"
        )
    times = {**result.timings_ms, **info["timings_ms"]}
    console.print("[dim]time ms: " + "  ".join(f"{k} {v:.1f}" for k, v in times.items()) + "[/]")


def render_matches(result: PairResult, max_outliers: int = 300) -> np.ndarray:
    """Side-by-side colour image of the pair with inliers (green) and outliers (red) drawn as lines."""
    img0 = load_image(result.image0, color=True)
    img1 = load_image(result.image1, color=True)
    h = max(img0.shape[0], img1.shape[0])
    canvas = np.zeros((h, img0.shape[1] + img1.shape[1], 3), np.uint8)
    canvas[: img0.shape[0], : img0.shape[1]] = img0
    canvas[: img1.shape[0], img0.shape[1] :] = img1
    canvas = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
    k0 = result.matches.keypoints0.numpy()
    k1 = result.matches.keypoints1.numpy() + np.array([img0.shape[1], 0.0])
    inliers = np.asarray(result.info["inliers"], bool)
    outliers = np.flatnonzero(~inliers)
    if len(outliers) > max_outliers:
        outliers = np.random.default_rng(0).choice(outliers, max_outliers, replace=False)
    thickness = max(1, round(h / 800))
    for idx, colour in ((outliers, (0, 0, 255)), (np.flatnonzero(inliers), (0, 200, 0))):
        for i in idx:
            p = tuple(int(round(v)) for v in k0[i])
            q = tuple(int(round(v)) for v in k1[i])
            cv2.line(canvas, p, q, colour, thickness, cv2.LINE_AA)
            cv2.circle(canvas, p, 2 * thickness, colour, -1, cv2.LINE_AA)
            cv2.circle(canvas, q, 2 * thickness, colour, -1, cv2.LINE_AA)
    return canvas


def _visualization_ext(path: str | Path) -> str:
    return Path(path).suffix.lower() or ".png"


def check_visualization_path(path: str | Path) -> None:
    """Refuse, before any work, a --save-viz path whose extension OpenCV cannot encode (e.g. ``.txt``)."""
    ext = _visualization_ext(path)
    if not cv2.haveImageWriter(f"x{ext}"):
        raise OutputError(f"cannot write {path}: no image encoder for {ext}; use a .png or .jpg path for --save-viz")


def save_visualization(result: PairResult, path: str | Path) -> None:
    """Write :func:`render_matches` as an image (format from the extension), atomically."""
    ext = _visualization_ext(path)
    try:
        ok, encoded = cv2.imencode(ext, render_matches(result))
    except cv2.error:  # OpenCV raises, rather than returning False, for an extension it has no encoder for
        ok = False
    if not ok:
        raise OutputError(f"cannot encode an image as {ext}; use a .png or .jpg path for --save-viz")
    atomic_write_bytes(path, encoded.tobytes())


def save_matches(result: PairResult, path: str | Path) -> None:
    """Write the matches with their side information and inlier flags.

    ``.npz``: arrays ``keypoints0``, ``keypoints1`` (N, 2) pixels, ``inliers`` (N,), and one array per side
    field. ``.csv`` / ``.txt``: one row per match with a header naming the columns.
    """
    k0 = result.matches.keypoints0.numpy()
    k1 = result.matches.keypoints1.numpy()
    inliers = np.asarray(result.info["inliers"], bool)
    side = {k: v.numpy() for k, v in result.matches.side.items()}
    if str(path).lower().endswith(".npz"):
        buffer = io.BytesIO()
        np.savez(buffer, keypoints0=k0, keypoints1=k1, inliers=inliers, **side)
        atomic_write_bytes(path, buffer.getvalue())
        return
    columns = ["x0", "y0", "x1", "y1", "inlier", *side]
    table = (
        np.column_stack([k0, k1, inliers.astype(np.float64), *side.values()])
        if len(k0)
        else np.zeros((0, len(columns)))
    )
    text = io.StringIO()
    np.savetxt(text, table, delimiter=",", header=",".join(columns), comments="", fmt="%.6f")
    atomic_write_text(path, text.getvalue())
