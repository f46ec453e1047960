"""Safe output files: checked before any work is done, written atomically, never over an input."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mbp_cli.errors import OutputError


def check_output_path(
    path: str | os.PathLike[str], overwrite: bool, inputs: tuple[str | os.PathLike[str], ...] = ()
) -> Path:
    """Validate an output path up front so that a long run never fails at its last step.

    Raises:
        OutputError: the path is an input file, a directory, exists without ``overwrite``, or its folder is
            missing or not writable.
    """
    out = Path(path)
    resolved = out.resolve()
    for item in inputs:
        if Path(item).resolve() == resolved:
            raise OutputError(f"output {out} is one of the input files; choose another output path")
    if out.is_dir():
        raise OutputError(f"output {out} is a directory; give a file path")
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} already exists; pass --overwrite or choose another path")
    parent = resolved.parent
    if not parent.is_dir():
        raise OutputError(f"folder {parent} of output {out} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"folder {parent} of output {out} is not writable; choose another path")
    return out


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place (all or nothing)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.resolve().parent)
    try:
        # mkstemp creates the file readable by its owner only; give it the permissions open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))
