"""Where a number came from: package version, git revision and a hash of the code itself.

The git revision is stamped on every row. The code fingerprint goes into a game's id, so a
re-run after any change to the package's source is a new game, never a resumed one: a
leaderboard is never a mix of rows from two versions of an auditor.
"""

from __future__ import annotations

import hashlib
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


@cache
def code_fingerprint() -> str:
    """SHA-256 (16 hex) over the package's Python sources, by relative path and content."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
