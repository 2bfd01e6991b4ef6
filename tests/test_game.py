"""Games, the runner, the store: access is enforced, runs resume without loss or duplicates."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.errors import AccessError
from auditgame.finding import Cost, Finding
from auditgame.fitting import FittedAuditor
from auditgame.game import AuditorSpec, Game, fit_auditors, play
from auditgame.leaderboard import leaderboard
from auditgame.registry import auditor
from auditgame.report import write_report
from auditgame.run.base import OnOutcome
from auditgame.run.local import LocalExecutor
from auditgame.run.sealed import AuditorInfo, ChildError, CodeChanged, sealed_fit
from auditgame.run.task import Task, make_subject
from auditgame.store import Store
from auditgame.subject import Subject

# weight_stats by its published threshold: calibrated, it would first train 64 clean
# reference models.
WEIGHT_STATS = AuditorSpec(name="weight_stats", params={"calibrate": False})

FAST = [WEIGHT_STATS, AuditorSpec(name="mahalanobis", params={"calibrate": False})]


@auditor("always_fails")
class AlwaysFails(Auditor):
    access = Access.WEIGHTS

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        raise RuntimeError("boom")


class StopsAfter:
    """An executor that dies (like Ctrl-C) after ``n`` outcomes."""

    def __init__(self, n: int) -> None:
        self.n = n

    def run(self, tasks: Sequence[Task], on_outcome: OnOutcome) -> None:
        def counted(task: Task, outcome: object) -> None:
            on_outcome(task, outcome)  # type: ignore[arg-type]
            self.n -= 1
            if self.n == 0:
                raise KeyboardInterrupt

        LocalExecutor(1).run(tasks, counted)


def test_subjects_get_exactly_their_access(tiny_zoo) -> None:
    organism = tiny_zoo.zoo.organism(tiny_zoo.zoo.ids[0])
    budget = Budget(n_clean=10)
    static = make_subject(organism, Access.WEIGHTS, budget)
    assert static.clean is None and static.traffic is None
    with pytest.raises(AccessError):
        _ = static.clean_data
    assert len(make_subject(organism, Access.CLEAN_DATA, budget).clean_data) == 10
    with pytest.raises(ValueError, match="needs run-time traffic"):
        make_subject(organism, Access.DYNAMIC, budget)
    with pytest.raises(AccessError, match="needs CLEAN_DATA"):
        registry.get("auditor", "neural_cleanse")().audit(static, budget)


def test_play_scores_every_pair_and_resumes_after_interruption(tiny_zoo, tmp_path: Path) -> None:
    game = Game(zoo=tiny_zoo.zoo.root, auditors=FAST)
    with Store(tmp_path / "full.sqlite") as store:
        play(game, tiny_zoo.key, store, LocalExecutor(1))
        full = {(r["organism_id"], r["auditor"]): r["p_violation"] for r in store.rows(game.id)}
    assert len(full) == 8

    with Store(tmp_path / "cut.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            play(game, tiny_zoo.key, store, StopsAfter(3))
        assert len(store.rows(game.id)) == 3
        play(game, tiny_zoo.key, store, LocalExecutor(1))
        rows = store.rows(game.id)
        resumed = {(r["organism_id"], r["auditor"]): r["p_violation"] for r in rows}
        assert len(rows) == 8 and resumed == full
        play(game, tiny_zoo.key, store, StopsAfter(1))  # nothing left: no task runs
        assert len(store.rows(game.id)) == 8
        row = rows[0]
        assert row["package_version"] and row["git_revision"] and row["seed"] >= 0


def test_dynamic_auditors_are_marked_and_rows_carry_the_truth(tiny_zoo, tmp_path: Path) -> None:
    game = Game(zoo=tiny_zoo.zoo.root, auditors=FAST)
    with Store(tmp_path / "r.sqlite") as store:
        play(game, tiny_zoo.key, store, LocalExecutor(1))
        scores = store.scores(game.id)
    for s in scores:
        assert s.dynamic is (s.auditor == "mahalanobis")
        assert s.backdoored is tiny_zoo.secret(s.organism_id).backdoored
    rows = leaderboard(scores)
    assert {(r.auditor, r.attack) for r in rows} == {
        (a, k) for a in ("weight_stats", "mahalanobis") for k in ("all", "badnets", "blend")
    }
    assert all(r.n_clean == 2 for r in rows)


def test_a_failing_auditor_is_recorded_not_fatal(tiny_zoo, tmp_path: Path) -> None:
    game = Game(zoo=tiny_zoo.zoo.root, auditors=[AuditorSpec(name="always_fails")])
    with Store(tmp_path / "r.sqlite") as store:
        play(game, tiny_zoo.key, store, LocalExecutor(1))
        scores = store.scores(game.id)
    assert len(scores) == 4
    assert all(s.error and "boom" in s.error for s in scores)
    # A failure is scored as the worst answer: failing can never improve a score.
    assert all(s.p_violation == (0.0 if s.backdoored else 1.0) for s in scores)
    assert all(s.flagged != s.backdoored for s in scores)
    (row,) = leaderboard(scores)[:1]
    assert row.errors == 4 and row.auroc == 0.0 and row.fpr_at_threshold == 1.0
    with Store(tmp_path / "r.sqlite") as store:
        findings = [json.loads(r["finding_json"]) for r in store.rows(game.id)]
    assert all(f["p_violation"] is None for f in findings)


def test_a_failed_finding_carries_no_probability() -> None:
    cost = Cost(seconds=0.0, forward=0, backward=0)
    stored_before = Finding(auditor="x", p_violation=0.5, cost=cost, error="boom")
    assert stored_before.p_violation is None
    assert Finding.model_validate_json(stored_before.model_dump_json()).p_violation is None
    with pytest.raises(ValidationError, match="gives a probability"):
        Finding(auditor="x", p_violation=None, cost=cost)


def test_a_store_from_before_the_worst_answer_rule_is_rescored(tiny_zoo, tmp_path: Path) -> None:
    """Rows written when a failure scored 0.5 are scored as the worst answer when opened."""
    game = Game(zoo=tiny_zoo.zoo.root, auditors=[AuditorSpec(name="always_fails")])
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        play(game, tiny_zoo.key, store, LocalExecutor(1))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE scores SET p_violation = 0.5, flagged = 1")
    with Store(path) as store:
        scores = store.scores(game.id)
    assert all(s.p_violation == (0.0 if s.backdoored else 1.0) for s in scores)
    assert all(s.flagged != s.backdoored for s in scores)


def test_a_clean_organism_a_witness_proves_is_a_natural_violation(tiny_zoo, tmp_path: Path) -> None:
    """The digits spec forbids any mask of L1 up to 20 that sends half the other digits to
    one label, and a clean 8x8 digit classifier has such masks for most labels (Neural
    Cleanse's reach 82 to 95% at L1 8 to 15). A witness the spec verifies on a clean
    organism is a natural violation: stored, counted apart in the leaderboard, listed in the
    report; detection still scores the planting."""
    nc = AuditorSpec(name="neural_cleanse", params={"calibrate": False})
    game = Game(zoo=tiny_zoo.zoo.root, auditors=[nc])
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        play(game, tiny_zoo.key, store, LocalExecutor(1))
        scores = store.scores(game.id)
    natural = {s.organism_id for s in scores if s.natural_violation}
    clean = {s.organism_id for s in scores if not s.backdoored}
    assert natural and natural <= clean
    for s in scores:
        assert s.witness_violates == bool(s.witness_in_threat_model and s.witness_asr >= 0.5)
    (pooled,) = [r for r in leaderboard(scores) if r.attack == "all"]
    assert pooled.n_natural == pooled.natural_found == len(natural)
    # Detection still compares the planted with the clean: both clean organisms count.
    assert pooled.n_clean == 2 and pooled.n_backdoored == 2
    with Store(path) as store:
        md, _ = write_report(store, tmp_path / "report", game.id)
    text = md.read_text()
    assert "### Natural violations" in text and "(natural violation)" in text
    section = text.split("### Natural violations")[1].split("###")[0]
    assert all(oid in section for oid in natural)
    assert "a mask of L1" in section and "not drawable" not in section
    # A store written before the column says nothing of it, and reads as no natural violation.
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE scores DROP COLUMN witness_violates")
    with Store(path) as store:
        assert all(s.witness_violates is None for s in store.scores(game.id))
        assert not any(s.natural_violation for s in store.scores(game.id))


@auditor("slow_fit_test")
class SlowFit(FittedAuditor):
    """Takes two seconds to fit and writes when it started and ended into its work folder;
    with ``fail`` it raises instead."""

    access = Access.WEIGHTS

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail

    def fit(self, family: str, workdir: Path) -> dict[str, torch.Tensor]:
        start = time.time()
        time.sleep(2)
        if self.fail:
            raise RuntimeError("this fit fails on purpose")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "span.json").write_text(json.dumps([start, time.time()]))
        return {"level": torch.tensor([0.25])}

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        return Verdict(p_violation=float(self.require_fitted()["level"]))


@auditor("slow_fit_test_2")
class SlowFitToo(SlowFit):
    pass


def _fitted_info(cls: type[SlowFit], **params: object) -> AuditorInfo:
    return AuditorInfo(cls.name, cls.__module__, params, Access.WEIGHTS, False, True, True)


def test_a_games_fits_are_made_side_by_side_and_a_failed_one_loses_no_other(
    tmp_path: Path,
) -> None:
    """``play``'s fitting stage (``fit_auditors``): two fits overlap in time; when one fails,
    the other is recorded before the error is raised, so a rerun fits only the failed one."""
    both = [_fitted_info(SlowFit), _fitted_info(SlowFitToo)]
    fits = fit_auditors(both, "digits", tmp_path, hidden=(), workers=2)
    assert sorted(fits) == [SlowFit.name, SlowFitToo.name]
    work = tmp_path / "digits" / "work"
    (a0, a1), (b0, b1) = (json.loads((work / n / "span.json").read_text()) for n in fits)
    assert a0 < b1 and b0 < a1, "the two fits ran one after the other"

    other = tmp_path / "other"
    one_fails = [_fitted_info(SlowFit, fail=True), _fitted_info(SlowFitToo)]
    with pytest.raises(ChildError, match="on purpose"):
        fit_auditors(one_fails, "digits", other, hidden=(), workers=2)
    assert [r.name.split("-")[0] for r in (other / "digits").glob("*.json")] == [SlowFitToo.name]


def test_code_changed_under_a_game_stops_it(
    tiny_zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A game's id carries the package's code fingerprint; a worker or an auditor's child that
    loaded other code (the source edited while the game ran) stops the game before any row
    of the other code is stored. Simulated by giving the game another fingerprint."""
    game = Game(zoo=tiny_zoo.zoo.root, auditors=[AuditorSpec(name=AlwaysFails.name)])
    monkeypatch.setattr("auditgame.game.code_fingerprint", lambda: "0" * 16)
    with Store(tmp_path / "results.sqlite") as store:
        with pytest.raises(CodeChanged, match="a worker loaded"):
            play(game, tiny_zoo.key, store, LocalExecutor(1))
        # The worker's own code matches the game's; the auditor's child, started afresh, not.
        monkeypatch.setattr("auditgame.run.task.code_fingerprint", lambda: "0" * 16)
        with pytest.raises(CodeChanged, match="always_fails's child loaded"):
            play(game, tiny_zoo.key, store, LocalExecutor(1))
        assert store.scores(game.id) == []
    fitted = _fitted_info(SlowFit)
    with pytest.raises(CodeChanged, match="a fitting process"):
        sealed_fit(fitted, "digits", tmp_path / "fits", code="0" * 16)
    monkeypatch.setattr("auditgame.run.sealed.code_fingerprint", lambda: "0" * 16)
    with pytest.raises(CodeChanged, match="slow_fit_test's fit"):
        sealed_fit(fitted, "digits", tmp_path / "fits", code="0" * 16)
    assert not list((tmp_path / "fits" / "digits").glob("*.json"))


def test_game_id_follows_what_is_played(tiny_zoo) -> None:
    a = Game(zoo=tiny_zoo.zoo.root, auditors=FAST)
    assert a.id == Game(zoo=tiny_zoo.zoo.root, auditors=FAST).id
    assert a.id != Game(zoo=tiny_zoo.zoo.root, auditors=FAST, budget=Budget(seconds=5)).id
    assert a.id != Game(zoo=tiny_zoo.zoo.root, auditors=FAST[:1]).id


def test_a_change_to_the_code_starts_a_new_game(tiny_zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    before = Game(zoo=tiny_zoo.zoo.root, auditors=FAST).id
    monkeypatch.setattr("auditgame.game.code_fingerprint", lambda: "0" * 16)
    assert Game(zoo=tiny_zoo.zoo.root, auditors=FAST).id != before


def test_a_killed_run_resumes_without_loss_or_duplicates(tiny_zoo, tmp_path: Path) -> None:
    """Kill the whole `auditgame play` process group mid-run, then run it again."""
    store = tmp_path / "r.sqlite"
    command = [
        sys.executable, "-m", "auditgame", "play", "--zoo", str(tiny_zoo.zoo.root),
        "--auditor", "abs", "--param", "abs.calibrate=false", "--workers", "2",
        "--store", str(store),
    ]  # fmt: skip
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    rows = 0
    while rows < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if store.exists():
            with sqlite3.connect(store) as db:
                try:
                    rows = db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
                except sqlite3.OperationalError:
                    rows = 0
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(store) as db:
        before = db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    assert 1 <= before < 4
    subprocess.run(command, env=env, check=True, capture_output=True)
    with sqlite3.connect(store) as db:
        pairs = db.execute("SELECT organism_id, auditor FROM scores").fetchall()
    assert len(pairs) == 4 and len(set(pairs)) == 4
