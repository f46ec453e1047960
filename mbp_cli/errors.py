"""User-facing errors with one distinct exit code per kind of problem.

Library code raises these; the CLI turns them into a one-line message and the exit code, never a traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the ``mbp`` command (documented in the README)."""

    OK = 0  # success, including "estimated but flagged degenerate"
    NO_MODEL = 1  # the estimator ran but found no model
    USAGE = 2  # bad command-line usage (typer/click's own code)
    IMAGE = 3  # missing, unreadable or corrupt image; identical or textureless images
    CALIBRATION = 4  # malformed, singular or wrong number of calibrations
    OUTPUT = 5  # an output path cannot be written (or would overwrite an input)
    WEIGHTS = 6  # a weights file is missing or does not match its config
    TOO_FEW_MATCHES = 7  # fewer matches than a minimal sample needs


class MbpError(Exception):
    """Base class: ``message`` is one line that says what to fix."""

    exit_code: ExitCode = ExitCode.NO_MODEL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ImageError(MbpError):
    exit_code = ExitCode.IMAGE


class CalibrationError(MbpError):
    exit_code = ExitCode.CALIBRATION


class OutputError(MbpError):
    exit_code = ExitCode.OUTPUT


class WeightsError(MbpError):
    exit_code = ExitCode.WEIGHTS


class TooFewMatchesError(MbpError):
    exit_code = ExitCode.TOO_FEW_MATCHES
