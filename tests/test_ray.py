"""The Ray executor: same scores as the local one, resumable, verified weights, clear install hint.

One local Ray cluster (two CPUs) serves the whole module; executors find it already running
and leave it up. Tests that need Ray are skipped where it is not installed.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from auditgame.access import Budget
from auditgame.cli import app
from auditgame.errors import AuditgameError, ZooError
from auditgame.game import AuditorSpec, Game, play
from auditgame.organism import CARD, WEIGHTS
from auditgame.run.base import OnOutcome
from auditgame.run.local import LocalExecutor
from auditgame.run.ray import RUNTIME_ENV, RayExecutor, _cache_organism, _run_on_worker
from auditgame.run.sealed import auditor_info
from auditgame.run.task import Outcome, Task
from auditgame.store import Store

# weight_stats by its published threshold: calibrated, it would first train 64 clean
# reference models.
WEIGHT_STATS = AuditorSpec(name="weight_stats", params={"calibrate": False})

AUDITORS = [
    WEIGHT_STATS,
    AuditorSpec(name="neural_cleanse", params={"steps": 10, "calibrate": False}),
]
Rows = dict[tuple[str, str], tuple[float, int | None]]


def scored(store: Store, game_id: str) -> Rows:
    return {
        (r["organism_id"], r["auditor"]): (r["p_violation"], r["predicted_target"])
        for r in store.rows(game_id)
    }


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, runtime_env=RUNTIME_ENV, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_rows(tiny_zoo, tmp_path_factory: pytest.TempPathFactory) -> Rows:
    game = Game(zoo=tiny_zoo.zoo.root, auditors=AUDITORS)
    with Store(tmp_path_factory.mktemp("local") / "r.sqlite") as store:
        play(game, tiny_zoo.key, store, LocalExecutor(1))
        return scored(store, game.id)


class StopsAfter:
    """Wraps an executor so that the referee dies (like Ctrl-C) after ``n`` outcomes."""

    def __init__(self, inner: RayExecutor, n: int) -> None:
        self.inner = inner
        self.n = n

    def run(self, tasks: Sequence[Task], on_outcome: OnOutcome) -> None:
        def counted(task: Task, outcome: Outcome) -> None:
            on_outcome(task, outcome)
            self.n -= 1
            if self.n == 0:
                raise KeyboardInterrupt

        self.inner.run(tasks, counted)


def test_ray_with_shipped_files_scores_like_the_local_executor(
    ray_session, tiny_zoo, local_rows: Rows, tmp_path: Path
) -> None:
    # Neural Cleanse has a fitting stage, so its fit travels through the object store too.
    game = Game(zoo=tiny_zoo.zoo.root, auditors=AUDITORS)
    with Store(tmp_path / "r.sqlite") as store:
        play(game, tiny_zoo.key, store, RayExecutor(ship_files=True))
        rows = scored(store, game.id)
    assert len(local_rows) == 8
    assert rows == local_rows
    assert ray_session.is_initialized()  # an executor leaves a session it did not start


def test_an_interrupted_ray_run_resumes_without_loss_or_duplicates(
    ray_session, tiny_zoo, local_rows: Rows, tmp_path: Path
) -> None:
    game = Game(zoo=tiny_zoo.zoo.root, auditors=AUDITORS)
    with Store(tmp_path / "r.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            play(game, tiny_zoo.key, store, StopsAfter(RayExecutor(), 3))
        assert len(store.rows(game.id)) == 3
        play(game, tiny_zoo.key, store, RayExecutor())
        pairs = [(r["organism_id"], r["auditor"]) for r in store.rows(game.id)]
        assert len(pairs) == 8 and len(set(pairs)) == 8
        # Shared-path mode, across the interruption, scores exactly as the local executor.
        assert scored(store, game.id) == local_rows


def test_a_worker_refuses_modified_weights(ray_session, tiny_zoo, tmp_path: Path) -> None:
    source = tiny_zoo.zoo.organism_path(tiny_zoo.zoo.ids[0])
    folder = shutil.copytree(source, tmp_path / source.name)
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[-1] ^= 1
    (folder / WEIGHTS).write_bytes(bytes(data))
    task = Task(folder, auditor_info("weight_stats", {"calibrate": False}, "digits"), Budget(), 0)
    seen: list[Outcome] = []
    # The worker's error comes back as itself, as it would from a local run.
    with pytest.raises(ZooError, match="does not match the card"):
        RayExecutor().run([task], lambda _, outcome: seen.append(outcome))
    assert seen == []


def test_a_worker_needs_only_the_shipped_bytes(
    tiny_zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a worker does with shipped files, run here: the zoo's path is never read."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the worker's cache goes here
    source = tiny_zoo.zoo.organism_path(tiny_zoo.zoo.ids[0])
    files = {name: (source / name).read_bytes() for name in (CARD, WEIGHTS)}
    elsewhere = Path("/nonexistent-node-path") / source.name
    info = auditor_info("weight_stats", {"calibrate": False}, "digits")
    task = Task(elsewhere, info, Budget(), 0)
    outcome = _run_on_worker(task, files)
    assert outcome.finding.error is None and 0 <= outcome.finding.p_violation <= 1
    cached = tmp_path / "auditgame-ray" / "organisms" / source.name
    assert (cached / WEIGHTS).read_bytes() == files[WEIGHTS]


def test_shipped_files_are_verified_before_they_are_cached(tiny_zoo, tmp_path: Path) -> None:
    source = tiny_zoo.zoo.organism_path(tiny_zoo.zoo.ids[0])
    files = {name: (source / name).read_bytes() for name in (CARD, WEIGHTS)}
    bad = {**files, WEIGHTS: files[WEIGHTS][:-1] + bytes([files[WEIGHTS][-1] ^ 1])}
    with pytest.raises(ZooError, match=r"does not match the card.*as shipped to a worker") as info:
        _cache_organism(tmp_path, source, bad)
    assert info.value.path == source / WEIGHTS  # named where the referee read it
    assert list((tmp_path / "organisms").iterdir()) == []  # nothing half-verified stays
    cached = _cache_organism(tmp_path, source, files)
    assert cached == tmp_path / "organisms" / source.name
    assert (cached / WEIGHTS).read_bytes() == files[WEIGHTS]


def test_play_on_ray_from_the_command_line(ray_session, tiny_zoo, tmp_path: Path) -> None:
    args = ["play", "--zoo", str(tiny_zoo.zoo.root), "--auditor", "weight_stats"]
    args += ["--param", "weight_stats.calibrate=false"]
    result = CliRunner().invoke(
        app, [*args, "--executor", "ray", "--store", str(tmp_path / "r.sqlite"), "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {(r["auditor"], r["attack"], r["n"]) for r in rows} >= {("weight_stats", "all", 4)}


def test_without_ray_play_says_how_to_install_it(
    tiny_zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    store = tmp_path / "r.sqlite"
    args = ["play", "--zoo", str(tiny_zoo.zoo.root), "--store", str(store), "--executor", "ray"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "install it with pip install 'auditgame[ray]'" in result.output
    assert not store.exists()  # it stops before any work
    with pytest.raises(AuditgameError, match=r"auditgame\[ray\]"):
        RayExecutor()


def test_ray_options_are_refused_for_the_local_executor(tiny_zoo, tmp_path: Path) -> None:
    args = ["play", "--zoo", str(tiny_zoo.zoo.root), "--store", str(tmp_path / "r.sqlite")]
    result = CliRunner().invoke(app, [*args, "--address", "auto"])
    assert result.exit_code == 2
    assert "apply to --executor ray only" in result.output
