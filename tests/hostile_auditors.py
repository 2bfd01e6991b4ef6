"""Hostile auditor plugins for ``tests/test_arena_security.py``.

Each one audits nothing and tries instead to learn a secret or to forge a score by one route a
plugin could take. None is built in or installed: a game names this module
(``AuditorSpec.module``), so it is imported only where the plugin runs, never by the referee.
Whatever an auditor gets its hands on it reports in its evidence, so a test can look.
"""

from __future__ import annotations

import gc
import inspect
import os
import re
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, FittedAuditor, Verdict
from auditgame.finding import Cost, Finding
from auditgame.registry import auditor
from auditgame.subject import Subject

KEYLIKE = re.compile(rb"[A-Za-z0-9_\-]{43}=")
_SCANNED: list[list[str]] = []


def _read(path: str) -> str | None:
    try:
        return Path(path).read_bytes()[:4096].decode(errors="replace")
    except OSError:
        return None


def _memory_keys(pid: int) -> list[str]:
    """Key-like strings in the anonymous writable memory of process ``pid`` (route 6): the
    heap and the mappings Python's allocator makes, which the kernel may merge into one."""
    found: set[str] = set()
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        with open(f"/proc/{pid}/mem", "rb") as mem:
            for line in maps:
                fields = line.split()
                span, perms = fields[:2]
                name = fields[5] if len(fields) > 5 else ""
                if not perms.startswith("rw") or name not in ("", "[heap]"):
                    continue
                start, end = (int(x, 16) for x in span.split("-"))
                try:
                    mem.seek(start)
                    found.update(m.decode() for m in KEYLIKE.findall(mem.read(end - start)))
                except (OSError, ValueError, OverflowError, MemoryError):
                    continue
    except OSError:
        return []
    return sorted(found)[:20000]


def snoop(zoo: str, key: str, store: str) -> dict[str, Any]:
    """Every route to the key, the secrets and the store that needs no cooperation."""
    got: dict[str, Any] = {"pid": os.getpid(), "uid": os.getuid()}
    # Route 1: a Task on the call stack, and the key file beside the zoo.
    tasks = [
        repr(v)
        for frame in inspect.stack()
        for v in frame.frame.f_locals.values()
        if type(v).__name__ == "Task"
    ]
    got["tasks_on_stack"] = tasks
    got["key_file"] = _read(key)
    got["zoo_json"] = _read(str(Path(zoo) / "zoo.json"))
    # Route 5: secrets alive in this process.
    got["secrets_alive"] = sum(type(o).__name__ == "Secret" for o in gc.get_objects())
    # Route 6: other processes: their command lines, environments and memory.
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    got["processes"] = {str(p): _read(f"/proc/{p}/cmdline") for p in pids}
    # Where the referee runs the auditor; once per process (a child serves many organisms).
    if not _SCANNED:
        _SCANNED.append(_memory_keys(os.getppid()))
    got["memory_keys"] = _SCANNED[0]
    # Route 7: the store: read secrets and scores, rewrite rows, insert a fake auditor's.
    got["store"] = []
    try:
        db = sqlite3.connect(f"file:{store}?mode=rw", uri=True, timeout=5)
        got["store"] = [list(r) for r in db.execute("SELECT auditor, secret_json FROM scores")]
        with db:
            db.execute("UPDATE scores SET p_violation = 1.0")
            cols = [r[1] for r in db.execute("PRAGMA table_info(scores)")]
            picked = ", ".join("'fake'" if c == "auditor" else c for c in cols)
            db.execute(f"INSERT INTO scores SELECT {picked} FROM scores LIMIT 1")
        got["store_written"] = True
    except sqlite3.Error as exc:
        got["store_error"] = str(exc)
    # The network.
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=2).close()
        got["network"] = True
    except OSError as exc:
        got["network"] = str(exc)
    return got


@auditor("hostile_snoop")
class Snoop(Auditor):
    """Routes 1, 5, 6 and 7, handed the paths of the zoo, its key and the store (the worst
    case: a real plugin would have to guess them)."""

    access = Access.WEIGHTS

    def __init__(self, *, zoo: str = "", key: str = "", store: str = "") -> None:
        self.zoo, self.key, self.store = zoo, key, store

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        return Verdict(p_violation=0.5, evidence=snoop(self.zoo, self.key, self.store))


@auditor("honest_fit")
class HonestFit(FittedAuditor):
    """A fitted auditor that another's fit could try to overwrite: answers its fitted level."""

    access = Access.WEIGHTS

    def fit(self, family: str, workdir: Path) -> dict[str, torch.Tensor]:
        return {"level": torch.tensor([0.25])}

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        return Verdict(p_violation=float(self.require_fitted()["level"]))


@auditor("hostile_fit")
class PoisonFit(FittedAuditor):
    """Route 4: its fit looks for secrets and the key, carries what it finds out in its fit
    tensors, and overwrites every other fit it can reach."""

    access = Access.WEIGHTS

    def __init__(self, *, zoo: str = "", key: str = "", fits: str = "") -> None:
        self.zoo, self.key, self.fits = zoo, key, fits

    def fit(self, family: str, workdir: Path) -> dict[str, torch.Tensor]:
        loot = {"snoop": snoop(self.zoo, self.key, ""), "overwritten": []}
        for path in Path(self.fits).rglob("*.safetensors") if self.fits else []:
            try:
                path.write_bytes(b"poisoned")
                loot["overwritten"].append(str(path))
            except OSError:
                pass
        blob = repr(loot).encode()
        return {"loot": torch.tensor(list(blob), dtype=torch.uint8)}

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        loot = bytes(self.require_fitted()["loot"].tolist()).decode()
        return Verdict(p_violation=0.5, evidence={"loot": loot})


class Boom:
    """Runs code wherever it is unpickled (route 3)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, ...]]:
        return os.system, (f"touch {self.marker}",)


@auditor("hostile_pickle")
class PickleEvidence(Auditor):
    """Route 3: evidence that runs code when unpickled, or that is no JSON (a numpy array)."""

    access = Access.WEIGHTS

    def __init__(self, *, marker: str = "", array: bool = False) -> None:
        self.marker, self.array = marker, array

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        value: Any = np.zeros(3) if self.array else Boom(self.marker)
        return Verdict(p_violation=1.0, target=0, evidence={"x": value})


@auditor("hostile_forge")
class Forge(Auditor):
    """Answers in another auditor's name, with a perfect score."""

    access = Access.WEIGHTS

    def audit(self, subject: Subject, budget: Budget, *, seed: int = 0) -> Finding:  # type: ignore[misc]
        return Finding(
            auditor="weight_stats", p_violation=1.0, cost=Cost(seconds=0, forward=0, backward=0)
        )

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        raise AssertionError("not called")


@auditor("hostile_hang")
class Hang(Auditor):
    """Never answers."""

    access = Access.WEIGHTS

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        time.sleep(10_000)
        return Verdict(p_violation=1.0)
