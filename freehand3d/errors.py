"""Errors raised by freehand3d for problems a user can fix (bad files, bad settings).

Every error names the file (or the setting) and the problem in one sentence; the CLI prints
``freehand3d: error: <path>: <problem>`` on stderr and exits with code 2. Anything else that escapes
is a bug in freehand3d and keeps its traceback.
"""

from __future__ import annotations

import os


class Freehand3DError(Exception):
    """Base class. ``path`` is the file or setting at fault (may be None), ``problem`` the sentence."""

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.problem = str(problem)
        self.path = None if path is None else os.fspath(path)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


class InputError(Freehand3DError):
    """An input file or array is unreadable, truncated, inconsistent or of the wrong kind."""


class ConfigError(Freehand3DError):
    """A configuration (device-set XML, phantom YAML, CLI option combination) is invalid."""


class CheckpointError(InputError):
    """A model checkpoint does not match the architecture (missing, unexpected or mis-shaped keys)."""


class OutputError(Freehand3DError):
    """An output cannot be written: its folder is missing, read-only or a file, a folder is in the
    way of the file, or the disk is full."""


class ResourceError(Freehand3DError):
    """A request would need more memory (or another resource) than allowed."""


class StreamError(Freehand3DError):
    """An OpenIGTLink connection could not be made or kept."""


class CalibrationError(Freehand3DError):
    """Calibration cannot proceed, e.g. too few usable frames."""


def describe_os_error(exc: OSError) -> str:
    """``'<file>: <reason>'`` for an OSError (read-only folder, full disk, a folder in the way ...)."""
    reason = exc.strerror or exc.__class__.__name__
    where = exc.filename if exc.filename is not None else None
    return f"{where}: {reason}" if where is not None else f"{reason} ({exc})"
