"""End-to-end tests of the ``mbp`` command line, run as separate processes.

What is checked for real: exit codes, the split of data (stdout) and messages (stderr), the one-line
``error: ...`` message without a traceback, and that no output file is created or modified on an error.

How the processes are started (and why):

* The pose runs on the sample pair, ``--version``, ``--help`` and one error case are plain
  ``[sys.executable, "-m", "mbp_cli", ...]`` subprocesses.
* The other error cases run through a small *fork server*: a helper process that imports torch/kornia/OpenCV and
  the product's heavy modules once, then ``fork()``s one child per invocation. Each child gets its own cwd,
  environment, stdin (/dev/null) and stdout/stderr file descriptors, executes ``mbp_cli.__main__`` (hence a
  fresh ``mbp_cli.cli``) the way ``python -m mbp_cli`` does, and exits with the code the interpreter would
  (uncaught exceptions print their traceback to fd 2 and exit 1). Only the import of torch (~5-10 s per
  process on a busy 2-core machine) is shared, which keeps this file within its time budget.
  ``test_fork_server_matches_real_process`` checks that both ways give identical results, and
  ``MBP_TEST_REAL_SUBPROCESS=1`` runs every case as a plain subprocess instead.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_images"
IMG0 = SAMPLES / "buddha_00001.png"
IMG1 = SAMPLES / "buddha_00015.png"
CAMERAS = SAMPLES / "cameras.txt"
GROUND_TRUTH = SAMPLES / "ground_truth.txt"
# Relative to the repository root, the cwd of every run by default (also tests relative paths).
REL0 = str(IMG0.relative_to(REPO))
REL1 = str(IMG1.relative_to(REPO))
REL_CAMERAS = str(CAMERAS.relative_to(REPO))

REAL_TIMEOUT_S = 300
FAST_TIMEOUT_S = 120
FORCE_REAL = os.environ.get("MBP_TEST_REAL_SUBPROCESS", "") not in ("", "0")


# ---------------------------------------------------------------------------------------------------------------
# Running the command


@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:  # shown by pytest when an assertion on a result fails
        command = f"mbp {' '.join(self.args)}\n-> exit {self.returncode}"
        return f"{command}\n--- stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}"


def base_env(**extra: str | None) -> dict[str, str]:
    """The test process's environment without variables that change the CLI's output, plus ``extra``
    (a value of None removes the variable)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES", "MBP_LOFTR_WEIGHTS")
    }
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run_real(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> CliResult:
    """``python -m mbp_cli ARGS`` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-m", "mbp_cli", *args],
        cwd=cwd,
        env=env or base_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=REAL_TIMEOUT_S,
    )
    return CliResult(list(args), proc.returncode, proc.stdout, proc.stderr)


def start_real(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.Popen:
    """Start ``python -m mbp_cli ARGS`` without waiting (to overlap the slow pose runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "mbp_cli", *args],
        cwd=cwd,
        env=env or base_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )


