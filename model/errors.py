"""Structured errors: every error names what was expected and what arrived.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class DfmqError(Exception):
    """Base of every error the project raises on purpose."""


class DataError(DfmqError):
    """A dataset file is missing or malformed."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        expected: str | None = None,
        got: str | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        self.expected = expected
        self.got = got
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        detail = ""
        if expected is not None:
            detail += f" (expected {expected}"
            detail += f", got {got})" if got is not None else ")"
        super().__init__(f"{where}{message}{detail}")


class ConfigError(DfmqError):
    """An option or config file value is out of range or of the wrong kind."""

    def __init__(self, key: str, expected: str, got: object, source: str | None = None) -> None:
        self.key = key
        self.expected = expected
        self.got = got
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}option '{key}' expected {expected}, got {got!r}")

    def sourced(self, source: str) -> ConfigError:
        """This error naming the file (and section) its value came from, unless it names one already."""
        return self if self.source is not None else ConfigError(self.key, self.expected, self.got, source)


class CheckpointError(DfmqError):
    """A checkpoint folder is missing, incomplete or from an incompatible version."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


class BackendUnavailableError(DfmqError):
    """An optional backend (onnxruntime, tensorrt, sounddevice, CUDA) cannot be used here."""

    def __init__(self, backend: str, reason: str, remedy: str) -> None:
        self.backend = backend
        self.reason = reason
        self.remedy = remedy
        super().__init__(f"{backend} is not available: {reason}. {remedy}")
