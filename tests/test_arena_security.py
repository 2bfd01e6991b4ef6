"""The red team against the arena itself: hostile auditor plugins try every route to a secret
or a forged score through the real executors, and each attempt must fail.

The plugins live in ``tests/hostile_auditors.py``; a game names that module, so it is
imported only inside the auditors' sandboxes, never in this (the referee's) process. Where a
defence is the sandbox, the same attack is also run unsealed (``AUDITGAME_UNSEALED=1``) and
must succeed there: the test would fail if the sandbox were gone. Routes 2 (the seed) and 8
(the manifest's MAC) are in ``tests/test_zoo.py``; bounded inputs in ``tests/test_zoo.py``,
``tests/test_audit_own.py`` and below (``report --serve``).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from auditgame import registry
from auditgame.access import Budget
from auditgame.errors import ZooError
from auditgame.game import AuditorSpec, Game, play
from auditgame.report import report_server
from auditgame.run import sandbox, sealed
from auditgame.run.local import LocalExecutor
from auditgame.run.sealed import close_children
from auditgame.run.task import access_data
from auditgame.store import UNREVEALED, Store

# weight_stats by its published threshold: calibrated, it would first train 64 clean
# reference models.
WEIGHT_STATS = AuditorSpec(name="weight_stats", params={"calibrate": False})

HOSTILE = "hostile_auditors"
BUDGET = Budget(seconds=5, n_clean=20)


def test_this_machine_can_seal_a_game() -> None:
    """Fails, never skips, without bubblewrap: ``make test`` installs it."""
    assert sandbox.sealed(), sandbox.UNSEALED_WARNING


@pytest.fixture
def unsealed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Auditors run as plain processes of this user, as where no sandbox is available."""
    close_children()
    monkeypatch.setenv("AUDITGAME_UNSEALED", "1")
    sandbox.bwrap.cache_clear()
    yield
    close_children()
    monkeypatch.delenv("AUDITGAME_UNSEALED")
    sandbox.bwrap.cache_clear()


def hostile(name: str, **params: object) -> AuditorSpec:
    return AuditorSpec(name=name, params=params, module=HOSTILE)


def evidence(rows: list[dict], auditor: str) -> list[dict]:
    return [json.loads(r["finding_json"])["evidence"] for r in rows if r["auditor"] == auditor]


def snoop_game(tiny_zoo, store: Path) -> Game:
    spec = hostile(
        "hostile_snoop", zoo=str(tiny_zoo.zoo.root), key=str(tiny_zoo.key_path), store=str(store)
    )
    return Game(zoo=tiny_zoo.zoo.root, auditors=[WEIGHT_STATS, spec],
                budget=BUDGET)  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2])
def test_a_sandboxed_auditor_reaches_no_key_secret_process_or_store(
    tiny_zoo, tmp_path: Path, workers: int
) -> None:
    """Routes 1 (key beside the zoo), 5 (in the referee), 6 (/proc) and 7 (the store)."""
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        game_id = play(snoop_game(tiny_zoo, path), tiny_zoo.key, store, LocalExecutor(workers))
        rows = store.rows(game_id)
    key = tiny_zoo.key.decode()
    assert HOSTILE not in sys.modules  # the plugin never ran in this process
    assert {r["auditor"] for r in rows} == {"weight_stats", "hostile_snoop"}
    assert len(rows) == 8 and all(r["sealed"] == 1 and r["error"] is None for r in rows)
    assert {r["p_violation"] for r in rows if r["auditor"] == "hostile_snoop"} == {0.5}
    for got in evidence(rows, "hostile_snoop"):
        assert got["uid"] == 65534
        assert got["tasks_on_stack"] == [] and got["secrets_alive"] == 0
        assert got["key_file"] is None and got["zoo_json"] is None
        assert key not in got["memory_keys"]
        cmdlines = " ".join(c or "" for c in got["processes"].values())
        assert str(tiny_zoo.zoo.root) not in cmdlines and str(path) not in cmdlines
        assert got["store"] == [] and "store_written" not in got
        assert got["network"] is not True


