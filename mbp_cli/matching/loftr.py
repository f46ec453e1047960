"""LoFTR dense matcher (kornia's implementation) with locally provided weights.

Weights are never downloaded: the product runs offline. They are looked up, in this order, at

1. the ``weights_path`` argument (the CLI's ``--loftr-weights PATH``),
2. the ``MBP_LOFTR_WEIGHTS`` environment variable,
3. torch hub's cache, ``torch.hub.get_dir()/checkpoints/loftr_outdoor.ckpt``: the file that
   ``kornia.feature.LoFTR(pretrained="outdoor")`` downloads, so a machine where kornia fetched it once works as is.

A checkpoint is either kornia's/LoFTR's Lightning checkpoint (a dict with a ``"state_dict"`` whose keys may carry
the ``"matcher."`` prefix, which kornia's ``LoFTR.load_state_dict`` strips) or a raw state dict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbp_cli.errors import WeightsError
from mbp_cli.matching.sift import as_grayscale_uint8, resize_image, resized_size, to_original_coordinates
from mbp_cli.matching.types import Matches

WEIGHTS_ENV = "MBP_LOFTR_WEIGHTS"
WEIGHTS_FILE = "loftr_outdoor.ckpt"
DEFAULT_RESIZE = 640
# LoFTR's coarse level has stride 8: images whose sides are multiples of 8 put coarse cells exactly on the pixel
# grid the pretrained models were trained on.
_STRIDE = 8


def hub_weights_path() -> Path:
    """Where kornia's ``LoFTR(pretrained="outdoor")`` caches its checkpoint: ``<torch hub dir>/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def resolve_weights_path(weights_path: str | os.PathLike[str] | None = None) -> Path:
    """Find the LoFTR checkpoint: explicit path, else ``$MBP_LOFTR_WEIGHTS``, else torch hub's cache.

    An explicit path or a set environment variable that names a missing file is an error (no silent fallback to
    another file than the one the user asked for).

    Args:
        weights_path: explicit checkpoint path, or ``None``.

    Returns:
        Path of an existing file.

    Raises:
        WeightsError: no checkpoint where it was looked for; the one-line message says where to put it.
    """
    hub_dir = hub_weights_path().parent
    remedy = f"place {WEIGHTS_FILE} at {hub_dir}/ or pass --loftr-weights PATH (or set {WEIGHTS_ENV})"
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsError(f"LoFTR weights not found at {path} (--loftr-weights): pass an existing {WEIGHTS_FILE}")
        return path
    env = os.environ.get(WEIGHTS_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise WeightsError(f"LoFTR weights not found at {path} ({WEIGHTS_ENV}): fix the variable, or {remedy}")
        return path
    path = hub_weights_path()
    if not path.is_file():
        raise WeightsError(f"LoFTR weights not found: {remedy}")
    return path


def _first_line(error: BaseException) -> str:
    """First line of an exception message, short enough for a one-line user message."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def load_loftr(path: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build kornia's LoFTR (default outdoor config) and load a checkpoint into it, in evaluation mode.

    Mirrors ``kornia.feature.LoFTR(pretrained=...)``, which does ``load_state_dict(ckpt["state_dict"])`` on the
    downloaded file, but reads a local file with ``weights_only=True`` (no code runs from the checkpoint).

    Args:
        path: checkpoint file: a dict with a ``"state_dict"`` entry, or a raw state dict.
        device: device to put the model on.

    Returns:
        The LoFTR module in eval mode with gradients disabled.

    Raises:
        WeightsError: the file cannot be read as a torch checkpoint or does not hold LoFTR's parameters.
    """
    import kornia.feature as KF

    fix = f"replace it with kornia's {WEIGHTS_FILE}"
    try:
        checkpoint: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types on a corrupt file (UnpicklingError, RuntimeError, EOFError...)
        raise WeightsError(f"LoFTR weights file {path} is unreadable ({_first_line(error)}): {fix}") from error
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"LoFTR weights file {path} holds no state dict of tensors: {fix}")

    model = KF.LoFTR(pretrained=None)
    try:
        # strict=False to report missing/unexpected keys in one line ourselves; shape mismatches still raise.
        result = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as error:
        reason = _first_line(error)
        raise WeightsError(f"LoFTR weights file {path} does not match kornia's LoFTR ({reason}): {fix}") from error
    if result.missing_keys or result.unexpected_keys:
        example = (result.missing_keys or result.unexpected_keys)[0]
        raise WeightsError(
            f"LoFTR weights file {path} does not match kornia's LoFTR ({len(result.missing_keys)} missing, "
            f"{len(result.unexpected_keys)} unexpected parameters, e.g. {example!r}): {fix}"
        )
    # pretrained=None builds the module in training mode, where coarse matching needs ground truth: switch to eval.
    return model.eval().requires_grad_(False).to(device)


