"""A game says *what* to run: a zoo, auditors with their parameters, and a budget.

How it runs is an executor's business (``auditgame.run``). ``play`` is the referee: it lists
the (organism, auditor) pairs not yet in the store, fits auditors that learn (in their
sandboxes, before any secret is unsealed), prepares run-time traffic for dynamic auditors,
hands tasks to the executor, and — holding the key, which no worker ever sees — judges each
finding as it arrives and writes its row. The secrets go into the store only when the game's
last pair is judged. No auditor code runs in this process (``auditgame.run.sealed``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from auditgame import registry
from auditgame.access import Budget
from auditgame.fitting import reference_zoo, references_needed
from auditgame.provenance import code_fingerprint
from auditgame.run.base import Executor
from auditgame.run.sealed import AuditorInfo, Fit, auditor_info, fit_record, sealed_fit
from auditgame.run.task import Outcome, Task
from auditgame.run.workers import configure_worker, mp_context
from auditgame.score import Score, score
from auditgame.store import Store
from auditgame.traffic import DECOY_ATTACKS, make_traffic, traffic_rng
from auditgame.zoo import Zoo


class AuditorSpec(BaseModel):
    """An auditor by registered name, with its constructor parameters; ``module`` names the
    module that registers it when that is neither built in nor an installed plugin (it is
    imported only inside the auditor's sandbox)."""

    model_config = ConfigDict(frozen=True)

    name: str
    params: dict[str, Any] = {}
    module: str | None = None


class Game(BaseModel):
    """Attributes:
    zoo: the zoo folder.
    auditors: who audits every organism (pairs an auditor cannot handle are skipped).
    budget: each auditor's budget.
    seed: seeds auditors and traffic.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    zoo: Path
    auditors: list[AuditorSpec]
    budget: Budget = Budget()
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            **Zoo(self.zoo).describe(),
            "auditors": [a.model_dump() for a in self.auditors],
            "budget": asdict(self.budget),
            "seed": self.seed,
            "code": code_fingerprint(),
        }

    @property
    def id(self) -> str:
        """Same zoo, auditors, budget, seed and code: same id, so a re-run resumes the game;
        a change to any of them, the package's source included, starts a new one."""
        text = json.dumps(self.describe(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def auditor_seed(game_seed: int, organism_id: str, auditor: str) -> int:
    digest = hashlib.sha256(f"{game_seed}:{organism_id}:{auditor}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def hidden_paths(game: Game, store: Store, fits: Path) -> tuple[Path, ...]:
    """What a sandbox must not show even where a bound folder (an import path) contains it:
    the folder holding the zoo and its key, the store's folder, the fits."""
    return tuple(p.resolve() for p in (Path(game.zoo).parent, store.path.parent, fits))


def fits_root(store: Store, fits_dir: Path | None = None) -> Path:
    """Where a game caches its auditors' fits: ``fits_dir``, default ``fits`` beside the
    store."""
    return Path(fits_dir) if fits_dir is not None else store.path.parent / "fits"


def describe_auditors(
    game: Game, store: Store, fits_dir: Path | None = None
) -> dict[str, AuditorInfo]:
    """Each auditor's metadata, without running plugin code here (``auditor_info``)."""
    family = Zoo(game.zoo).family
    hidden = hidden_paths(game, store, fits_root(store, fits_dir))
    return {
        spec.name: auditor_info(spec.name, spec.params, family, hidden, module=spec.module)
        for spec in game.auditors
    }


def fit_auditors(
    infos: list[AuditorInfo],
    family: str,
    folder: Path,
    hidden: tuple[Path, ...],
    workers: int | None = None,
    code: str | None = None,
) -> dict[str, Fit]:
    """Each auditor's fit for ``family`` (``sealed_fit``), by name; the ones not yet recorded
    are made side by side, one process each, up to ``workers`` (default: the machine's cores).

    A fit is one sandboxed child on one thread, and the calibrated auditors' fits (searches
    of 64 references each) took 3 to 10 minutes apiece: made one after the other they kept
    one core of a game's machine busy and the others idle for most of an hour. A fit that
    fails does not stop the others (they are recorded, so a rerun has only the failed one
    left); its error is raised when they are done. ``code``: as ``sealed_fit``'s."""
    recorded = [i for i in infos if fit_record(i, family, folder).is_file()]
    fits = {i.name: sealed_fit(i, family, folder, hidden, code) for i in recorded}
    missing = [i for i in infos if i.name not in fits]
    workers = min(workers or os.cpu_count() or 1, len(missing))
    if workers <= 1:
        return fits | {i.name: sealed_fit(i, family, folder, hidden, code) for i in missing}
    errors: list[BaseException] = []
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=mp_context(), initializer=configure_worker
    ) as pool:
        pending = {pool.submit(sealed_fit, i, family, folder, hidden, code): i for i in missing}
        try:
            for future in as_completed(pending):
                try:
                    fits[pending[future].name] = future.result()
                except Exception as exc:
                    errors.append(exc)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    if errors:
        raise errors[0]
    return fits


def play(
    game: Game,
    key: bytes,
    store: Store,
    executor: Executor,
    *,
    on_score: Callable[[Score], None] | None = None,
    fits_dir: Path | None = None,
) -> str:
    """Run every unfinished pair of ``game`` and store its score; returns the game id.

    Safe to interrupt: each finished pair is committed as it arrives, and calling ``play``
    again runs only the pairs that are missing. Auditors with a fitting stage are fitted
    first, once, each in its sandbox (cached under ``fits_dir``, default ``fits`` beside the
    store); the fit never sees the zoo or its secrets. When every pair is in the store, the
    secrets are written beside the rows (``Store.reveal``).
    """
    zoo = Zoo(game.zoo)
    zoo.check_key(key)
    family = registry.get("family", zoo.family)()
    zoo_spec = zoo.spec()
    kind, threat = zoo_spec.kind, zoo_spec.threat_model.kind
    fits_folder = fits_root(store, fits_dir)
    hidden = hidden_paths(game, store, fits_folder)
    infos = describe_auditors(game, store, fits_folder)
    # A sandbox sees the base-model cache read-only (what it builds stays its own): build the
    # family's base model (if it has one) here once, not in every sandbox.
    family.base_model()
    game_id = game.id
    store.add_game(game_id, game.describe())
    done = store.finished(game_id)
    to_fit = [
        infos[spec.name]
        for spec in game.auditors
        if infos[spec.name].fitted
        and infos[spec.name].audits(threat)
        and any((o, spec.name) not in done for o in zoo.ids)
    ]
    for info in to_fit:
        # Clean references are public and shared: built here once, read by the sandboxed
        # fit from its view of the cache (a sandbox's own builds die with it).
        needed = references_needed(info.params)
        if needed is not None:
            reference_zoo(zoo.family, *needed)
    fits = fit_auditors(to_fit, zoo.family, fits_folder, hidden, code=code_fingerprint())

    secrets = {oid: zoo.secret(oid, key) for oid in zoo.ids}
    # Clean organisms' traffic carries a trigger of one of the zoo's own attacks, so traffic
    # alone (a warp here, a patch there) does not tell clean from backdoored.
    decoys = tuple(zoo.manifest.attacks) or DECOY_ATTACKS
    tasks: list[Task] = []
    # Grouped by auditor: a worker keeps one sandboxed child per auditor warm.
    for spec in game.auditors:
        info = infos[spec.name]
        # Not of the family's kind, or looking for another violation than the spec's: the
        # auditor has nothing to say here, and no row is expected of it.
        if not info.audits(threat):
            continue
        for oid in zoo.ids:
            if (oid, spec.name) in done:
                continue
            traffic = None
            if info.dynamic:
                rng = traffic_rng(oid, game.seed)
                traffic = make_traffic(
                    family, secrets[oid], game.budget.n_traffic, rng, kind=kind, decoys=decoys
                )
            tasks.append(
                Task(
                    organism_path=zoo.organism_path(oid),
                    info=info,
                    budget=game.budget,
                    seed=auditor_seed(game.seed, oid, spec.name),
                    traffic=traffic,
                    fit=fits.get(spec.name),
                    hidden=hidden,
                    code=code_fingerprint(),
                )
            )

    def judge_outcome(task: Task, outcome: Outcome) -> None:
        oid = task.organism_path.name
        result = score(
            oid,
            zoo.family,
            kind,
            outcome.finding,
            secrets[oid],
            outcome.check,
            dynamic=task.info.dynamic,
            reference=task.info.reference,
            sealed=outcome.sealed,
        )
        store.add(game_id, result, outcome.finding, task.seed)
        if on_score:
            on_score(result)

    executor.run(tasks, judge_outcome)
    expected = {(o, s.name) for s in game.auditors if infos[s.name].audits(threat) for o in zoo.ids}
    if expected <= store.finished(game_id):
        store.reveal(game_id, secrets)
    return game_id