def test_unsealed_the_same_auditor_takes_the_key_and_rewrites_the_store(
    tiny_zoo, tmp_path: Path, unsealed: None
) -> None:
    """The attacks above are real: without the sandbox each one works."""
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        game_id = play(snoop_game(tiny_zoo, path), tiny_zoo.key, store, LocalExecutor(1))
        rows = store.rows(game_id)
    key = tiny_zoo.key.decode()
    found = evidence(rows, "hostile_snoop")
    assert all(r["sealed"] == 0 for r in rows if r["auditor"] != "fake")
    assert all(key in got["key_file"] for got in found)
    assert any(key in got["memory_keys"] for got in found)  # the referee's memory
    assert any(got.get("store_written") for got in found)
    assert "fake" in {r["auditor"] for r in rows}


def fit_game(tiny_zoo, fits: Path) -> Game:
    spec = hostile(
        "hostile_fit", zoo=str(tiny_zoo.zoo.root), key=str(tiny_zoo.key_path), fits=str(fits)
    )
    honest = AuditorSpec(name="honest_fit", module=HOSTILE)
    return Game(zoo=tiny_zoo.zoo.root, auditors=[honest, spec], budget=BUDGET)


def test_a_fit_carries_nothing_out_and_cannot_touch_another_fit(tiny_zoo, tmp_path: Path) -> None:
    """Route 4: the fitting stage runs sandboxed, before any secret is unsealed."""
    fits = tmp_path / "fits"
    with Store(tmp_path / "r.sqlite") as store:
        game_id = play(fit_game(tiny_zoo, fits), tiny_zoo.key, store, LocalExecutor(2))
        rows = store.rows(game_id)
    assert len(rows) == 8
    assert {r["p_violation"] for r in rows if r["auditor"] == "honest_fit"} == {0.25}
    for got in evidence(rows, "hostile_fit"):
        loot = got["loot"]
        assert tiny_zoo.key.decode() not in loot
        assert "'secrets_alive': 0" in loot and "'overwritten': []" in loot
    (record,) = (fits / "digits").glob("honest_fit-*.json")
    sha = json.loads(record.read_text())["sha256"]
    assert sealed.checked_fit(sealed.Fit(fits / "digits" / f"{sha}.safetensors", sha))


def test_unsealed_a_fit_steals_the_key_and_a_poisoned_fit_is_refused(
    tiny_zoo, tmp_path: Path, unsealed: None
) -> None:
    fits = tmp_path / "fits"
    with Store(tmp_path / "r.sqlite") as store, pytest.raises(ZooError, match="fit modified"):
        play(fit_game(tiny_zoo, fits), tiny_zoo.key, store, LocalExecutor(1))
    (record,) = (fits / "digits").glob("hostile_fit-*.json")
    sha = json.loads(record.read_text())["sha256"]
    loot = (fits / "digits" / f"{sha}.safetensors").read_bytes()
    assert tiny_zoo.key in loot


