"""Where a number came from: package version and git revision, stamped on every row."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

from auditgame import __version__


@cache
def git_revision() -> str:
    """The checkout's commit (``+dirty`` when it has uncommitted changes), or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def package_version() -> str:
    return __version__
