"""Where auditor code runs: a bubblewrap sandbox that sees only what its access allows.

An auditor is untrusted code. In a game it runs in a child process started through
``bwrap`` (Debian package ``bubblewrap``) in fresh user, PID, network, IPC and UTS
namespaces, as an unprivileged uid, with a filesystem made of read-only binds of exactly:
the Python installation and the folders on ``sys.path`` (so the auditor's module imports),
the task's staged inputs (``/in``: the organism's card and weights, its clean samples and
traffic when its access allows, its own fit), a private writable scratch folder, and a private
copy-on-write view of the base-model cache. The zoo, the key, the store, other auditors' fits,
the referee's memory (``/proc``) and the network are not in that world.

Where bubblewrap is missing or refused (macOS, a kernel without user namespaces) the same
child runs as a plain subprocess: the wire between it and the referee is still JSON only,
and no auditor code runs in the referee, but files and processes of the same user are
reachable. Such a run is *unsealed*; the store, leaderboard and report say so.
``AUDITGAME_UNSEALED=1`` asks for that on purpose (to debug an auditor, or to measure what
the sandbox costs).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from auditgame.cache import cache_dir, fits_dir

# Where the child finds its inputs and may write, inside the sandbox.
IN = Path("/in")
SCRATCH = Path("/scratch")
CACHE = Path("/cache")

# The environment a child gets: nothing of the referee's but these (no paths, no tokens).
PASSED_ENV = ("ATEN_CPU_CAPABILITY", "AUDITGAME_DEVICE", "LANG", "LC_ALL", "TZ")

UNSEALED_WARNING = (
    "UNSEALED: bubblewrap is not available here, so auditors run as plain processes of this "
    "user and could read the key and the store; these scores hold for trusted auditors only "
    "(install bubblewrap, e.g. apt-get install bubblewrap, to seal the game)"
)


@dataclass(frozen=True)
class Mounts:
    """What one child sees besides the system: ``inputs`` read-only at ``/in``, ``scratch``
    writable at ``/scratch``, ``work`` (a fit's work folder) writable at the same path, and
    ``hidden`` folders covered by an empty one wherever a bound folder contains them."""

    inputs: Path
    scratch: Path
    work: Path | None = None
    hidden: tuple[Path, ...] = ()


@functools.cache
def bwrap() -> str | None:
    """The bubblewrap binary if it can start a sandbox here, else None (then games run
    unsealed). Probed once per process: a kernel without user namespaces refuses at start."""
    if os.environ.get("AUDITGAME_UNSEALED") == "1":
        return None
    path = shutil.which("bwrap")
    if path is None:
        return None
    probe = [path, "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534"]
    probe += [*_system_binds(), "--", "/bin/true"]
    try:
        ok = subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return path if ok else None


def sealed() -> bool:
    return bwrap() is not None


def command(module: str, mounts: Mounts) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run ``python -m module`` as an auditor's child."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env |= {
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join(_import_path()),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    python = [sys.executable, "-m", module]
    path = bwrap()
    if path is None:
        env |= {
            "HOME": str(mounts.scratch),
            "TMPDIR": str(mounts.scratch),
            "AUDITGAME_CACHE": str(cache_dir()),
            "AUDITGAME_IN": str(mounts.inputs),
            "AUDITGAME_SCRATCH": str(mounts.scratch),
        }
        return python, env
    env |= {
        "HOME": str(SCRATCH),
        "TMPDIR": "/tmp",
        "AUDITGAME_CACHE": str(CACHE),
        "AUDITGAME_IN": str(IN),
        "AUDITGAME_SCRATCH": str(SCRATCH),
    }
    argv = [path, "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534"]
    argv += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
    # Fresh /proc, /dev and /tmp first: a bound folder may itself live under /tmp.
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    argv += _system_binds()
    bound: list[Path] = []
    for folder in _python_roots() + [Path(p) for p in _import_path()]:
        if folder.is_dir() and not any(_within(folder, b) for b in bound):
            argv += ["--ro-bind", str(folder), str(folder)]
            bound.append(folder)
    for secret in mounts.hidden:
        if any(_within(secret, b) for b in bound) and secret.exists():
            argv += ["--tmpfs", str(secret)]
    if os.environ.get("AUDITGAME_DEVICE", "").startswith("cuda"):
        # The GPU's device files, for an auditor asked to run on it (--device cuda).
        for dev in sorted(Path("/dev").glob("nvidia*")):
            argv += ["--dev-bind", str(dev), str(dev)]
    argv += ["--ro-bind", str(mounts.inputs), str(IN), "--bind", str(mounts.scratch), str(SCRATCH)]
    if mounts.work is not None:
        argv += ["--bind", str(mounts.work), str(mounts.work)]
    argv += _cache_binds()
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += ["--chdir", str(SCRATCH), "--", *python]
    return argv, {}


def _system_binds() -> list[str]:
    """The operating system's read-only parts a Python with torch needs, nothing from /etc
    but the loader's cache."""
    binds: list[str] = []
    for folder in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"):
        if Path(folder).exists():
            binds += ["--ro-bind", folder, folder]
    for name in ("/etc/ld.so.cache", "/etc/localtime", "/etc/ssl/certs"):
        if Path(name).exists():
            binds += ["--ro-bind", name, name]
    return binds


def _python_roots() -> list[Path]:
    """The interpreter's installation and the virtual environment, resolved."""
    roots = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    roots.add(Path(sys.executable).resolve().parent.parent)
    return sorted(roots)


def _import_path() -> list[str]:
    """``sys.path`` as folders, resolved; the current folder ('') is left out, since it is
    where users keep their zoos and stores."""
    cwd = Path.cwd().resolve()
    out: list[str] = []
    for entry in sys.path:
        if not entry:
            continue
        folder = Path(entry).resolve()
        if folder == cwd or not folder.is_dir():
            continue
        if str(folder) not in out:
            out.append(str(folder))
    return out


def _cache_binds() -> list[str]:
    """The base-model cache as a private copy-on-write view: each finished entry read-only
    over an empty writable folder, so a child reuses what is built and what it builds itself
    stays in its own sandbox."""
    binds = ["--tmpfs", str(CACHE)]
    root = cache_dir()
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            # The audit command's fits are other auditors' work, and hold shadow zoos' keys.
            if entry.is_dir() and not entry.name.startswith(".") and entry != fits_dir():
                binds += ["--ro-bind", str(entry), str(CACHE / entry.name)]
    return binds


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def describe_mounts(argv: Sequence[str]) -> list[str]:
    """The host paths a sandbox command binds (for tests and ``docs/security.md``)."""
    return [argv[i + 1] for i, a in enumerate(argv) if a in ("--ro-bind", "--bind")]
