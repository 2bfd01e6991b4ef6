"""A per-user cache for expensive, deterministic artefacts: a pretrained base model, a model
converted from a shipped file.

Text families pretrain (``tinylm``) or convert (``smollm``) their base model once and reload
it from here as safetensors; never pickle. An artefact is built under an exclusive file lock
and moved into place atomically, so parallel workers build it once and an interrupted build
leaves nothing half-written. ``AUDITGAME_CACHE`` moves the cache (default
``~/.cache/auditgame``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("AUDITGAME_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "auditgame"


def fits_dir() -> Path:
    """Where ``auditgame audit`` keeps auditors' fits, shared by audits run from any folder.
    Not a base model: a game's sandboxes see the rest of the cache, never this folder (other
    auditors' fits, and the shadow zoos with their keys)."""
    return cache_dir() / "fits"


def cached_folder(name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``cache_dir()/name``, built by ``build(tmp_folder)`` if it is missing."""
    final = cache_dir() / name
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.with_name(final.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-"))
        try:
            build(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