def finish_real(proc: subprocess.Popen, args: list[str]) -> CliResult:
    try:
        stdout, stderr = proc.communicate(timeout=REAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return CliResult(list(args), proc.returncode, stdout, stderr)


_FORK_SERVER_SOURCE = textwrap.dedent(
    r"""
    import atexit, json, os, runpy, sys, warnings

    # Protocol on private copies of fds 0/1; fd 0 becomes /dev/null and fd 1 goes to stderr, so that nothing
    # printed by an import can corrupt the protocol.
    proto_in = os.fdopen(os.dup(0), "r")
    proto_out = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)

    # A forked child cannot use an OpenMP thread team its parent created (libgomp deadlocks in the child's first
    # parallel region), so the server keeps OpenMP/MKL single-threaded: no team exists when it forks.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    warnings.simplefilter("ignore", DeprecationWarning)  # "fork() in a multi-threaded process" (native threads)
    # What `mbp estimate` imports lazily; mbp_cli.cli and mbp_cli.__main__ run afresh in every child.
    import mbp_cli.io.calibration, mbp_cli.io.images, mbp_cli.io.output, mbp_cli.pipeline, mbp_cli.report
    import mbp_cli.robust.ransac, mbp_cli.matching.sift, mbp_cli.matching.loftr
    warnings.resetwarnings()
    assert "mbp_cli.cli" not in sys.modules and "mbp_cli.__main__" not in sys.modules


    def child(req):
        code = 1
        try:
            proto_in.close()
            proto_out.close()
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            fds = [os.open(os.devnull, os.O_RDONLY)]
            for name in ("stdout", "stderr"):
                fds.append(os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            # New standard streams on the new fds, configured as CPython configures non-tty streams.
            sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
            sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)
            sys.stderr = sys.__stderr__ = open(
                2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False
            )
            sys.argv = ["mbp_cli", *req["args"]]
            try:
                runpy.run_module("mbp_cli", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:  # CPython's handling of SystemExit at the top level
                if exc.code is None:
                    code = 0
                elif isinstance(exc.code, int):
                    code = exc.code
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:
                sys.excepthook(*sys.exc_info())  # the traceback an uncaught exception prints
                code = 1
            try:
                atexit._run_exitfuncs()
            except BaseException:
                pass
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:
                    pass
        finally:
            os._exit(code)


    proto_out.write("ready\n")
    proto_out.flush()
    for line in proto_in:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(req)
        proto_out.write(json.dumps({"pid": pid}) + "\n")
        proto_out.flush()
        _, status = os.waitpid(pid, 0)
        proto_out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
        proto_out.flush()
    """
)


class ForkServer:
    """Runs ``python -m mbp_cli ARGS`` as forked children of a process that has imported torch already."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.log = workdir / "fork_server.stderr"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _FORK_SERVER_SOURCE],
                cwd=REPO,
                env=base_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self._expect("ready")

    def _readline(self) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], FAST_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"fork server gave no answer in {FAST_TIMEOUT_S} s; its stderr:\n{self.log.read_text()}")
        return line

    def _expect(self, text: str) -> None:
        line = self._readline()
        assert line.strip() == text, line

    def run(self, args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> CliResult:
        self.count += 1
        stdout, stderr = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
        request = {
            "args": list(args),
            "env": env or base_env(),
            "cwd": str(cwd),
            "stdout": str(stdout),
            "stderr": str(stderr),
        }
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        child = json.loads(self._readline())["pid"]
        try:
            rc = json.loads(self._readline())["rc"]
        except RuntimeError:
            os.kill(child, signal.SIGKILL)  # a hung child: do not leave it behind
            self._readline()  # its exit status, to stay in step with the server
            raise TimeoutError(f"mbp {' '.join(args)} ran longer than {FAST_TIMEOUT_S} s") from None
        read = lambda p: p.read_text(encoding="utf-8", errors="replace")  # noqa: E731
        return CliResult(list(args), rc, read(stdout), read(stderr))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def fork_server(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("fork_server"))
    yield server
    server.close()


@pytest.fixture
def mbp(request):
    """``mbp(args, env=None, cwd=REPO) -> CliResult``: one run of the command (fork server, see the module doc)."""
    if FORCE_REAL:
        return run_real
    return request.getfixturevalue("fork_server").run


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def read_colmap_pinhole(path: Path) -> tuple[int, int, float, float, float, float]:
    """width, height, fx, fy, cx, cy (COLMAP convention) of the single PINHOLE camera in a cameras.txt."""
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            parts = line.split()
            assert parts[1] == "PINHOLE"
            return int(parts[2]), int(parts[3]), *(float(v) for v in parts[4:8])
    raise AssertionError(f"no camera in {path}")


def read_ground_truth() -> tuple[np.ndarray, np.ndarray]:
    rows = [
        [float(v) for v in line.split()]
        for line in GROUND_TRUTH.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return np.array(rows[:3]), np.array(rows[3])


def skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])


def rotation_angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def rotation_error_deg(R: np.ndarray, R_ref: np.ndarray) -> float:
    return rotation_angle_deg(R_ref.T @ R)


def direction_error_deg(t: np.ndarray, t_ref: np.ndarray) -> float:
    """Angle between two translation directions, ignoring the sign."""
    c = abs(float(np.dot(t, t_ref))) / (np.linalg.norm(t) * np.linalg.norm(t_ref))
    return float(np.degrees(np.arccos(min(1.0, c))))


def sample_size() -> tuple[int, int]:
    """(height, width) of the sample images (both have the size of the COLMAP camera)."""
    img = cv2.imread(str(IMG0), cv2.IMREAD_UNCHANGED)
    return img.shape[0], img.shape[1]


def estimate_args(image0: str | Path, image1: str | Path, *extra: str, K: str | Path | None = REL_CAMERAS) -> list[str]:
    args = ["estimate", str(image0), str(image1)]
    if K is not None:
        args += ["--K", str(K)]
    return args + list(extra)


def output_args(out: Path) -> list[str]:
    """JSON on stdout and both output files in ``out``: none of them may appear after an error."""
    return ["--json", "--save-viz", str(out / "viz.png"), "--save-matches", str(out / "matches.npz")]


def assert_error(
    result: CliResult, code: int, *names: str | Path, out: Path | None = None, keep: tuple[str, ...] = ()
) -> str:
    """The contract of every failure: exit ``code``, one ``error:`` line on stderr naming each of ``names``,
    nothing on stdout, no traceback, and nothing new in the output folder ``out`` (only ``keep`` there)."""
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr, result
    assert result.stdout == "", result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result
    line = lines[0]
    assert line.startswith("error:"), result
    for name in names:
        assert str(name) in line, f"{name!r} not named in: {line}"
    if out is not None:
        assert sorted(p.name for p in out.iterdir()) == sorted(keep), result
    return line


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty folder for the output files of a run that must fail."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Pose runs on the sample pair (real subprocesses, started together and shared by the tests)


@pytest.fixture(scope="module")
def pose_runs(tmp_path_factory):
    """The sample pair three times: with every output (``main``), again with ``--quiet`` (``quiet``), and with
    the calibration as a 3x3 matrix file for image 0 and inline ``fx,fy,cx,cy`` for image 1 (``variant``)."""
    folder = tmp_path_factory.mktemp("pose")
    _, _, fx, fy, cx, cy = read_colmap_pinhole(CAMERAS)
    # OpenCV convention (centre of the top-left pixel at 0) for the non-COLMAP formats.
    cx_cv, cy_cv = cx - 0.5, cy - 0.5
    k_file = folder / "K0.txt"
    k_file.write_text(f"{fx!r} 0 {cx_cv!r}\n0 {fy!r} {cy_cv!r}\n0 0 1\n")
    inline = f"{fx!r},{fy!r},{cx_cv!r},{cy_cv!r}"
    viz, matches = folder / "out.png", folder / "matches.npz"
    runs = {
        "main": estimate_args(REL0, REL1, "--json", "--save-viz", str(viz), "--save-matches", str(matches)),
        "quiet": estimate_args(REL0, REL1, "--json", "--quiet"),
        # also --no-basin-hops, --no-scale-noise, --no-probability-weights and --ill-conditioned-samples 0: the sample
        # pair is well conditioned, the pose stays within 0.1 deg
        "variant": estimate_args(
            REL0,
            REL1,
            "--json",
            "--quiet",
            "--K0",
            str(k_file),
            "--K1",
            inline,
            "--no-basin-hops",
            "--no-scale-noise",
            "--no-probability-weights",
            "--ill-conditioned-samples",
            "0",
            K=None,
        ),
    }
    procs = {name: (start_real(args), args) for name, args in runs.items()}
    results = {name: finish_real(proc, args) for name, (proc, args) in procs.items()}
    return {"folder": folder, "viz": viz, "matches": matches, "inline": inline, "k_file": k_file, **results}


def _doc(result: CliResult) -> dict:
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr and "error:" not in result.stderr, result
    return json.loads(result.stdout)


def test_estimate_sample_pair_json(pose_runs):
    result = pose_runs["main"]
    doc = _doc(result)
    assert doc["status"] == "ok"
    assert "x1 = R x0 + t" in doc["convention"]
    assert doc["image0"] == REL0 and doc["image1"] == REL1
    R, t, E, F = (np.array(doc[k], dtype=np.float64) for k in ("R", "t", "E", "F"))
    assert R.shape == (3, 3) and t.shape == (3,) and E.shape == (3, 3) and F.shape == (3, 3)
    assert np.linalg.norm(t) == pytest.approx(1.0, abs=1e-8)
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-8)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-8)
    np.testing.assert_allclose(E, skew(t) @ R, atol=1e-8)
    # F = K1^-T E K0^-1 up to scale and sign, with the cameras reported in the JSON (OpenCV convention).
    K0, K1 = (
        np.array([[c["fx"], 0.0, c["cx"]], [0.0, c["fy"], c["cy"]], [0.0, 0.0, 1.0]])
        for c in (doc["camera0"], doc["camera1"])
    )
    F_ref = np.linalg.inv(K1).T @ E @ np.linalg.inv(K0)
    F_ref, F_n = F_ref / np.linalg.norm(F_ref), F / np.linalg.norm(F)
    assert min(np.abs(F_n - F_ref).max(), np.abs(F_n + F_ref).max()) < 1e-6

    R_gt, t_gt = read_ground_truth()
    assert rotation_error_deg(R, R_gt) < 2.0
    assert direction_error_deg(t, t_gt) < 2.0

    assert 0 < doc["num_inliers"] <= doc["num_matches"]
    assert len(doc["inliers"]) == doc["num_inliers"]
    # the fit's predicted rms errors: positive, and the sample pair's pose is well determined
    assert 0.0 < doc["predicted_error_deg"]["rotation"] < 1.0
    assert 0.0 < doc["predicted_error_deg"]["translation"] < 1.0
    assert doc["inlier_ratio"] == pytest.approx(doc["num_inliers"] / doc["num_matches"], abs=1e-5)
    for stage in ("load", "matching", "estimation", "total"):
        assert doc["timings_ms"][stage] >= 0.0, stage
    assert doc["config"]["matcher"] == "sift"
    assert doc["config"]["ransac"]["seed"] == 0
    assert doc["camera0"]["width"] == sample_size()[1] and doc["camera0"]["height"] == sample_size()[0]


def test_estimate_summary_on_stderr(pose_runs):
    """Without --quiet, the human summary goes to stderr (stdout holds only the JSON)."""
    stderr = pose_runs["main"].stderr
    assert "status: ok" in stderr
    assert "inliers" in stderr and "rotation" in stderr and "predicted error" in stderr


def test_estimate_writes_visualization(pose_runs):
    img = cv2.imread(str(pose_runs["viz"]), cv2.IMREAD_COLOR)
    assert img is not None
    w0 = cv2.imread(str(IMG0), cv2.IMREAD_UNCHANGED).shape[1]
    w1 = cv2.imread(str(IMG1), cv2.IMREAD_UNCHANGED).shape[1]
    assert img.shape[1] == w0 + w1
    assert img.shape[0] == sample_size()[0]
    # Only the two requested files: no temporary file left behind by the atomic writes.
    assert sorted(p.name for p in pose_runs["folder"].iterdir()) == ["K0.txt", "matches.npz", "out.png"]


def test_estimate_writes_matches(pose_runs):
    doc = _doc(pose_runs["main"])
    with np.load(pose_runs["matches"]) as data:
        arrays = {k: data[k] for k in data.files}
    for key in ("keypoints0", "keypoints1", "inliers", "ratio"):
        assert key in arrays, key
    n = doc["num_matches"]
    assert arrays["keypoints0"].shape == (n, 2) and arrays["keypoints1"].shape == (n, 2)
    assert arrays["inliers"].shape == (n,) and arrays["ratio"].shape == (n,)
    assert int(arrays["inliers"].sum()) == doc["num_inliers"]
    assert np.flatnonzero(arrays["inliers"]).tolist() == doc["inliers"]
    # The inliers satisfy the epipolar geometry of the reported F (Sampson distance, pixels).
    F = np.array(doc["F"])
    inl = arrays["inliers"].astype(bool)
    x0 = np.column_stack([arrays["keypoints0"][inl], np.ones(inl.sum())])
    x1 = np.column_stack([arrays["keypoints1"][inl], np.ones(inl.sum())])
    Fx0, Ftx1 = x0 @ F.T, x1 @ F
    num = np.einsum("ij,ij->i", x1, Fx0) ** 2
    sampson = np.sqrt(num / (Fx0[:, 0] ** 2 + Fx0[:, 1] ** 2 + Ftx1[:, 0] ** 2 + Ftx1[:, 1] ** 2))
    assert np.median(sampson) < 1.0


def test_estimate_is_deterministic_and_quiet(pose_runs):
    first, second = _doc(pose_runs["main"]), _doc(pose_runs["quiet"])
    assert second["R"] == first["R"] and second["t"] == first["t"]
    assert second["inliers"] == first["inliers"]
    assert pose_runs["quiet"].stderr == ""


def test_calibration_matrix_file_and_inline(pose_runs):
    """--K0 3x3 file + --K1 'fx,fy,cx,cy' (OpenCV convention) give the pose of --K cameras.txt (COLMAP)."""
    ref, doc = _doc(pose_runs["main"]), _doc(pose_runs["variant"])
    assert doc["status"] == "ok"
    for cam in ("camera0", "camera1"):
        for key in ("fx", "fy", "cx", "cy"):
            assert doc[cam][key] == pytest.approx(ref[cam][key], abs=1e-9), (cam, key)
    R, t = np.array(doc["R"]), np.array(doc["t"])
    assert rotation_error_deg(R, np.array(ref["R"])) < 0.1
    assert direction_error_deg(t, np.array(ref["t"])) < 0.1
    assert doc["config"]["ransac"]["basin_hops"] == [] and ref["config"]["ransac"]["basin_hops"] == [0.05, 0.1, 0.2]
    assert "basin_hopping" not in doc["timings_ms"] and "basin_hopping" in ref["timings_ms"]
    assert doc["config"]["ransac"]["scale_noise"] is False and ref["config"]["ransac"]["scale_noise"] is True
    assert doc["config"]["ransac"]["probability_weights"] is False
    assert ref["config"]["ransac"]["probability_weights"] is True
    assert doc["config"]["ransac"]["ill_conditioned_iterations"] == 0
    assert ref["config"]["ransac"]["ill_conditioned_iterations"] == 512


# ---------------------------------------------------------------------------------------------------------------
# Version and help (real subprocesses: cheap, nothing heavy is imported)


def test_version():
    from mbp_cli import __version__

    result = run_real(["--version"])
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"mbp {__version__}"
    assert result.stderr == ""


def test_console_script_version():
    script = Path(sys.executable).parent / "mbp"
    if not script.exists():
        pytest.skip("console script not installed next to the interpreter")
    proc = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=REAL_TIMEOUT_S, env=base_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("mbp ")


def test_estimate_help():
    result = run_real(["estimate", "--help"])
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    for option in ("--K", "--K0", "--K1", "--json", "--save-viz", "--save-matches", "--overwrite", "--matcher"):
        assert option in result.stdout, option


# ---------------------------------------------------------------------------------------------------------------
# The fork server behaves as a fresh interpreter


def test_fork_server_matches_real_process(fork_server, tmp_path):
    if FORCE_REAL:
        pytest.skip("every case runs as a real subprocess already")
    args = estimate_args(tmp_path / "missing.png", REL1, "--json")
    real, forked = run_real(args), fork_server.run(args)
    assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr)
    assert_error(real, 3, tmp_path / "missing.png")


# ---------------------------------------------------------------------------------------------------------------
# Bad images -> exit 3


def test_missing_image(mbp, tmp_path, out):
    missing = tmp_path / "missing.png"
    assert_error(mbp(estimate_args(REL0, missing, *output_args(out))), 3, missing, out=out)


def test_directory_as_image(mbp, tmp_path, out):
    folder = tmp_path / "a_folder.png"
    folder.mkdir()
    assert_error(mbp(estimate_args(folder, REL1, *output_args(out))), 3, folder, out=out)


def test_corrupt_image(mbp, tmp_path, out):
    corrupt = tmp_path / "x.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_error(mbp(estimate_args(REL0, corrupt, *output_args(out))), 3, corrupt, out=out)


@pytest.mark.parametrize("ext, keep", [(".png", 2000), (".png", 0.5), (".jpg", 0.5), (".tif", 0.5), (".bmp", 0.5)])
def test_truncated_image(mbp, tmp_path, out, ext, keep):
    """OpenCV ([ WARN], [ERROR]) and libpng (``libpng error:``) print their own lines for these; the CLI must
    still print exactly one."""
    ok, encoded = cv2.imencode(ext, cv2.imread(str(IMG1), cv2.IMREAD_UNCHANGED))
    assert ok
    data = encoded.tobytes()
    truncated = tmp_path / f"truncated{ext}"
    truncated.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    assert_error(mbp(estimate_args(REL0, truncated, *output_args(out))), 3, truncated, out=out)


def test_same_image_twice(mbp, out):
    line = assert_error(mbp(estimate_args(REL0, REL0, *output_args(out))), 3, REL0, out=out)
    assert "same image" in line


def test_identical_copy(mbp, tmp_path, out):
    copy = tmp_path / "copy_of_buddha_00001.png"
    shutil.copyfile(IMG0, copy)
    line = assert_error(mbp(estimate_args(REL0, copy, *output_args(out))), 3, copy, out=out)
    assert "same image" in line


def test_textureless_image(mbp, tmp_path, out):
    gray = tmp_path / "gray.png"
    assert cv2.imwrite(str(gray), np.full(sample_size(), 128, np.uint8))
    line = assert_error(mbp(estimate_args(REL0, gray, *output_args(out))), 3, gray, out=out)
    assert "texture" in line


# ---------------------------------------------------------------------------------------------------------------
# Bad calibration -> exit 4


def test_matrix_file_with_seven_numbers(mbp, tmp_path, out):
    k_file = tmp_path / "K.txt"
    k_file.write_text("930.5 0 684.1\n0 930.5 386.8\n0\n")
    line = assert_error(mbp(estimate_args(REL0, REL1, *output_args(out), K=k_file)), 4, k_file, out=out)
    assert "9" in line and "7" in line


def test_matrix_file_not_numeric(mbp, tmp_path, out):
    k_file = tmp_path / "K.txt"
    k_file.write_text("930.5 0 684.1\n0 focal 386.8\n0 0 1\n")
    assert_error(mbp(estimate_args(REL0, REL1, *output_args(out), K=k_file)), 4, k_file, "focal", out=out)


def test_singular_inline_calibration(mbp, out):
    line = assert_error(mbp(estimate_args(REL0, REL1, *output_args(out), K="0,930.5,684.1,386.8")), 4, "fx", out=out)
    assert "singular" in line


def test_missing_calibration(mbp, out):
    line = assert_error(mbp(estimate_args(REL0, REL1, *output_args(out), K=None)), 4, "--K", out=out)
    assert "no calibration" in line


def test_only_K0(mbp, out):
    assert_error(mbp(estimate_args(REL0, REL1, *output_args(out), "--K0", REL_CAMERAS, K=None)), 4, "--K1", out=out)


def test_K_together_with_K0(mbp, out):
    result = mbp(estimate_args(REL0, REL1, *output_args(out), "--K0", REL_CAMERAS))
    assert_error(result, 4, "--K", "--K0", out=out)


def test_calibration_file_does_not_exist(mbp, tmp_path, out):
    missing = tmp_path / "no_such_dir" / "cameras.txt"
    assert_error(mbp(estimate_args(REL0, REL1, *output_args(out), K=missing)), 4, missing, out=out)


def test_calibration_image_size_mismatch(mbp, tmp_path, out):
    height, width = sample_size()
    _, _, fx, fy, cx, cy = read_colmap_pinhole(CAMERAS)
    cameras = tmp_path / "cameras.txt"
    cameras.write_text(f"1 PINHOLE {width // 2} {height // 2} {fx} {fy} {cx / 2} {cy / 2}\n")
    result = mbp(estimate_args(REL0, REL1, *output_args(out), K=cameras))
    assert_error(result, 4, f"{width // 2}x{height // 2}", f"{width}x{height}", REL0, out=out)


def test_colmap_model_gives_each_image_its_camera(mbp, tmp_path, out):
    """--K on a two-camera model: each image's camera comes from images.txt by file name. Image 1's camera there is
    half the size of the image, so the size check names image 1 (and not image 0, nor a missing camera id)."""
    height, width = sample_size()
    _, _, fx, fy, cx, cy = read_colmap_pinhole(CAMERAS)
    model = tmp_path / "sparse"
    model.mkdir()
    (model / "cameras.txt").write_text(
        f"1 PINHOLE {width} {height} {fx} {fy} {cx} {cy}\n2 PINHOLE {width // 2} {height // 2} {fx} {fy} {cx} {cy}\n"
    )
    (model / "images.txt").write_text(f"1 1 0 0 0 0 0 0 1 {Path(REL0).name}\n\n2 1 0 0 0 0 0 0 2 {Path(REL1).name}\n\n")
    result = mbp(estimate_args(REL0, REL1, *output_args(out), K=model))
    line = assert_error(result, 4, f"{width // 2}x{height // 2}", REL1, out=out)
    assert REL0 not in line


# ---------------------------------------------------------------------------------------------------------------
# Output paths -> exit 5


def test_output_folder_does_not_exist(mbp, out):
    result = mbp(
        estimate_args(
            REL0, REL1, "--json", "--save-viz", "/nonexistent_dir/x.png", "--save-matches", str(out / "m.npz")
        )
    )
    assert_error(result, 5, "/nonexistent_dir", out=out)
    assert not Path("/nonexistent_dir").exists()


def test_output_is_a_directory(mbp, out):
    folder = out / "viz.png"
    folder.mkdir()
    assert_error(
        mbp(estimate_args(REL0, REL1, "--json", "--save-viz", str(folder))), 5, folder, out=out, keep=("viz.png",)
    )
    assert folder.is_dir() and not any(folder.iterdir())


def test_existing_output_without_overwrite(mbp, out):
    existing = out / "viz.png"
    existing.write_bytes(b"precious bytes")
    os.utime(existing, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = existing.stat().st_mtime_ns
    result = mbp(estimate_args(REL0, REL1, "--json", "--save-viz", str(existing)))
    line = assert_error(result, 5, existing, "--overwrite", out=out, keep=("viz.png",))
    assert "exists" in line
    assert existing.read_bytes() == b"precious bytes"
    assert existing.stat().st_mtime_ns == before


def test_output_is_an_input_image(mbp, tmp_path, out):
    """Refused even with --overwrite, and whatever the spelling of the path (relative input, absolute output)."""
    work = tmp_path / "work"
    work.mkdir()
    image = work / "image0.png"
    shutil.copyfile(IMG0, image)
    data, mtime = image.read_bytes(), image.stat().st_mtime_ns
    args = estimate_args("image0.png", IMG1, "--json", "--overwrite", "--save-viz", str(image), K=CAMERAS)
    assert_error(mbp(args, cwd=work), 5, image, "input")
    assert image.read_bytes() == data and image.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in work.iterdir()) == ["image0.png"]


def test_output_is_the_calibration_file(mbp, tmp_path):
    """--overwrite must not let an output replace an input file, the calibration included."""
    cameras = tmp_path / "cameras.txt"
    shutil.copyfile(CAMERAS, cameras)
    data = cameras.read_bytes()
    result = mbp(estimate_args(REL0, REL1, "--json", "--overwrite", "--save-matches", str(cameras), K=cameras))
    assert_error(result, 5, cameras, "input")
    assert cameras.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cameras.txt"]


def test_viz_and_matches_same_path(mbp, out):
    same = out / "both.png"
    assert_error(
        mbp(estimate_args(REL0, REL1, "--json", "--save-viz", str(same), "--save-matches", str(same))), 5, out=out
    )


def test_visualization_format_not_supported(mbp, out):
    """An extension OpenCV cannot encode is refused up front, not after the whole estimation."""
    result = mbp(estimate_args(REL0, REL1, "--json", "--save-viz", str(out / "viz.txt")))
    assert_error(result, 5, out / "viz.txt", out=out)


# ---------------------------------------------------------------------------------------------------------------
# Too few matches -> exit 7


def test_too_few_matches(mbp, tmp_path, out):
    """Two unrelated (blurred random-noise) images: textured, but SIFT finds no common feature."""
    paths = []
    for name, seed in (("noise_a.png", 0), ("noise_b.png", 100)):
        noise = (np.random.default_rng(seed).random((64, 64)) * 255).astype(np.uint8)
        path = tmp_path / name
        assert cv2.imwrite(str(path), cv2.GaussianBlur(noise, (0, 0), 1.5))
        paths.append(path)
    result = mbp(estimate_args(*paths, *output_args(out), K="60,60,31.5,31.5"))
    line = assert_error(result, 7, paths[0], paths[1], out=out)
    assert "matches" in line


# ---------------------------------------------------------------------------------------------------------------
# Usage -> exit 2, weights -> exit 6


def test_unknown_matcher(mbp, out):
    assert_error(mbp(estimate_args(REL0, REL1, *output_args(out), "--matcher", "orb")), 2, "orb", "matcher", out=out)


def test_unknown_sampler(mbp, out):
    assert_error(
        mbp(estimate_args(REL0, REL1, *output_args(out), "--sampler", "lucky")), 2, "lucky", "sampler", out=out
    )


def test_non_positive_refine_scale(mbp, out):
    assert_error(mbp(estimate_args(REL0, REL1, *output_args(out), "--refine-scale", "0")), 2, "refine scale", out=out)


def test_negative_ill_conditioned_samples(mbp, out):
    args = estimate_args(REL0, REL1, *output_args(out), "--ill-conditioned-samples", "-1")
    assert_error(mbp(args), 2, "ill-conditioned samples", out=out)


def test_loftr_weights_missing(mbp, tmp_path, out):
    torch_home = tmp_path / "torch_home"
    torch_home.mkdir()
    missing = tmp_path / "missing_loftr.ckpt"
    env = base_env(MBP_LOFTR_WEIGHTS=str(missing), TORCH_HOME=str(torch_home))
    result = mbp(estimate_args(REL0, REL1, *output_args(out), "--matcher", "loftr"), env=env)
    # Names the file it looked for, where to put one, and the file name to use.
    assert_error(result, 6, missing, torch_home / "hub" / "checkpoints", "loftr_outdoor.ckpt", out=out)
    assert not any(torch_home.iterdir())


def test_loftr_weights_not_in_cache(mbp, tmp_path, out):
    torch_home = tmp_path / "torch_home"
    torch_home.mkdir()
    result = mbp(
        estimate_args(REL0, REL1, *output_args(out), "--matcher", "loftr"), env=base_env(TORCH_HOME=str(torch_home))
    )
    assert_error(result, 6, torch_home / "hub" / "checkpoints", "loftr_outdoor.ckpt", "--loftr-weights", out=out)
    assert not any(torch_home.iterdir())
