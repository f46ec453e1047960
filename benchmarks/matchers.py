"""Compare the SIFT backends (OpenCV vs kornia) on the posed scenes: speed, matches, GT consistency, pose AUC.

For every selected pair of every selected scene (``<data>/<scene>/pairs.txt``, sub-sampled at random with a
fixed seed; scenes read by ``mbp_cli.io.colmap.read_scene``), each backend extracts RootSIFT features once per image
(single thread, timed), matches them with the same mutual-NN + ratio test, and the matches are scored against the
ground truth of ``sparse/``:

* GT-consistent fraction: share of matches with Sampson error < ``--gt-threshold`` px under the GT essential matrix
  (``mbp_cli.geometry.essential.sampson_squared`` on normalized coordinates, square-rooted, times the mean focal
  length of the pair);
* pose AUC@5/10/20 deg: PoseLib's ``estimate_relative_pose`` (LO-RANSAC + refinement, same options for both
  backends, pixel cameras), pose error = max(rotation angle error, unsigned translation angle error) from
  ``mbp_cli.metrics.pose_error_deg``, failure = 180 deg, AUC as the exact area under the recall curve
  (``mbp_cli.metrics.pose_auc``, SuperGlue's / glue-factory's ``pose_auc``, reported in %).

Scenes with lens distortion (OPENCV, RADIAL, ...) are evaluated too (they used to be skipped): features are still
extracted on the original images, and the matched keypoints are undistorted with ``Camera.pixels_to_normalized``
before scoring — the normalized points for the Sampson error, and for PoseLib the same points mapped back through
the pinhole ``K`` (undistorted pixels). Cameras without distortion give PoseLib exactly the keypoints and camera
they got before (the Sampson error differs from the old in-script formula by rounding only), so the numbers of
PINHOLE scenes (every scene of ``benchmarks/results/matchers.md``) are unchanged; a report that includes a distorted
scene says so in its settings line. Only scenes that are missing or cannot be read (e.g. an unsupported camera
model) are skipped.

Usage::

    python benchmarks/matchers.py --scenes castle,buddha,kitti06,dino --max-pairs-per-scene 20 --workers 2

The markdown report goes to stdout and to ``benchmarks/results/matchers.md`` (``--output``).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import random
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from mbp_cli.errors import CalibrationError  # noqa: E402
from mbp_cli.geometry.essential import essential_from_pose, sampson_squared  # noqa: E402
from mbp_cli.io.calibration import Camera  # noqa: E402
from mbp_cli.io.colmap import Scene, read_scene, relative_pose  # noqa: E402
from mbp_cli.metrics import FAILURE_ERROR_DEG, pose_auc, pose_error_deg  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "scenes"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "matchers.md"
AUC_THRESHOLDS = (5.0, 10.0, 20.0)
BACKENDS = ("sift-opencv", "sift-kornia")
DEFAULT_CACHE = REPO / "benchmarks" / "cache" / "matchers"


def parse_backend(spec: str) -> tuple[str, dict[str, object]]:
    """``"name"`` or ``"name:key=value:key=value"`` -> (name, options), values parsed as Python literals.

    Example: ``sift-opencv:contrast_threshold=0.01`` is OpenCV SIFT with a lower contrast threshold.
    """
    name, *items = spec.split(":")
    options: dict[str, object] = {}
    for item in items:
        key, _, text = item.partition("=")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text
    return name, options


# ----------------------------------------------------------------------------------------------------------------
# Ground truth and keypoint geometry (cameras: mbp_cli.io.calibration.Camera, OpenCV pixel convention)


def poselib_camera(cam: Camera) -> dict:
    """PoseLib pinhole camera of ``cam`` (principal point already in the pixel-centre convention)."""
    return {"model": "PINHOLE", "width": cam.width, "height": cam.height, "params": [cam.fx, cam.fy, cam.cx, cam.cy]}


def undistorted_pixels(cam: Camera, kp: np.ndarray, normalized: np.ndarray) -> np.ndarray:
    """Keypoints for PoseLib's pinhole camera: ``kp`` itself without distortion (bit-identical to the old script),
    otherwise the undistorted ``normalized`` points mapped back through ``K``."""
    if not cam.is_distorted:
        return kp
    return normalized * np.array([cam.fx, cam.fy]) + np.array([cam.cx, cam.cy])


def sampson_pixels(E: torch.Tensor, cam0: Camera, cam1: Camera, x0: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
    """Sampson distance (method.md section 0) on normalized coordinates, times the mean focal length -> pixels."""
    focal = (cam0.mean_focal + cam1.mean_focal) / 2.0
    return sampson_squared(E[None], x0, x1)[0].sqrt().numpy() * focal


# ----------------------------------------------------------------------------------------------------------------
# One scene, both backends (runs in a worker process, single-threaded)


@dataclass
class PairResult:
    backend: str
    scene: str
    pair: tuple[str, str]
    matches: int
    gt_consistent: int
    pose_error: float
    match_time: float
    pose_time: float


@dataclass
class SceneResult:
    scene: str
    pairs: int
    extraction: dict[str, list[float]] = field(default_factory=dict)  # backend -> wall seconds per image
    cpu: dict[str, list[float]] = field(default_factory=dict)  # backend -> CPU seconds per image
    cache_hits: int = 0  # images whose features (and timings) came from the cache
    features: dict[str, list[int]] = field(default_factory=dict)  # backend -> keypoints per image
    results: list[PairResult] = field(default_factory=list)


def extract_cached(matcher, scene: Scene, name: str, cache_dir: Path | None):
    """Features of one image, the (wall, CPU) seconds their extraction took, and whether they came from the cache.

    The cache key is the matcher's name (backend and every setting) and the image file's path, size and mtime, so a
    changed setting or image is extracted again; the stored timings are those of the original extraction.
    """
    import cv2

    from mbp_cli.matching.sift import Features

    path = scene.image_path(name)
    cache_file = None
    if cache_dir is not None:
        stat = path.stat()
        # every plain setting of the matcher, not only its name: a changed default must not reuse old features
        plain = (bool, int, float, str, type(None))
        settings = sorted((k, v) for k, v in vars(matcher).items() if isinstance(v, plain))
        key = f"{type(matcher).__name__}|{settings}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        cache_file = cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.pt"
        if cache_file.is_file():
            d = torch.load(cache_file, weights_only=True)
            features = Features(
                d["keypoints"], d["scales"], d["orientations"], d["descriptors"], tuple(d["image_size"])
            )
            return features, float(d["wall"]), float(d["cpu"]), True
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    wall, cpu = time.perf_counter(), time.process_time()
    features = matcher.extract(image)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "keypoints": features.keypoints,
            "scales": features.scales,
            "orientations": features.orientations,
            "descriptors": features.descriptors,
            "image_size": list(features.image_size),
            "wall": wall,
            "cpu": cpu,
        }
        torch.save(record, cache_file.with_suffix(".tmp"))
        cache_file.with_suffix(".tmp").replace(cache_file)  # atomic: a killed run leaves no half-written entry
    return features, wall, cpu, False


def run_scene(scene: Scene, pairs: list[tuple[str, str]], args: argparse.Namespace) -> SceneResult:
    # one thread per process: the timings are single-thread figures, and --workers processes share the cores
    import cv2
    import poselib

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from mbp_cli.matching import create_matcher

    names = sorted({name for pair in pairs for name in pair})
    out = SceneResult(scene.root.name, len(pairs))
    for backend in args.backends:
        kind, options = parse_backend(backend)
        matcher = create_matcher(kind, num_features=args.num_features, ratio=args.ratio, resize=args.resize, **options)
        features = {}
        out.extraction[backend] = []
        out.cpu[backend] = []
        out.features[backend] = []
        for name in names:
            features[name], wall, cpu, hit = extract_cached(matcher, scene, name, args.cache_dir)
            out.cache_hits += int(hit)
            out.extraction[backend].append(wall)
            out.cpu[backend].append(cpu)
            out.features[backend].append(len(features[name]))
        for name0, name1 in pairs:
            cam0, cam1 = scene.camera_of(name0), scene.camera_of(name1)
            R_gt, t_gt = relative_pose(scene, name0, name1)
            E_gt = essential_from_pose(torch.from_numpy(R_gt), torch.from_numpy(t_gt / np.linalg.norm(t_gt)))

            start = time.perf_counter()
            matches = matcher.match(features[name0], features[name1])
            match_time = time.perf_counter() - start
            kp0 = matches.keypoints0.numpy()
            kp1 = matches.keypoints1.numpy()
            x0 = cam0.pixels_to_normalized(matches.keypoints0)  # float64, undistorted
            x1 = cam1.pixels_to_normalized(matches.keypoints1)
            sampson = sampson_pixels(E_gt, cam0, cam1, x0, x1)
            consistent = int((sampson < args.gt_threshold).sum())

            start = time.perf_counter()
            err = FAILURE_ERROR_DEG
            if len(kp0) >= 5:
                ransac = {"max_epipolar_error": args.threshold, "seed": args.seed}
                pose, info = poselib.estimate_relative_pose(
                    undistorted_pixels(cam0, kp0, x0.numpy()),
                    undistorted_pixels(cam1, kp1, x1.numpy()),
                    poselib_camera(cam0),
                    poselib_camera(cam1),
                    ransac,
                    {},
                )
                if info.get("num_inliers", 0) >= 5:
                    err = max(pose_error_deg(np.asarray(pose.R), np.asarray(pose.t), R_gt, t_gt))
            pose_time = time.perf_counter() - start
            out.results.append(
                PairResult(backend, out.scene, (name0, name1), len(kp0), consistent, err, match_time, pose_time)
            )
    return out


# ----------------------------------------------------------------------------------------------------------------
# Report


def summarise(
    rows: list[PairResult], extraction: list[float], cpu: list[float], features: list[int]
) -> dict[str, float]:
    errors = [r.pose_error for r in rows]
    matches = np.array([r.matches for r in rows], dtype=float)
    consistent = np.array([r.gt_consistent for r in rows], dtype=float)
    auc5, auc10, auc20 = (100.0 * auc for auc in pose_auc(errors, AUC_THRESHOLDS))  # in %
    return {
        "pairs": len(rows),
        "images": len(extraction),
        "extract_s": float(np.mean(extraction)),
        "extract_cpu_s": float(np.mean(cpu)),
        "features": float(np.mean(features)),
        "matches_median": float(np.median(matches)),
        "matches_mean": float(np.mean(matches)),
        "consistent_fraction": float(np.mean(np.where(matches > 0, consistent / np.maximum(matches, 1), 0.0))),
        "consistent_mean": float(np.mean(consistent)),
        "auc5": auc5,
        "auc10": auc10,
        "auc20": auc20,
        "median_error": float(np.median(errors)),
        "failures": int(sum(e >= FAILURE_ERROR_DEG for e in errors)),
        "match_ms": 1000.0 * float(np.mean([r.match_time for r in rows])),
        "pose_ms": 1000.0 * float(np.mean([r.pose_time for r in rows])),
    }


def markdown(
    scenes: list[SceneResult],
    args: argparse.Namespace,
    command: str,
    skipped: list[str],
    wall: float,
    distorted: list[str] | None = None,
) -> str:
    hits = sum(scene.cache_hits for scene in scenes)
    header = (
        "| backend | scene | pairs | images | extract CPU s/img (wall) | features/img | matches median (mean) "
        "| GT-consistent frac | GT-consistent/pair | AUC@5 | AUC@10 | AUC@20 | median err deg | failures "
        "| match ms/pair | PoseLib ms/pair |"
    )
    lines = [
        "# SIFT backends: " + " vs ".join(args.backends),
        "",
        f"Command: `{command}`",
        "",
        f"Settings: {args.num_features} features, ratio {args.ratio}, mutual NN, RootSIFT, "
        f"resize={'full resolution' if args.resize is None else f'long side {args.resize} px'} for every backend; "
        f"GT-consistent = Sampson error < {args.gt_threshold} px under the GT essential matrix; pose by "
        f"poselib.estimate_relative_pose (max_epipolar_error {args.threshold} px, seed {args.seed}); "
        "pose error = max(rotation, unsigned translation angle), failure = 180 deg; AUC = exact integral "
        "(SuperGlue pose_auc), in %. Pairs: random sample of pairs.txt "
        f"(seed {args.seed}, at most {args.max_pairs_per_scene} per scene). Timings: torch and OpenCV at 1 thread, "
        f"{args.workers} worker process(es) in parallel (one scene each) on a {os.cpu_count()}-core CPU; extraction "
        "time is the process CPU time of `extract` (robust to other load on the machine), with the wall time in "
        "parentheses; match and PoseLib times are wall times. "
        f"Total wall time {wall / 60:.1f} min"
        + (f" ({hits} feature sets read from the cache, timed when first extracted)." if hits else ".")
        + (
            " Scenes with lens distortion ("
            + ", ".join(distorted)
            + "): keypoints undistorted (Camera.pixels_to_normalized) before the Sampson error and PoseLib; "
            "features extracted on the original images."
            if distorted
            else ""
        ),
    ]
    if skipped:
        lines += ["", "Skipped (not found or unreadable, e.g. an unsupported camera model): " + ", ".join(skipped)]
    lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
    for backend in args.backends:
        all_rows, all_ext, all_cpu, all_feat = [], [], [], []
        for scene in scenes:
            rows = [r for r in scene.results if r.backend == backend]
            all_rows += rows
            all_ext += scene.extraction[backend]
            all_cpu += scene.cpu[backend]
            all_feat += scene.features[backend]
            summary = summarise(rows, scene.extraction[backend], scene.cpu[backend], scene.features[backend])
            lines.append(_row(backend, scene.scene, summary))
        lines.append(_row(backend, "**all**", summarise(all_rows, all_ext, all_cpu, all_feat)))
    return "\n".join(lines) + "\n"


def _row(backend: str, scene: str, s: dict[str, float]) -> str:
    return (
        f"| {backend} | {scene} | {s['pairs']} | {s['images']} | {s['extract_cpu_s']:.2f} ({s['extract_s']:.2f}) "
        f"| {s['features']:.0f} "
        f"| {s['matches_median']:.0f} ({s['matches_mean']:.0f}) | {s['consistent_fraction']:.3f} "
        f"| {s['consistent_mean']:.0f} | {s['auc5']:.1f} | {s['auc10']:.1f} | {s['auc20']:.1f} "
        f"| {s['median_error']:.2f} | {s['failures']} | {s['match_ms']:.0f} | {s['pose_ms']:.0f} |"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of scenes in COLMAP text layout")
    parser.add_argument("--scenes", default="castle,buddha,kitti06,dino", help="comma-separated scene names")
    parser.add_argument("--max-pairs-per-scene", type=int, default=20)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(BACKENDS),
        help="matcher specs: a name of mbp_cli.matching.MATCHERS, optionally with constructor options as "
        "name:key=value:key=value (e.g. sift-opencv:contrast_threshold=0.01)",
    )
    parser.add_argument("--num-features", type=int, default=8000)
    parser.add_argument("--ratio", type=float, default=0.8)
    parser.add_argument("--resize", type=int, default=None, help="long side for detection (default: full resolution)")
    parser.add_argument("--threshold", type=float, default=1.0, help="PoseLib max epipolar error, px")
    parser.add_argument("--gt-threshold", type=float, default=1.0, help="Sampson error for a GT-consistent match, px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="scenes processed in parallel, one thread each")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="per-image feature cache")
    parser.add_argument("--no-cache", dest="cache_dir", action="store_const", const=None, help="always extract")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    words = [os.path.relpath(sys.argv[0], REPO), *(argv if argv is not None else sys.argv[1:])]
    command = "python " + " ".join(shlex.quote(word) for word in words)
    jobs, skipped, distorted = [], [], []
    for name in [s.strip() for s in args.scenes.split(",") if s.strip()]:
        try:
            scene = read_scene(args.data / name)
        except CalibrationError as exc:  # SceneError included: missing or malformed model, unsupported camera
            print(f"skipping scene {name}: {exc}", file=sys.stderr)
            skipped.append(name)
            continue
        if not scene.pairs:
            print(f"skipping scene {name}: no pairs.txt (or an empty one) in {scene.root}", file=sys.stderr)
            skipped.append(name)
            continue
        if any(camera.is_distorted for camera in scene.cameras.values()):
            distorted.append(name)
        pairs = random.Random(args.seed).sample(scene.pairs, min(args.max_pairs_per_scene, len(scene.pairs)))
        jobs.append((scene, sorted(pairs)))

    # largest scenes first, so that the worker processes finish at about the same time
    jobs.sort(key=lambda job: -len({name for pair in job[1] for name in pair}))
    start = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = [pool.submit(run_scene, scene, pairs, args) for scene, pairs in jobs]
            scenes = [f.result() for f in futures]
    else:
        scenes = [run_scene(scene, pairs, args) for scene, pairs in jobs]
    report = markdown(scenes, args, command, skipped, time.perf_counter() - start, distorted)
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
