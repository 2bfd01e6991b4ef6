"""Run a game's tasks on a Ray cluster, while the referee stays where the key is.

A game outgrows one machine long before its referee does: auditing is the expensive part,
judging a finding is cheap. So only ``run_task`` goes to the cluster; every outcome comes back
to the calling process as soon as it finishes (``ray.wait``), where ``on_outcome`` judges it
and commits its row to the same SQLite store. An interrupted run therefore resumes exactly
like a local one, and the key never leaves the referee: tasks carry neither key nor secret.
``run_task`` starts the auditor's sandbox (``auditgame.run.sandbox``) on the node that runs it, so
every node needs bubblewrap to run sealed.

Weights travel by content hash, never as pickled models. By default a task carries the
organism's folder, which every node must see at the same path (a shared filesystem); the
worker opens it with ``Organism.open``, which checks the card against the folder's id and the
weights against the card's SHA-256. With ``ship_files`` the referee instead puts each
organism's public files (card and safetensors weights, never the sealed secret) into Ray's
object store once, and a worker writes them to a local folder named by the organism id and
opens that the same way before caching it, so a byte changed in transit fails the same check
as one changed on disk.

Ray is an optional extra: importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from auditgame.errors import AuditgameError, ZooError
from auditgame.organism import CARD, WEIGHTS, Organism
from auditgame.run.base import OnOutcome
from auditgame.run.sealed import Fit
from auditgame.run.task import Outcome, Task, run_task
from auditgame.run.workers import configure_worker

INSTALL_HINT = "the Ray executor needs Ray: install it with pip install 'auditgame[ray]'"

# Torch's OpenMP threads busy-wait by default; each Ray worker holds one CPU (see workers.py).
# Given to the job, not to each task: a task-level runtime_env, even an identical one, makes
# Ray start workers of its own beside the ones it prestarted for the job (on two busy cores
# the first result came 6 s later). The worker also calls ``configure_worker``, so a session
# started elsewhere without it still runs one torch thread.
RUNTIME_ENV = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}}


def import_ray() -> Any:
    """Ray, or an ``AuditgameError`` that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise AuditgameError(INSTALL_HINT) from exc
    return ray


class RayExecutor:
    """Runs tasks as Ray tasks of one CPU each, at most ``2 x`` the cluster's CPUs in flight.

    Args:
        address: a running cluster to connect to (``"auto"``, ``"ray://host:10001"``, …);
            ``None`` uses the Ray session this process already has, or else starts a local
            cluster of ``num_cpus`` CPUs (default: all cores). A cluster it started is shut
            down, one it connected to is left, when ``run`` returns or is interrupted.
        num_cpus: CPUs of the local cluster; ignored when connecting to one.
        ship_files: send organism and fit files through the object store (for a cluster
            without a shared filesystem) instead of passing their paths.
    """

    def __init__(
        self, address: str | None = None, num_cpus: int | None = None, ship_files: bool = False
    ) -> None:
        self._ray = import_ray()
        self.address = address
        self.num_cpus = num_cpus
        self.ship_files = ship_files

    def run(self, tasks: Sequence[Task], on_outcome: OnOutcome) -> None:
        if not tasks:
            return
        ray = self._ray
        started = not ray.is_initialized()
        if started:
            ray.init(
                address=self.address,
                num_cpus=None if self.address else self.num_cpus,
                runtime_env=RUNTIME_ENV,
                include_dashboard=False,
                logging_level="WARNING",
            )
        try:
            self._stream(tasks, on_outcome)
        finally:
            if started:
                ray.shutdown()

    def _stream(self, tasks: Sequence[Task], on_outcome: OnOutcome) -> None:
        ray = self._ray
        remote = ray.remote(num_cpus=1)(_run_on_worker)
        limit = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        shipper = _Shipper(ray, tasks) if self.ship_files else None
        queue = deque(tasks)
        pending: dict[Any, Task] = {}
        try:
            # Keep the queue short so an interrupted run has little in flight to redo.
            while queue or pending:
                while queue and len(pending) < limit:
                    task = queue.popleft()
                    files = shipper.send(task) if shipper else (None, None)
                    pending[remote.remote(task, *files)] = task
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(ref)
                outcome = _result(ray, ref)
                if shipper:
                    shipper.done(task)
                on_outcome(task, outcome)
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise


def _result(ray: Any, ref: Any) -> Outcome:
    """The task's outcome; a task's own exception is raised as itself, as a local run would."""
    try:
        outcome: Outcome = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from exc
        raise
    return outcome


class _Shipper:
    """Puts each organism's and fit's files into the object store once, while tasks need them.

    A reference is dropped when the last task that uses it has finished, so the object store
    holds only the organisms in flight, not the whole zoo.
    """

    def __init__(self, ray: Any, tasks: Sequence[Task]) -> None:
        self._ray = ray
        self._uses = Counter(path for task in tasks for path in _keys(task))
        self._refs: dict[Path, Any] = {}

    def send(self, task: Task) -> tuple[Any, Any]:
        organism = self._ref(task.organism_path, _organism_files)
        fit = self._ref(task.fit.path, _fit_file) if task.fit is not None else None
        return organism, fit

    def done(self, task: Task) -> None:
        for path in _keys(task):
            self._uses[path] -= 1
            if self._uses[path] == 0:
                self._refs.pop(path, None)

    def _ref(self, path: Path, read: Any) -> Any:
        if path not in self._refs:
            self._refs[path] = self._ray.put(read(path))
        return self._refs[path]


def _keys(task: Task) -> tuple[Path, ...]:
    return (task.organism_path,) if task.fit is None else (task.organism_path, task.fit.path)


def _organism_files(folder: Path) -> dict[str, bytes]:
    """The organism's public files; its folder name, the id, is what the worker checks."""
    return {name: (folder / name).read_bytes() for name in (CARD, WEIGHTS)}


def _fit_file(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), data


def _run_on_worker(
    task: Task,
    organism: dict[str, bytes] | None = None,
    fit: tuple[str, bytes] | None = None,
) -> Outcome:
    """What a Ray worker runs: one torch thread, shipped files cached locally, ``run_task``."""
    configure_worker()
    cache = Path(tempfile.gettempdir()) / "auditgame-ray"
    if organism is not None:
        task = replace(task, organism_path=_cache_organism(cache, task.organism_path, organism))
    if fit is not None and task.fit is not None:
        digest, data = fit
        if digest != task.fit.sha256 or hashlib.sha256(data).hexdigest() != digest:
            raise AuditgameError(f"{task.fit.path}: the shipped fit does not match its SHA-256")
        path = cache / "fits" / digest / task.fit.path.name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fit-")
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        task = replace(task, fit=Fit(path, digest))
    return run_task(task)


def _cache_organism(cache: Path, source: Path, files: dict[str, bytes]) -> Path:
    """The cached folder of the organism ``source`` names, from its shipped ``files``.

    The files are verified (``Organism.open``: the card against the id, the weights against
    the card) in a staging folder before it is renamed into the cache, so the cache only ever
    holds verified organisms, and workers racing to place the same one cannot tear it.
    """
    folder = cache / "organisms" / source.name
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staging-"))
    try:
        candidate = staging / source.name
        candidate.mkdir()
        for name, data in files.items():
            (candidate / name).write_bytes(data)
        try:
            Organism.open(candidate)
        except ZooError as exc:
            raise ZooError(
                source / exc.path.name, f"{exc.problem} (as shipped to a worker)"
            ) from exc
        with contextlib.suppress(OSError):  # another worker placed it first
            candidate.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
