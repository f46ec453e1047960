"""The product's main job on one pair: images + calibration -> matches -> robust pose, with timings.

``mbp estimate`` is a thin wrapper over :func:`estimate_pair`; evaluation reuses the same function so that
evaluated numbers are those users get.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mbp_cli.errors import CalibrationError, ImageError, TooFewMatchesError
from mbp_cli.estimator import RelativePose, estimate_relative_pose
from mbp_cli.geometry.solver import SAMPLE_SIZE
from mbp_cli.io.calibration import Camera
from mbp_cli.io.images import check_pair_distinct, is_textureless, load_image
from mbp_cli.matching import MATCHERS, Matches, create_matcher
from mbp_cli.matching.types import match_quality
from mbp_cli.robust.ransac import RansacOptions

if TYPE_CHECKING:
    from mbp_cli.network.consensus import ConsensusNetwork


@dataclass(frozen=True)
class EstimateConfig:
    """Everything that determines the result of :func:`estimate_pair`.

    Attributes:
        matcher: ``sift`` (default backend), ``sift-opencv``, ``sift-kornia`` or ``loftr``.
        num_features: SIFT features per image at most.
        ratio: Lowe ratio-test threshold of the SIFT matchers.
        resize: long side in pixels of the images used for matching (None: full resolution). Keypoints are
            mapped back to full resolution, so the calibration always refers to the stored images.
        loftr_weights: LoFTR checkpoint path (else ``MBP_LOFTR_WEIGHTS`` or torch-hub's cache).
        ransac: robust-estimation options (threshold in pixels).
        device: ``cpu`` or ``cuda`` for the estimator.
        network: score the matches with the consensus network and sample by its scores (``ransac.sampler``
            ``gumbel`` or ``prosac``); False is the classical path (PROSAC by Lowe ratio or uniform).
        model: name of a shipped model (None: the default model for the matcher's kind of matches,
            :data:`mbp_cli.network.weights.DEFAULT_MODELS`).
        weights: a weights file instead of a shipped model.
    """

    matcher: str = "sift"
    num_features: int = 8000
    ratio: float = 0.8
    resize: int | None = None
    loftr_weights: str | None = None
    ransac: RansacOptions = field(default_factory=RansacOptions)
    device: str = "cpu"
    network: bool = True
    model: str | None = None
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise ValueError(f"unknown matcher {self.matcher!r}; choose one of {', '.join(MATCHERS)}")
        if not self.network and (self.model is not None or self.weights is not None):
            raise ValueError("--no-network cannot be combined with --model or --weights")
        if self.model is not None and self.weights is not None:
            raise ValueError("give either --model or --weights, not both")
        if not self.network and self.ransac.sampler == "gumbel":
            raise ValueError(
                "the gumbel sampler draws by the network's scores; without a network use prosac or uniform"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}; choose auto, cpu or cuda")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PairResult:
    """Outcome of :func:`estimate_pair` (``pose`` is None when ``info["status"] == "no_model"``)."""

    image0: str
    image1: str
    camera0: Camera
    camera1: Camera
    matches: Matches
    pose: RelativePose | None
    info: dict[str, Any]
    timings_ms: dict[str, float]

    @property
    def status(self) -> str:
        return str(self.info["status"])


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error with a fix."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but no CUDA GPU is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


@contextmanager
def _native_stderr_held() -> Iterator[None]:
    """Hold what native code (libpng, libtiff, ...) writes on file descriptor 2 during the block.

    Decoders report a corrupt file there themselves (``libpng error: PNG input buffer is incomplete``), which would
    add a line to the one-line error of the CLI. When the block raises, the held text is dropped (the exception
    says what is wrong); when it succeeds, the text is passed on to stderr unchanged (e.g. libjpeg's warnings on
    an image that still decodes).
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no usable fd 2: nothing to hold
        yield
        return
    failed = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            try:
                sys.stderr.flush()
            except (AttributeError, OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                held.seek(0)
                text = held.read()
                if text:
                    os.write(2, text)


def load_image_quietly(path: str | os.PathLike[str]) -> Any:
    """:func:`load_image`, without the decoder's own messages on stderr when the image cannot be read."""
    with _native_stderr_held():
        return load_image(path)


def _check_image_size(camera: Camera, image_shape: tuple[int, ...], which: str, path: str) -> None:
    height, width = image_shape[:2]
    if camera.width is not None and camera.height is not None and (camera.width, camera.height) != (width, height):
        raise CalibrationError(
            f"the calibration of {which} is for {camera.width}x{camera.height} pixels but {path} is {width}x{height}; "
            "give the calibration of the stored image"
        )


def check_image(
    image: Any, camera: Camera, which: str, path: str | os.PathLike[str], textureless: bool | None = None
) -> None:
    """Refuse an image without texture, or whose size differs from its calibration's.

    Args:
        image: the image as loaded (``(H, W)`` or ``(H, W, 3)`` uint8).
        camera: its calibration (the size check is skipped when the calibration does not give a size).
        which: ``"image 0"`` or ``"image 1"``, for the message.
        path: its file, for the message.
        textureless: :func:`is_textureless` of the image when already known (``mbp eval`` computes it once per
            image); None computes it.

    Raises:
        ImageError: no texture to match.
        CalibrationError: the calibration is for another image size.
    """
    if is_textureless(image) if textureless is None else textureless:
        raise ImageError(f"image {path} has no texture to match; use a textured view of the scene")
    _check_image_size(camera, image.shape, which, str(path))


def create_pair_matcher(config: EstimateConfig) -> Any:
    """The matcher named by ``config`` with its options."""
    if config.matcher == "loftr":
        return create_matcher(
            "loftr", weights_path=config.loftr_weights, **({"resize": config.resize} if config.resize else {})
        )
    return create_matcher(config.matcher, num_features=config.num_features, ratio=config.ratio, resize=config.resize)


def matches_kind(matcher: str) -> str:
    """The kind of matches (network inputs) a matcher gives: ``loftr`` or ``sift``."""
    return "loftr" if matcher == "loftr" else "sift"


@functools.lru_cache(maxsize=4)
def create_network(config: EstimateConfig) -> ConsensusNetwork | None:
    """The consensus network ``config`` asks for (None: the classical path).

    Loaded once per configuration and process (cached): every pair of a run shares the same network, in eval mode.

    Raises:
        WeightsError: missing, corrupt or mismatched weights (exit code 6).
        ValueError: a model made for another kind of matches than ``config.matcher`` gives.
    """
    from mbp_cli.network.weights import DEFAULT_MODELS, load_model, load_weights

    kind = matches_kind(config.matcher)
    if not config.network or config.ransac.sampler == "uniform":  # uniform sampling uses no scores
        return None
    if config.weights is not None:
        network = load_weights(config.weights)
    elif config.model is not None:
        network = load_model(config.model)
    elif kind in DEFAULT_MODELS:
        network = load_model(DEFAULT_MODELS[kind])
    else:
        raise ValueError(f"no model for {kind} matches is shipped; give one with --weights, or --no-network")
    if network.config.inputs != kind:
        raise ValueError(
            f"the network {network.source} takes {network.config.inputs} matches but --matcher {config.matcher} "
            f"gives {kind} matches; choose a {kind} model or --no-network"
        )
    return network.to(resolve_device(config.device))


def estimate_pair(
    image0: str | os.PathLike[str],
    image1: str | os.PathLike[str],
    camera0: Camera,
    camera1: Camera,
    config: EstimateConfig = EstimateConfig(),
    matcher: Any = None,
    network: ConsensusNetwork | None = None,
) -> PairResult:
    """Match two images and estimate their relative pose ``x1 = R x0 + t``.

    Args:
        image0, image1: image paths (read as stored: no EXIF rotation).
        camera0, camera1: their calibrations.
        config: matcher and estimator settings.
        matcher: an already built matcher to reuse across pairs (else built from ``config``).
        network: the consensus network to use (else :func:`create_network` of ``config``).

    Returns:
        A :class:`PairResult` with per-stage timings (``load``, ``matching``, ``estimation`` and the
        estimator's own stages).

    Raises:
        ImageError: a missing, unreadable, corrupt, identical or textureless image.
        CalibrationError: a calibration whose image size does not match the image.
        TooFewMatchesError: fewer matches than a minimal sample.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    img0 = load_image_quietly(image0)
    img1 = load_image_quietly(image1)
    check_pair_distinct(img0, img1, image0, image1)
    check_image(img0, camera0, "image 0", image0)
    check_image(img1, camera1, "image 1", image1)
    timings["load"] = (time.perf_counter() - start) * 1e3

    start = time.perf_counter()
    matcher = matcher or create_pair_matcher(config)
    matches = matcher(img0, img1)
    timings["matching"] = (time.perf_counter() - start) * 1e3

    pose, info, timings["estimation"] = estimate_matches(
        matches, camera0, camera1, config, image0, image1, network=network
    )
    timings["total"] = timings["load"] + timings["matching"] + timings["estimation"]
    return PairResult(str(image0), str(image1), camera0, camera1, matches, pose, info, timings)


def estimate_matches(
    matches: Matches,
    camera0: Camera,
    camera1: Camera,
    config: EstimateConfig = EstimateConfig(),
    image0: str | os.PathLike[str] = "image 0",
    image1: str | os.PathLike[str] = "image 1",
    network: ConsensusNetwork | None = None,
) -> tuple[RelativePose | None, dict[str, Any], float]:
    """The estimation step of :func:`estimate_pair` on matches already computed (``mbp eval`` shares it).

    Args:
        matches: tentative matches of image 0 and image 1, pixels of the stored images.
        camera0, camera1: their calibrations.
        config: its ``ransac`` options and ``device`` are used.
        network: the consensus network guiding the sampler (else :func:`create_network` of ``config``, which is
            None on the classical path).
        image0, image1: names of the images, for the message of :class:`TooFewMatchesError`.

    Returns:
        ``(pose, info, milliseconds)`` with ``pose`` and ``info`` as :func:`estimate_relative_pose` returns them.

    Raises:
        TooFewMatchesError: fewer matches than a minimal sample.
    """
    if len(matches) < SAMPLE_SIZE:
        raise TooFewMatchesError(
            f"only {len(matches)} matches between {image0} and {image1}, a pose needs at least {SAMPLE_SIZE}; "
            "use images that overlap more, or loosen --ratio"
        )
    network = network if network is not None else create_network(config)
    start = time.perf_counter()
    pose, info = estimate_relative_pose(
        matches.keypoints0,
        matches.keypoints1,
        camera0,
        camera1,
        config.ransac,
        quality=match_quality(matches.side),
        device=resolve_device(config.device),
        network=network,
        side=matches.side,
    )
    info["network"] = None if network is None or config.ransac.sampler == "uniform" else network.source
    return pose, info, (time.perf_counter() - start) * 1e3
