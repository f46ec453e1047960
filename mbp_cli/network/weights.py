"""Consensus-network weights: safetensors files checked against their configuration, by name or by path.

A weights file holds the network's tensors (parameters and batch-norm statistics) and, in its metadata, the
resolved :class:`NetworkConfig` and a SHA-256 of the tensors. A shipped model is a pair: ``weights/<name>.safetensors``
and ``models/<name>.json`` (architecture, inputs, training data and licence, recipe and command, validation
metrics, and the SHA-256 of the weights file). In a source checkout these are the repository's top-level
``weights/`` and ``models/`` folders; an installed package carries them as ``mbp_cli/shipped/{weights,models}``.

Loading checks, in order: the file exists and parses as safetensors, the file's SHA-256 matches the model card
(by name), the metadata's configuration equals the model card's (by name), the tensors' checksum matches the
metadata, and the tensors are exactly those of the configured architecture. Any failure is a
:class:`~mbp_cli.errors.WeightsError` (exit code 6) that says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from mbp_cli.errors import WeightsError
from mbp_cli.io.output import atomic_write_bytes, atomic_write_text
from mbp_cli.network.config import NetworkConfig
from mbp_cli.network.consensus import ConsensusNetwork

FORMAT = "mbp-consensus-network"
FORMAT_VERSION = "1"
# The best shipped model, used unless --model/--weights/--no-network say otherwise (see models/<name>.json).
DEFAULT_MODEL = "sift-kl-w32-small-label1px"
# The default model per kind of matches; a kind without one (LoFTR, for now) takes the classical path.
DEFAULT_MODELS = {"sift": DEFAULT_MODEL}


def _source_root() -> Path:
    return Path(__file__).resolve().parents[2]


def shipped_dirs() -> tuple[Path, Path]:
    """``(models_dir, weights_dir)`` of the shipped models: inside the installed package, else the checkout's."""
    packaged = Path(str(resources.files("mbp_cli"))) / "shipped"
    if (packaged / "models").is_dir():
        return packaged / "models", packaged / "weights"
    return _source_root() / "models", _source_root() / "weights"


def available_models() -> list[str]:
    """Names of the shipped models (``models/<name>.json``), sorted."""
    models_dir, _ = shipped_dirs()
    return sorted(p.stem for p in models_dir.glob("*.json")) if models_dir.is_dir() else []


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(model: ConsensusNetwork, path: str | os.PathLike[str], extra: dict[str, str] | None = None) -> str:
    """Write the model's tensors and configuration to a safetensors file, atomically.

    Args:
        model: the network (its tensors are saved in float32 from the CPU).
        path: the ``.safetensors`` file to write (replaced if it exists).
        extra: more metadata strings (e.g. the model's name).

    Returns:
        The SHA-256 of the written file.
    """
    tensors = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_json(),
        "tensors_sha256": tensors_checksum(tensors),
        **(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save_safetensors_bytes(tensors, metadata=metadata))
    return file_sha256(path)


def write_model_card(out: str | os.PathLike[str], name: str, card: dict[str, Any]) -> Path:
    """Write ``<out>/models/<name>.json`` atomically (a training recipe's last step, next to its weights file)."""
    path = Path(out) / "models" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a weights file, every failure as a WeightsError."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; give an existing .safetensors file")
    data = path.read_bytes()
    try:
        tensors = load_safetensors_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError) as exc:
        raise WeightsError(
            f"weights file {path} is corrupt or not a safetensors file ({exc}); restore or re-download it"
        ) from None
    if metadata.get("format") != FORMAT:
        raise WeightsError(f"weights file {path} is not an mbp consensus-network file (no '{FORMAT}' metadata)")
    if tensors_checksum(tensors) != metadata.get("tensors_sha256"):
        raise WeightsError(f"weights file {path} is corrupt: its tensors do not match their checksum; restore it")
    return tensors, metadata


def _build(tensors: dict[str, torch.Tensor], config: NetworkConfig, source: str) -> ConsensusNetwork:
    model = ConsensusNetwork(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if names
        )
        raise WeightsError(f"the weights of {source} do not fit their configured architecture ({details})")
    model.load_state_dict(tensors)
    model.source = source
    return model.eval()


def load_weights(path: str | os.PathLike[str]) -> ConsensusNetwork:
    """A network from a weights file, with the configuration stored in the file (``--weights FILE``).

    Raises:
        WeightsError: missing, corrupt or foreign file, or tensors that do not fit the stored configuration.
    """
    path = Path(path).expanduser()
    tensors, metadata = _read(path)
    try:
        config = NetworkConfig.from_json(metadata["config"])
    except (KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"weights file {path} has no valid network configuration ({exc})") from None
    return _build(tensors, config, str(path))


def model_card(name: str) -> dict[str, Any]:
    """The configuration file ``models/<name>.json`` of a shipped model.

    Raises:
        WeightsError: no such model (the message lists the shipped ones) or an unreadable card.
    """
    models_dir, _ = shipped_dirs()
    path = models_dir / f"{name}.json"
    if not path.is_file():
        names = available_models()
        raise WeightsError(
            f"no shipped model named {name!r}; choose one of {', '.join(names) or '(none shipped)'}, "
            "or give a file with --weights"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"model file {path} is unreadable ({exc}); restore it") from None


def load_model(name: str = DEFAULT_MODEL) -> ConsensusNetwork:
    """A shipped network by name (``--model NAME``), checked against its model card.

    Raises:
        WeightsError: unknown name, missing or corrupt weights file, or a file that does not match the card.
    """
    card = model_card(name)
    _, weights_dir = shipped_dirs()
    path = weights_dir / card["weights"]["file"]
    if not path.is_file():
        raise WeightsError(f"the weights of model {name!r} are missing: {path} does not exist; reinstall mbp")
    if file_sha256(path) != card["weights"]["sha256"]:
        raise WeightsError(
            f"weights file {path} does not match model {name!r} (SHA-256 differs from models/{name}.json); "
            "it is corrupt or from another model: reinstall mbp"
        )
    tensors, metadata = _read(path)
    config = NetworkConfig.from_dict(card["architecture"]["config"])
    try:
        stored = NetworkConfig.from_json(metadata["config"])
    except (KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"weights file {path} has no valid network configuration ({exc})") from None
    if stored != config:
        raise WeightsError(
            f"weights file {path} was saved with another configuration than models/{name}.json "
            f"({stored} vs {config}); reinstall mbp"
        )
    return _build(tensors, config, name)
