"""Errors a user can act on: each says what was wrong, where, and what to do."""

from __future__ import annotations

from pathlib import Path


class AuditgameError(Exception):
    """Base of every error auditgame raises on bad input."""


class ZooError(AuditgameError):
    """A zoo file is missing, truncated, tampered with or unreadable.

    Attributes:
        path: the file at fault.
        problem: what is wrong with it.
        hint: how to fix it, if known.
    """

    def __init__(self, path: Path | str, problem: str, hint: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.hint = hint
        message = f"{self.path}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[ZooError], tuple[Path, str, str]]:
        # Rebuilt from its parts, so it crosses process boundaries (worker pools, Ray); the
        # default pickling replays only the message, which does not fit ``__init__``.
        return type(self), (self.path, self.problem, self.hint)


class RegistryError(AuditgameError):
    """An unknown family, attack or auditor name, or a name registered twice."""


class AccessError(AuditgameError):
    """An auditor asked for data its declared access level does not allow."""