class LoftrMatcher:
    """Detector-free LoFTR matches between two grayscale images, returned at full resolution.

    Each image is resized so that its longer side is ``resize`` and both sides are multiples of 8 (its own per-axis
    factors, so the aspect ratio changes by at most a few pixels), matched, and keypoints are mapped back exactly
    (pixel centre at (0, 0)). kornia's LoFTR returns coordinates in the reference implementation's frame, where
    pixel centres are at ``+0.5`` (see ``kornia.feature.LoFTR``): 0.5 is subtracted before mapping back.

    Args:
        weights_path: LoFTR checkpoint; ``None`` looks at ``$MBP_LOFTR_WEIGHTS`` then torch hub's cache.
        resize: longer side in pixels of the images given to LoFTR (rounded to a multiple of 8); ``None`` keeps the
            original size, rounded to multiples of 8. 640 is LoFTR's usual outdoor test resolution on CPU budgets.
        device: torch device to run on; results come back on the CPU.

    Raises:
        WeightsError: checkpoint missing, unreadable or not LoFTR's (raised by the constructor, before any image).
    """

    def __init__(
        self,
        weights_path: str | os.PathLike[str] | None = None,
        resize: int | None = DEFAULT_RESIZE,
        device: str | torch.device = "cpu",
    ) -> None:
        if resize is not None and resize < 4 * _STRIDE:
            raise ValueError(f"resize (long side in pixels) must be at least {4 * _STRIDE} or None, got {resize}")
        self.resize = None if resize is None else int(resize)
        self.device = torch.device(device)
        self.weights_path = resolve_weights_path(weights_path)
        self._model = load_loftr(self.weights_path, self.device)

    @property
    def name(self) -> str:
        """Name and settings, e.g. ``loftr(weights=loftr_outdoor.ckpt,resize=640)``."""
        return f"loftr(weights={self.weights_path.name},resize={self.resize})"

    def __repr__(self) -> str:
        return self.name

    def _prepare(self, image: np.ndarray, name: str) -> tuple[torch.Tensor, tuple[float, float]]:
        """(1, 1, H', W') float tensor in [0, 1] with H', W' multiples of 8, and the (sx, sy) resize factors."""
        gray = as_grayscale_uint8(image, name)
        height, width = gray.shape
        work, scale = resize_image(gray, resized_size(height, width, self.resize, multiple=_STRIDE))
        tensor = torch.from_numpy(np.ascontiguousarray(work)).to(self.device, torch.float32)[None, None] / 255.0
        return tensor, scale

    def __call__(self, image0: np.ndarray, image1: np.ndarray) -> Matches:
        """Match two images.

        Args:
            image0: (H0, W0) uint8 grayscale image 0 as stored on disk (or (H0, W0, 3) BGR).
            image1: (H1, W1) uint8 grayscale image 1.

        Returns:
            Matches with (M, 2) float64 full-resolution keypoints and side ``confidence`` ((M,) float64, the coarse
            dual-softmax score, above LoFTR's 0.2 threshold). Possibly empty.

        Raises:
            ImageError: an image is not 8-bit grayscale/BGR or is too small.
        """
        tensor0, scale0 = self._prepare(image0, "image0")
        tensor1, scale1 = self._prepare(image1, "image1")
        with torch.inference_mode():
            out = self._model({"image0": tensor0, "image1": tensor1})
        # reference frame (pixel centres at +0.5) -> pixel centres at 0 in the resized image -> original image
        keypoints0 = to_original_coordinates(out["keypoints0"].double().cpu() - 0.5, scale0)
        keypoints1 = to_original_coordinates(out["keypoints1"].double().cpu() - 0.5, scale1)
        confidence = out["confidence"].double().cpu()
        return Matches(keypoints0, keypoints1, {"confidence": confidence}, self.name)