def test_only_data_crosses_and_a_broken_auditor_costs_only_its_own_rows(
    tiny_zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Route 3 (code in evidence, run where it is unpickled), a finding in another auditor's
    name, and a hang: each an error row for that auditor; the game and the others go on."""
    monkeypatch.setattr(sealed, "HARD_LIMIT_SECONDS", 1.0)
    marker = tmp_path / "pwned"
    auditors = [
        WEIGHT_STATS,
        hostile("hostile_pickle", marker=str(marker)),
        hostile("hostile_forge"),
        hostile("hostile_hang"),
    ]
    game = Game(zoo=tiny_zoo.zoo.root, auditors=auditors, budget=Budget(seconds=0.2))
    with Store(tmp_path / "r.sqlite") as store:
        game_id = play(game, tiny_zoo.key, store, LocalExecutor(1))
        rows = store.rows(game_id)
    assert not marker.exists()
    assert len(rows) == 16
    errors = {r["auditor"]: r["error"] for r in rows if r["error"]}
    assert "Unable to serialize" in errors["hostile_pickle"]
    assert "speaks for 'weight_stats'" in errors["hostile_forge"]
    assert "no answer within" in errors["hostile_hang"]
    assert "weight_stats" not in errors
    # Failed rows are scored as the worst answer, and their findings give no probability.
    failed = [r for r in rows if r["auditor"] != "weight_stats"]
    assert all(r["p_violation"] == 1 - r["backdoored"] for r in failed)
    assert all(json.loads(r["finding_json"])["p_violation"] is None for r in failed)
    assert len({r["p_violation"] for r in rows if r["auditor"] == "weight_stats"}) == 4


def test_an_array_in_evidence_is_an_error_row_naming_auditor_and_organism(
    tiny_zoo, tmp_path: Path
) -> None:
    game = Game(zoo=tiny_zoo.zoo.root, auditors=[hostile("hostile_pickle", array=True)])
    with Store(tmp_path / "r.sqlite") as store:
        rows = store.rows(play(game, tiny_zoo.key, store, LocalExecutor(1)))
    assert {r["organism_id"] for r in rows} == set(tiny_zoo.zoo.ids)
    assert all("Unable to serialize" in r["error"] for r in rows)


def test_secrets_reach_the_store_only_when_the_last_pair_is_judged(
    tiny_zoo, tmp_path: Path
) -> None:
    """Route 7's other half: an early row tells nothing, even to a reader of the file."""
    game = Game(zoo=tiny_zoo.zoo.root, auditors=[WEIGHT_STATS])
    seen: list[set[str]] = []
    with Store(tmp_path / "r.sqlite") as store:

        def look(_: object) -> None:
            seen.append({r["secret_json"] for r in store.rows(game.id)})

        play(game, tiny_zoo.key, store, LocalExecutor(1), on_score=look)
        rows = store.rows(game.id)
    assert seen == [{UNREVEALED}] * 4
    for r in rows:
        assert (
            json.loads(r["secret_json"])["backdoored"]
            == tiny_zoo.secret(r["organism_id"]).backdoored
        )


def test_report_serve_serves_the_report_and_nothing_beside_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("<p>report</p>")
    (tmp_path / "zoo.key").write_text("secret")
    (out / "zoo.key").write_text("secret")
    (out / "report.md").symlink_to(tmp_path / "zoo.key")
    server = report_server(out)
    Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for path in ("/report.html", "/", "/report.html?x=1"):
            assert urllib.request.urlopen(base + path).read() == b"<p>report</p>", path
        for path in ("/zoo.key", "/report.md", "/../zoo.key", "/%2e%2e/zoo.key", "/out/"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(base + path)
            assert info.value.code == 404, path
    finally:
        server.shutdown()
        server.server_close()


def test_the_sandbox_binds_code_read_only_and_nothing_of_the_referees(tmp_path: Path) -> None:
    """What a child's command line mounts: the fresh /tmp before any bind (a checkout may
    live under /tmp), import paths read-only, hidden folders covered, the key never bound."""
    zoo = Path(sandbox._import_path()[0]) / "zoo-inside-an-import-path"
    zoo.mkdir(exist_ok=True)
    try:
        mounts = sandbox.Mounts(tmp_path / "in", tmp_path / "scratch", hidden=(zoo,))
        argv, _ = sandbox.command("auditgame.run.child", mounts)
    finally:
        zoo.rmdir()
    pairs = list(itertools.pairwise(argv))
    first_bind = argv.index("--ro-bind")
    assert pairs.index(("--tmpfs", "/tmp")) < first_bind
    assert ("--tmpfs", str(zoo)) in pairs
    writable = [b for a, b in pairs if a == "--bind"]
    assert writable == [str(tmp_path / "scratch")]
    bound = sandbox.describe_mounts(argv)
    assert not any(p.endswith(".key") or p.endswith(".sqlite") for p in bound)


def test_a_sandbox_sees_the_base_models_but_not_the_audit_commands_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-user cache holds base models (shared, read-only, with every sandbox) and the
    fits of ``auditgame audit`` (other auditors' work, shadow zoos with their keys): a game's
    sandbox is given the first and not the second."""
    monkeypatch.setenv("AUDITGAME_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "tinylm-base").mkdir(parents=True)
    (tmp_path / "cache" / "fits" / "digits").mkdir(parents=True)
    mounts = sandbox.Mounts(tmp_path / "in", tmp_path / "scratch")
    bound = sandbox.describe_mounts(sandbox.command("auditgame.run.child", mounts)[0])
    if sandbox.bwrap() is None:
        pytest.fail("bubblewrap is missing: make installs it")
    assert str(tmp_path / "cache" / "tinylm-base") in bound
    assert not any(p.startswith(str(tmp_path / "cache" / "fits")) for p in bound)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"ok": true, "finding": {"evidence": {"x": NaN}}}', "NaN is not a JSON value"),
        (b'{"ok": true, "x": Infinity}', "Infinity is not a JSON value"),
        (b"[" * 100_000, "not JSON data"),
        (b"\x80abc", "not JSON data"),
        (b'["ok", true]', "not an object with 'ok'"),
        (b'{"ok": "yes"}', "not an object with 'ok'"),
        (b'{"ok": false, "error": "' + b"e" * 10_000 + b'"}', "eeee"),
    ],
)
def test_a_reply_that_is_not_plain_json_data_is_refused(line: bytes, problem: str) -> None:
    with pytest.raises(sealed.ChildError, match=problem) as info:
        sealed.checked_reply(sealed.decode_reply(line))
    assert len(str(info.value)) <= 4000


def test_a_plain_reply_is_read() -> None:
    line = b'{"ok": true, "info": {"a": [1, 2.5, null]}}'
    assert sealed.checked_reply(sealed.decode_reply(line))["info"] == {"a": [1, 2.5, None]}


def test_a_killed_referees_staging_folders_are_removed_by_the_next(tmp_path: Path) -> None:
    """A referee killed mid-audit leaves its staged organism in the temp folder; the next one
    removes the folders of dead referees and leaves a live one's, and anything not ours."""
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    dead = [tmp_path / f"auditgame-{kind}-{gone.pid}-x1" for kind in ("in", "scratch")]
    live = tmp_path / f"auditgame-in-{os.getpid()}-x2"
    others = [tmp_path / "auditgame-in-abc-x3", tmp_path / f"auditgame-out-{gone.pid}-x4"]
    for folder in [*dead, live, *others]:
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "weights.safetensors").write_bytes(b"x")
    assert sorted(sealed.sweep_orphan_folders(tmp_path)) == sorted(dead)
    assert [f.exists() for f in dead] == [False, False]
    assert live.exists() and all(f.exists() for f in others)


def test_a_reply_answers_only_its_own_task(tiny_zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task interrupted between request and reply (a cancelled Ray task) must not leave its
    reply to answer the next task, for another organism: the interrupted child is stopped,
    and a reply that names another task is refused."""
    first, second = (tiny_zoo.zoo.organism(oid) for oid in tiny_zoo.zoo.ids[:2])
    info = sealed.auditor_info("weight_stats", {"calibrate": False}, first.card.family)
    budget = Budget(seconds=30.0)
    own = sealed.audit(info, second, budget, 0, clean=None, traffic=None)[0]
    reading = sealed._read_line

    def interrupted(proc: Any, timeout: float | None) -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr(sealed, "_read_line", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sealed.audit(info, first, budget, 0, clean=None, traffic=None)
    monkeypatch.setattr(sealed, "_read_line", reading)
    again = sealed.audit(info, second, budget, 0, clean=None, traffic=None)[0]
    assert again.error is None and again.p_violation == own.p_violation
    assert again.evidence == own.evidence

    # A request whose reply was never read, then the next task's: the stale reply is refused.
    child = sealed._child(info, first.card.family, None, ())
    assert child._proc.stdin is not None
    child._proc.stdin.write(b'{"op": "audit", "task": "7"}\n')
    child._proc.stdin.flush()
    # Which refusal fires depends on timing: the stale reply read alone names task 7; when
    # the child has already answered task 8 too, the referee sees it wrote past its reply.
    stale = "answers task '7', not '8'|wrote past its reply"
    with pytest.raises(sealed.ChildError, match=stale):
        child.request({"op": "audit", "task": "8"}, 30.0)
    assert child._proc.poll() is not None  # out of step: stopped, never reused


def test_every_builtin_auditors_parameters_read_as_its_child_reports_them() -> None:
    """The referee refuses a finding whose parameters differ from those it ran; the child
    reports them as JSON data, so a built-in's must be described the same way (ABS's tuple
    ``stimulation`` once made every sealed ABS audit an error row)."""
    for name in registry.names("auditor"):
        cls = registry.get("auditor", name)
        if not registry.is_builtin(cls):
            continue
        family = next(f for f in ("digits", "rff16", "maxofk", "tinylm") if cls.supports(f))
        reported = json.loads(json.dumps(cls().get_params(), default=str))
        assert sealed.auditor_info(name, {}, family).params == reported, name


def test_a_sealed_abs_audit_is_judged(tiny_zoo) -> None:
    organism = tiny_zoo.zoo.organism(tiny_zoo.zoo.ids[0])
    info = sealed.auditor_info(
        "abs", {"steps": 5, "top_neurons": 2, "calibrate": False}, organism.card.family
    )
    clean, _ = access_data(organism, info.access, Budget(), None)
    finding = sealed.audit(info, organism, Budget(seconds=30.0), 0, clean=clean, traffic=None)[0]
    assert finding.error is None and finding.p_violation is not None
