"""A game says *what* to run: a zoo, auditors with their parameters, and a budget.

How it runs is an executor's business (``auditgame.run``). ``play`` is the referee: it lists
the (organism, auditor) pairs not yet in the store, prepares run-time traffic for dynamic
auditors, hands tasks to the executor, and — holding the key, which no worker ever sees —
judges each finding as it arrives and writes its row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from auditgame import registry
from auditgame.access import Budget
from auditgame.fitting import FittedAuditor, ensure_fitted
from auditgame.provenance import code_fingerprint
from auditgame.run.base import Executor
from auditgame.run.task import Outcome, Task
from auditgame.score import Score, score
from auditgame.store import Store
from auditgame.traffic import DECOY_ATTACKS, make_traffic, traffic_rng
from auditgame.zoo import Zoo


class AuditorSpec(BaseModel):
    """An auditor by registered name, with its constructor parameters."""

    model_config = ConfigDict(frozen=True)

    name: str
    params: dict[str, Any] = {}


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
        manifest = Zoo(self.zoo).manifest
        return {
            "zoo_build": manifest.build_fingerprint,
            "family": manifest.family,
            "organisms": manifest.organisms,
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
    again runs only the pairs that are missing. Auditors with a fitting stage are fitted here,
    once, before any task is sent (cached under ``fits_dir``, default ``fits`` beside the
    store); the fit never sees the zoo or its secrets.
    """
    zoo = Zoo(game.zoo)
    zoo.check_key(key)
    family = registry.get("family", zoo.family)()
    auditors = {spec.name: registry.get("auditor", spec.name) for spec in game.auditors}
    game_id = game.id
    store.add_game(game_id, game.describe())
    done = store.finished(game_id)
    secrets = {oid: zoo.secret(oid, key) for oid in zoo.ids}
    fits_root = fits_dir if fits_dir is not None else store.path.parent / "fits"
    fit_paths: dict[str, Path] = {}
    for spec in game.auditors:
        cls = auditors[spec.name]
        if issubclass(cls, FittedAuditor) and cls.supports(zoo.family):
            pending = any((oid, spec.name) not in done for oid in zoo.ids)
            if pending:
                fit_paths[spec.name] = ensure_fitted(cls(**spec.params), zoo.family, fits_root)

    # Clean organisms' traffic carries a trigger of one of the zoo's own attacks, so traffic
    # alone (a warp here, a patch there) does not tell clean from backdoored.
    decoys = tuple(zoo.manifest.attacks) or DECOY_ATTACKS
    tasks: list[Task] = []
    for oid in zoo.ids:
        for spec in game.auditors:
            cls = auditors[spec.name]
            if (oid, spec.name) in done or not cls.supports(zoo.family):
                continue
            traffic = None
            if cls.is_dynamic():
                rng = traffic_rng(oid, game.seed)
                traffic = make_traffic(
                    family, secrets[oid], game.budget.n_traffic, rng, decoys=decoys
                )
            tasks.append(
                Task(
                    organism_path=zoo.organism_path(oid),
                    auditor=spec.name,
                    auditor_module=cls.__module__,
                    params=spec.params,
                    budget=game.budget,
                    seed=auditor_seed(game.seed, oid, spec.name),
                    traffic=traffic,
                    fit_path=fit_paths.get(spec.name),
                )
            )

    def judge_outcome(task: Task, outcome: Outcome) -> None:
        oid = task.organism_path.name
        result = score(
            oid,
            zoo.family,
            outcome.finding,
            secrets[oid],
            dynamic=auditors[task.auditor].is_dynamic(),
            reference=auditors[task.auditor].reference,
            witness_asr=outcome.witness_asr,
            witness_per_target=outcome.witness_per_target,
            witness_in_threat_model=outcome.witness_in_threat_model,
        )
        store.add(game_id, result, outcome.finding, secrets[oid], task.seed)
        if on_score:
            on_score(result)

    executor.run(tasks, judge_outcome)
    return game_id
