"""Conformance suites: the contract every auditor and attack keeps to take part in a game.

A game knows an auditor or an attack only by its registered name and its parameters. It
builds it in a worker process, hands an auditor a subject cut to its declared access, seals
what an attack planted, and judges both without asking them anything. None of that is
enforced by types: an auditor that reads clean data it did not declare, answers differently
on a rerun, or returns a witness the spec cannot read breaks a game only later, and quietly.
``check_auditor`` and ``check_attack`` test the contract directly on tiny organisms, and raise
``ConformanceError`` naming the first clause that fails. A plugin author calls them from
their own tests; the built-ins are held to the same suites (``tests/test_conformance.py``)::

    from auditgame.testing import check_auditor

    def test_my_auditor_conforms(tmp_path):
        check_auditor(MyAuditor, family="digits", params={"steps": 20}, workdir=tmp_path)

For one test id per clause (as scikit-learn's ``parametrize_with_checks``), run the suite once
with ``run_suite`` and ask its report about each clause of ``AUDITOR_CLAUSES`` /
``ATTACK_CLAUSES`` (``ConformanceReport.outcome``); a clause after the first failure is
reported as not reached.

Both accept a registered family name or a ``Family`` instance: an instance with a cheaper
recipe (fewer epochs, a smaller vocabulary) keeps a suite fast, since the clauses concern the
contract, not the quality of the organisms.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from pydantic import ValidationError

from auditgame import __version__, registry
from auditgame.access import Access, Budget
from auditgame.attacks.base import Attack, Draw, Planted, PlantingFailed, train_clean
from auditgame.auditors.base import Auditor, FittedAuditor, Verdict
from auditgame.card import Card
from auditgame.errors import AccessError
from auditgame.families.base import Family
from auditgame.finding import Finding
from auditgame.fitting import fit_here, load_fit
from auditgame.params import Configurable
from auditgame.run.workers import one_thread
from auditgame.secret import Secret, new_key, seal, unseal
from auditgame.subject import Subject
from auditgame.traffic import make_traffic
from auditgame.trigger import load as load_trigger
from auditgame.violation import ViolationKind
from auditgame.zoo import zoo_spec

__all__ = ["ConformanceError", "ConformanceReport", "card_for", "check_attack", "check_auditor"]

# Seeds of the reference organisms an auditor is checked on.
CLEAN_SEED = 0
BACKDOORED_SEED = 1
# An auditor may ignore its budget only if its whole run takes less CPU time than this (on
# one thread, so a loaded machine does not change the verdict). A threshold, so a judgement:
# on the digits and rff16 subjects the built-ins that never read the clock used 0.02-0.05 s
# (one weight matrix, one Gaussian fit), 0.1-0.2 s (probe), and 0.5-1.8 s (activation
# clustering, STRIP's overlays, a simulated null of 40 layers): work that grows with the model
# and the data, and on a larger family outruns any budget.
QUIET_SECONDS = 0.3


class ConformanceError(AssertionError):
    """A clause of the contract failed.

    An ``AssertionError``, so pytest reports it as a failed check with its message.

    Attributes:
        who: the auditor or attack (``"auditor neural_cleanse on digits"``).
        check: the clause that failed, as listed in ``check_auditor`` / ``check_attack``.
        problem: what was wrong, with the values seen.
    """

    def __init__(
        self, who: str, check: str, problem: str, report: ConformanceReport | None = None
    ) -> None:
        self.who, self.check, self.problem, self.report = who, check, problem, report
        super().__init__(f"{who}: {check}: {problem}")


AUDITOR_CLAUSES = (
    "registered",
    "tags",
    "template",
    "configurable",
    "fit",
    "audit",
    "witness",
    "deterministic",
    "clean",
    "access",
    "budget",
)
"""The clauses of ``check_auditor``, in the order it checks them."""
ATTACK_CLAUSES = (
    "registered",
    "configurable",
    "draw",
    "poison",
    "plant",
    "architecture",
    "secret",
    "asr",
    "sealed",
    "deterministic",
)
"""The clauses of ``check_attack``, in the order it checks them."""


@dataclass
class ConformanceReport:
    """What a suite checked: the clauses passed (in order), those skipped and why, the
    seconds each took, and the failure that stopped it (``run_suite`` keeps it)."""

    who: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failed: ConformanceError | None = None

    def fail(self, check: str, problem: str) -> NoReturn:
        self.failed = ConformanceError(self.who, check, problem, self)
        raise self.failed

    def require(self, condition: bool, check: str, problem: str) -> None:
        if not condition:
            self.fail(check, problem)

    @contextmanager
    def clause(self, check: str) -> Iterator[None]:
        """Time one clause and record it as passed when its block finishes; an exception
        inside it fails that clause, with the exception's type and message."""
        start = time.perf_counter()
        try:
            yield
        except ConformanceError:
            raise
        except Exception as exc:
            self.failed = ConformanceError(
                self.who, check, f"raised {type(exc).__name__}: {exc}", self
            )
            raise self.failed from exc
        self.seconds[check] = time.perf_counter() - start
        self.passed.append(check)

    def skip(self, check: str, why: str) -> None:
        self.skipped[check] = why

    def outcome(self, check: str) -> tuple[str, str]:
        """What became of clause ``check``: ``("passed", "")``, ``("skipped", why)``,
        ``("failed", problem)``, or ``("not reached", ...)`` after an earlier failure."""
        if check in self.passed:
            return "passed", ""
        if check in self.skipped:
            return "skipped", self.skipped[check]
        if self.failed is not None and self.failed.check == check:
            return "failed", str(self.failed)
        if self.failed is not None:
            return "not reached", f"clause {self.failed.check!r} failed first"
        return "not reached", "the suite does not check it here"


def run_suite(
    check: Callable[..., ConformanceReport], *args: Any, **kwargs: Any
) -> ConformanceReport:
    """Run ``check_auditor`` or ``check_attack`` to its first failure and return the report,
    the failure in ``failed`` instead of raised, so each clause can be asked about."""
    try:
        return check(*args, **kwargs)
    except ConformanceError as exc:
        if exc.report is None:
            raise
        return exc.report


def card_for(fam: Family) -> Card:
    """The public card a zoo would write for an organism of ``fam`` (placeholder hashes)."""
    return Card(
        family=fam.name,
        architecture=fam.architecture(),
        input_shape=list(fam.input_shape),
        classes=list(fam.classes),
        spec=fam.spec(),
        training_data=fam.training_data(),
        weights_sha256="0" * 64,
        secret_commitment="0" * 64,
        auditgame_version=__version__,
    )


# ---------------------------------------------------------------------------------------------
# Shared clauses


_FAMILIES: dict[str, Family] = {}
_REFERENCE: dict[tuple[Family, str], tuple[Planted, Planted]] = {}


def _family(family: str | Family) -> Family:
    """One instance per registered name, so reference organisms are built once per process."""
    if isinstance(family, Family):
        return family
    if family not in _FAMILIES:
        _FAMILIES[family] = registry.get("family", family)()
    return _FAMILIES[family]


def _check_registered(report: ConformanceReport, kind: registry.Kind, cls: type) -> str:
    name = getattr(cls, "name", None)
    report.require(
        isinstance(name, str) and bool(name),
        "registered",
        f"{cls.__qualname__} has no name: decorate it with @{kind}('NAME')",
    )
    assert isinstance(name, str)
    report.require(
        name in registry.names(kind) and registry.get(kind, name) is cls,
        "registered",
        f"the {kind} registry does not map {name!r} to {cls.__qualname__}: decorate it with "
        f"@{kind}({name!r}) and name its module in the auditgame.plugins entry-point group",
    )
    report.require(
        cls.__module__ != "__main__",
        "registered",
        f"{cls.__qualname__} is defined in __main__; a worker process imports the module "
        "that defines it, so put it in an importable module",
    )
    return name


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _check_configurable(
    report: ConformanceReport, cls: type, params: dict[str, Any]
) -> Configurable:
    """Constructible with defaults and with ``params``; parameters stored as given, JSON, and
    rebuilt exactly by ``type(obj)(**obj.get_params())`` (what a worker does)."""
    check = "configurable"
    report.require(
        issubclass(cls, Configurable),
        check,
        f"{cls.__qualname__} is not Configurable: subclass auditgame.params.Configurable so a "
        "store row and a worker can rebuild it from its parameters",
    )
    assert issubclass(cls, Configurable)
    names = cls.param_names()
    unknown = sorted(set(params) - set(names))
    report.require(
        not unknown,
        check,
        f"params {unknown} are not keyword arguments of __init__ (those are {names})",
    )
    for label, kwargs in (("its defaults", {}), (f"params {params}", params)):
        try:
            obj = cls(**kwargs)
        except Exception as exc:
            report.fail(
                check,
                f"cannot be constructed from {label}: {type(exc).__name__}: {exc} (every "
                "parameter needs a default: a game builds it from a name and some parameters)",
            )
        try:
            got = obj.get_params()
        except AttributeError as exc:
            report.fail(
                check, f"get_params failed: {exc} (store each __init__ argument under its name)"
            )
        for key, value in kwargs.items():
            report.require(
                _same(got[key], value),
                check,
                f"parameter {key!r} was given {value!r} but get_params() returns {got[key]!r}: "
                "store hyperparameters as given and derive anything else in run",
            )
        try:
            encoded = json.dumps(got, sort_keys=True)
        except TypeError as exc:
            report.fail(check, f"get_params() is not JSON ({exc}); it is stored with results")
        rebuilt = type(obj)(**got)
        report.require(
            json.dumps(rebuilt.get_params(), sort_keys=True) == encoded,
            check,
            f"rebuilding from get_params() changed the parameters: {got} became "
            f"{rebuilt.get_params()}",
        )
        clone = obj.clone()
        report.require(
            type(clone) is type(obj) and clone.get_params() == got,
            check,
            "clone() does not reproduce the object",
        )
    return cls(**params)


def _same(a: Any, b: Any) -> bool:
    """Equal, reading tuples and lists alike (JSON does)."""
    try:
        return bool(_json_value(a) == _json_value(b))
    except TypeError:
        return bool(a == b)


def _split_digest(fam: Family) -> str:
    digest = hashlib.sha256()
    splits = fam.data()
    for part in (splits.train, splits.val, splits.test):
        for tensor in (part.x, part.y):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _plant(attack: Any, fam: Family, seed: int) -> Planted:
    """Plant as a zoo build does: a generator and torch's global seed, both from ``seed``."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    planted: Planted = attack.plant(fam, rng, seed)
    return planted


# ---------------------------------------------------------------------------------------------
# Auditors


def check_auditor(
    auditor_cls: type[Auditor],
    *,
    family: str | Family = "digits",
    params: dict[str, Any] | None = None,
    attack: str | None = None,
    seed: int = 0,
    budget: Budget | None = None,
    tiny_seconds: float = 0.05,
    grace_seconds: float = 3.0,
    workdir: Path | None = None,
) -> ConformanceReport:
    """Check that ``auditor_cls`` keeps the auditor contract on ``family``.

    The clauses, in order (each failure names its clause):

    1. ``registered``: it has a name, the registry maps that name to this class, and its
       module is importable (not ``__main__``): a worker rebuilds it from the name.
    2. ``tags``: ``access`` is an ``Access``; ``modalities`` a non-empty tuple of strings;
       ``families`` None or a tuple of strings; and it supports ``family``.
    3. ``template``: it does not override ``Auditor.audit``, which enforces access, seeds,
       times and counts passes; it writes ``run``.
    4. ``configurable``: constructible from its defaults alone and from ``params``; every
       parameter is stored under its own name as given; ``get_params()`` is JSON and rebuilds
       an equal object; ``clone()`` reproduces it.
    5. ``fit`` (a ``FittedAuditor`` only): ``fit_here`` fits it into ``workdir`` (a temporary
       folder when None) and loads the fit back from the safetensors file, as a worker does.
    6. ``audit``: on a backdoored reference organism (``attack``, default the family's first,
       seed 1) with a subject built for exactly the declared access (clean samples and
       traffic only when declared, as a game builds it), ``audit`` finishes with no error
       (an ``AccessError`` in it means it read data above its access); ``run`` returned a
       ``Verdict`` whose ``p_violation`` is finite and in [0, 1] (``audit`` clips, which
       would hide the bug); the target, if any, is a label of the family; the finding names
       the auditor and its parameters and serialises to JSON; the model's weights are
       unchanged; and the family was not reached around the subject (``Family.data``, a
       text family's ``prompts``, or a family looked up in the registry during an audit is
       data or an interface the subject did not hand out).
    7. ``witness``: a reported trigger is accepted by the family spec's ``check_witness``
       (with the reported target) on the test split, which measures a rate in [0, 1].
    8. ``deterministic``: a fresh instance built from the registered name and
       ``get_params()`` (and the same fit), on a fresh subject of the same organism with the
       same seed, returns the same ``p_violation``, target and trigger.
    9. ``clean``: on a clean reference organism (seed 0) it also finishes without error.
    10. ``access``: a subject one level below the declared access is refused with
        ``AccessError`` (skipped for ``WEIGHTS``, the lowest).
    11. ``budget``: with its *default* parameters (``params`` for a fitted auditor, whose fit
        it needs) under ``Budget(seconds=tiny_seconds)`` it returns, without error, within
        ``tiny_seconds + grace_seconds``: it checks ``subject.elapsed`` and answers with its
        best so far. One that never reads ``subject.elapsed`` must use at most
        ``QUIET_SECONDS`` of CPU time, measured on one thread (an instant test needs no clock;
        anything longer does: on a larger model the same work takes minutes).
        Defaults, not the cheap ``params``, so that cheap parameters cannot make the clause
        pass by themselves.

    Args:
        auditor_cls: the auditor class (registered).
        family: a registered family name or a ``Family`` instance (e.g. a cheaper recipe).
        params: constructor parameters for clauses 5-10, e.g. ``{"steps": 20}`` to keep the
            suite fast.
        attack: the attack that plants the backdoored reference organism.
        seed: the audit seed.
        budget: the budget of clauses 6-10 (default ``Budget(seconds=60)``).
        tiny_seconds, grace_seconds: of clause 11.
        workdir: where a fitted auditor fits.

    Returns:
        The report of the clauses passed, skipped and their timings.

    Raises:
        ConformanceError: naming the first clause that failed.
    """
    params = dict(params or {})
    budget = budget or Budget(seconds=60.0)
    fam = _family(family)
    report = ConformanceReport(f"auditor {getattr(auditor_cls, 'name', auditor_cls)} on {fam.name}")

    with report.clause("registered"):
        name = _check_registered(report, "auditor", auditor_cls)
    with report.clause("tags"):
        _check_tags(report, auditor_cls, fam)
    with report.clause("template"):
        report.require(
            issubclass(auditor_cls, Auditor) and auditor_cls.audit is Auditor.audit,
            "template",
            "it overrides Auditor.audit; write run(subject, budget, rng) instead, so access, "
            "seeding, timing and error capture stay the game's",
        )
    with report.clause("configurable"):
        instance = _check_configurable(report, auditor_cls, params)
        assert isinstance(instance, Auditor)

    with ExitStack() as stack:
        fit_path: Path | None = None
        if isinstance(instance, FittedAuditor):
            with report.clause("fit"):
                root = stack.enter_context(_workdir(workdir))
                try:
                    fit_path = fit_here(instance, fam.name, root)
                except Exception as exc:
                    report.fail("fit", f"fit_here raised {type(exc).__name__}: {exc}")
                report.require(
                    instance.fitted is not None, "fit", "after fit_here, `fitted` is still None"
                )
        else:
            report.skip("fit", "no fitting stage")
        return _audit_clauses(
            report, instance, name, fam, attack, seed, budget, fit_path, tiny_seconds, grace_seconds
        )


@contextmanager
def _workdir(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        yield Path(workdir)
        return
    with tempfile.TemporaryDirectory(prefix="auditgame-fit-") as tmp:
        yield Path(tmp)


def _audit_clauses(
    report: ConformanceReport,
    instance: Auditor,
    name: str,
    fam: Family,
    attack: str | None,
    seed: int,
    budget: Budget,
    fit_path: Path | None,
    tiny_seconds: float,
    grace_seconds: float,
) -> ConformanceReport:
    cls = type(instance)
    card = card_for(fam)
    clean, backdoored = _reference(fam, attack)

    def fresh() -> Auditor:
        rebuilt: Auditor = registry.get("auditor", name)(**instance.get_params())
        if fit_path is not None:
            assert isinstance(rebuilt, FittedAuditor)
            load_fit(rebuilt, fit_path)
        return rebuilt

    def subject(planted: Planted, access: Access, for_budget: Budget) -> Subject:
        return _subject(fam, card, planted, access, for_budget, seed, reference=cls.reference)

    with report.clause("audit"):
        first = _checked_audit(
            report, instance, subject(backdoored, cls.access, budget), budget, seed, fam, card
        )

    if first.trigger is None:
        report.skip("witness", "the finding reports no trigger")
    else:
        with report.clause("witness"):
            _check_witness(report, first, backdoored, fam, card)

    with report.clause("deterministic"):
        second = _checked_audit(
            report, fresh(), subject(backdoored, cls.access, budget), budget, seed, fam, card
        )
        for what, a, b in (
            ("p_violation", first.p_violation, second.p_violation),
            ("target", first.target, second.target),
            ("trigger", first.trigger, second.trigger),
        ):
            report.require(
                json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True),
                "deterministic",
                f"two audits with seed {seed} of the same organism gave different {what}"
                + (f": {a!r} then {b!r}" if what != "trigger" else "")
                + "; draw all randomness from the rng passed to run (torch is seeded by audit)",
            )

    with report.clause("clean"):
        _checked_audit(report, fresh(), subject(clean, cls.access, budget), budget, seed, fam, card)

    if cls.access == Access.WEIGHTS:
        report.skip("access", "WEIGHTS is the lowest access level")
    else:
        with report.clause("access"):
            lower = Access(cls.access - 1)
            _check_refused(report, fresh(), subject(backdoored, lower, budget), budget, seed)

    with report.clause("budget"):
        tiny = Budget(seconds=tiny_seconds, n_clean=budget.n_clean, n_traffic=budget.n_traffic)
        spent = cls() if fit_path is None else fresh()
        _check_budget(
            report,
            spent,
            subject(backdoored, cls.access, tiny),
            tiny,
            seed,
            grace_seconds,
            "its fit" if fit_path else "default parameters",
        )
    return report


def _check_refused(
    report: ConformanceReport, auditor: Auditor, below: Subject, budget: Budget, seed: int
) -> None:
    """Clause ``access``: a subject one level below the declared access is refused."""
    try:
        auditor.audit(below, budget, seed=seed)
    except AccessError:
        return
    report.fail(
        "access",
        f"declares {type(auditor).access.name} but audited a {below.access.name} subject "
        "without AccessError",
    )


def _check_budget(
    report: ConformanceReport,
    spent: Auditor,
    spent_subject: Subject,
    tiny: Budget,
    seed: int,
    grace_seconds: float,
    given: str,
) -> None:
    """Clause ``budget``: under a tiny budget the auditor answers in time, and one that
    never reads the clock does little work."""
    tiny_seconds = tiny.seconds
    # One thread, as in a game's worker, so that the calling thread's CPU time is the
    # auditor's whole work. The process's CPU time is not: it counts every thread of the
    # process (the probe, 0.08 s of CPU alone, measured 0.3 s of process time twice in a row
    # inside a pytest-xdist worker on a loaded 2-core machine).
    with one_thread():
        start, cpu_start = time.perf_counter(), time.thread_time()
        finding = spent.audit(spent_subject, tiny, seed=seed)
        took, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
    report.require(
        finding.error is None,
        "budget",
        f"under Budget(seconds={tiny_seconds}) it failed instead of returning its best "
        f"answer so far: {_first_line(finding.error)}",
    )
    report.require(
        _clock_reads(spent_subject) > 0 or cpu <= QUIET_SECONDS,
        "budget",
        f"with {given} it used {cpu:.1f} s of CPU "
        f"under Budget(seconds={tiny_seconds}) and never read subject.elapsed: an auditor "
        f"that works longer than {QUIET_SECONDS} s must check its budget and stop early",
    )
    report.require(
        took <= tiny_seconds + grace_seconds,
        "budget",
        f"with {given} under "
        f"Budget(seconds={tiny_seconds}) it took {took:.1f} s (allowed "
        f"{tiny_seconds + grace_seconds:.1f} s): check subject.elapsed against "
        "budget.seconds and return the best answer so far",
    )


def _check_tags(report: ConformanceReport, cls: type[Auditor], fam: Family) -> None:
    report.require(
        isinstance(cls.access, Access),
        "tags",
        f"access is {cls.access!r}, not an auditgame.access.Access",
    )
    report.require(
        isinstance(cls.modalities, tuple)
        and bool(cls.modalities)
        and all(isinstance(m, str) for m in cls.modalities),
        "tags",
        f"modalities must be a non-empty tuple of strings, not {cls.modalities!r}",
    )
    report.require(
        cls.families is None
        or (isinstance(cls.families, tuple) and all(isinstance(f, str) for f in cls.families)),
        "tags",
        f"families must be None or a tuple of family names, not {cls.families!r}",
    )
    report.require(
        cls.supports(fam.name),
        "tags",
        f"does not examine {fam.name} (a {fam.modality} family; it declares modalities "
        f"{cls.modalities}, families {cls.families}): check it on a family it supports",
    )


def _reference(fam: Family, attack: str | None) -> tuple[Planted, Planted]:
    """A clean and a backdoored organism of ``fam``, built once per process."""
    if not fam.attacks and attack is None:
        raise ValueError(f"family {fam.name} names no attacks: pass attack=")
    attack_name = attack or fam.attacks[0]
    key = (fam, attack_name)
    if key not in _REFERENCE:
        torch.manual_seed(CLEAN_SEED)
        clean = train_clean(fam, np.random.default_rng(CLEAN_SEED), CLEAN_SEED)
        backdoored = _plant(registry.get("attack", attack_name)(), fam, BACKDOORED_SEED)
        _REFERENCE[key] = (clean, backdoored)
    return _REFERENCE[key]


def _subject(
    fam: Family,
    card: Card,
    planted: Planted,
    access: Access,
    budget: Budget,
    seed: int,
    *,
    reference: bool = False,
) -> Subject:
    """What a game hands an auditor: a model rebuilt from the weights, plus the data
    ``access`` allows (validation samples; traffic prepared from the secret), and the
    family's base model for an auditor that declares ``reference``."""
    model = fam.make_model(card.architecture)
    model.load_state_dict(_state(planted.model))
    clean = fam.data().val.take(budget.n_clean) if access >= Access.CLEAN_DATA else None
    traffic = None
    if access >= Access.DYNAMIC:
        rng = np.random.default_rng(seed)
        traffic = make_traffic(fam, planted.secret, budget.n_traffic, rng, kind=card.spec.kind)
    base = copy.deepcopy(fam.base_model()) if reference else None
    return _WatchedSubject(
        model=model, card=card, access=access, clean=clean, traffic=traffic, reference=base
    )


class _WatchedSubject(Subject):
    """A subject that counts how often the auditor looks at the clock."""

    @property
    def elapsed(self) -> float:
        self.__dict__["elapsed_reads"] = _clock_reads(self) + 1
        return time.perf_counter() - self.started


def _clock_reads(subject: Subject) -> int:
    return int(subject.__dict__.get("elapsed_reads", 0))


def _checked_audit(
    report: ConformanceReport,
    auditor: Auditor,
    subject: Subject,
    budget: Budget,
    seed: int,
    fam: Family,
    card: Card,
) -> Finding:
    """Audit once, recording what ``run`` returned, and hold the finding to clause 6."""
    check = "audit"
    verdicts: list[Any] = []
    run = auditor.run

    def recording(s: Subject, b: Budget, r: np.random.Generator) -> Verdict:
        verdict = run(s, b, r)
        verdicts.append(verdict)
        return verdict

    before = _state(subject.model)
    setattr(auditor, "run", recording)  # noqa: B010 (an instance attribute shadows the method)
    try:
        with _sealed_data(fam) as reads:
            finding = auditor.audit(subject, budget, seed=seed)
    except AccessError as exc:
        report.fail(check, f"refused a subject built for its own access: {exc}")
    except (ValidationError, ValueError, TypeError) as exc:
        report.fail(check, f"audit could not build a finding from run's verdict: {exc}")
    finally:
        delattr(auditor, "run")
    if finding.error is not None:
        if "AccessError" in finding.error:
            report.fail(
                check,
                f"reads data above its declared access {type(auditor).access.name}: "
                f"{_first_line(finding.error)}; declare the access it needs",
            )
        report.fail(check, f"run raised {_first_line(finding.error)}\n{finding.error}")
    verdict = verdicts[0] if verdicts else None
    report.require(
        isinstance(verdict, Verdict),
        check,
        f"run returned {type(verdict).__name__}, not an auditgame.auditors.Verdict",
    )
    assert isinstance(verdict, Verdict)
    p = verdict.p_violation
    report.require(
        isinstance(p, (int, float, np.floating)) and math.isfinite(p) and 0.0 <= p <= 1.0,
        check,
        f"run returned p_violation={p!r}, outside [0, 1] (audit clips it, which hides the "
        "bug): return a probability",
    )
    n_classes = len(card.classes)
    report.require(
        finding.target is None or 0 <= finding.target < n_classes,
        check,
        f"target {finding.target} is not a label of {fam.name} (0..{n_classes - 1})",
    )
    report.require(
        finding.auditor == type(auditor).name and _same(finding.params, auditor.get_params()),
        check,
        "the finding does not name the auditor and its parameters",
    )
    try:
        finding.model_dump_json()
    except Exception as exc:
        report.fail(
            check,
            f"the finding does not serialise to JSON ({exc}): evidence, certificate and "
            "trigger must hold plain Python numbers, strings, lists and dicts",
        )
    after = _state(subject.model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    report.require(not changed, check, f"audit changed the model's weights: {changed}")
    report.require(
        not reads,
        check,
        f"run reached {fam.name} around its subject ({', '.join(sorted(set(reads)))}): an "
        "auditor sees data only through its subject (subject.clean_data, "
        "subject.traffic_data) and a language model's family only as subject.interface",
    )
    return finding


@contextmanager
def _sealed_data(fam: Family) -> Iterator[list[str]]:
    """Record, while the block runs, calls to the family's ``sealed_data`` methods (``data``,
    a text family's ``prompts``) and every lookup of a family in the registry: an auditor
    reaches its family only through its subject."""
    cls = type(fam)
    reads: list[str] = []
    patched: dict[str, Any] = {}
    for method in fam.sealed_data:
        patched[method] = cls.__dict__.get(method)
        original: Callable[..., Any] = getattr(cls, method)

        def counted(self: Family, *a: Any, _name: str = method, _f: Any = original) -> Any:
            reads.append(f"Family.{_name}()")
            return _f(self, *a)

        setattr(cls, method, counted)
    lookup = registry.get

    def watched(kind: registry.Kind, name: str) -> Any:
        if kind == "family":
            reads.append(f"registry.get('family', {name!r})")
        return lookup(kind, name)

    registry.get = watched
    try:
        yield reads
    finally:
        registry.get = lookup
        for method, own in patched.items():
            if own is None:
                delattr(cls, method)
            else:
                setattr(cls, method, own)


def _check_witness(
    report: ConformanceReport, finding: Finding, planted: Planted, fam: Family, card: Card
) -> None:
    assert finding.trigger is not None
    test = fam.data().test
    model = fam.make_model(card.architecture)
    model.load_state_dict(_state(planted.model))
    try:
        check = card.spec.check_witness(
            model.eval(), finding.trigger, finding.target, test.x, test.y
        )
    except Exception as exc:
        report.fail(
            "witness",
            f"the family's spec cannot check the reported trigger (target {finding.target}): "
            f"{type(exc).__name__}: {exc}",
        )
    report.require(
        0.0 <= check.asr <= 1.0,
        "witness",
        f"the spec measured a rate of {check.asr} for the witness",
    )


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text else ""


# ---------------------------------------------------------------------------------------------
# Attacks


def check_attack(
    attack_cls: type,
    *,
    family: str | Family = "digits",
    params: dict[str, Any] | None = None,
    seed: int = 0,
    tries: int = 3,
    asr_tolerance: float = 0.02,
    repeat: bool = True,
) -> ConformanceReport:
    """Check that ``attack_cls`` keeps the attack contract on ``family``.

    The clauses, in order (each failure names its clause):

    1. ``registered``: as for an auditor.
    2. ``configurable``: as for an auditor (defaults, ``params``, stored as given, JSON).
    3. ``draw`` (every attack with ``draw(rng, family)``, the one argument order of every
       track's template): two draws from generators of the same seed are equal, field by
       field. For an image draw (``Draw``) also: the trigger survives
       ``trigger.load(trigger.to_dict())``; stamped inputs keep their shape, stay finite and
       in [0, 1]; the target is a label (or None); the poisoning rate is in [0, 1].
    4. ``poison`` (the same template only): two poisonings of the training split with
       generators of the same seed are equal, keep shapes and labels in range, and leave
       the data they were given untouched. With the draw, that is all such an attack adds
       to the template's ``plant``.
    5. ``plant``: ``plant(family, rng, seed)``, seeded as a zoo build seeds it, returns a
       ``Planted`` and leaves the family's data splits as they were (they are shared by
       every organism). A planting that misses its floor raises ``PlantingFailed`` and a zoo
       drops it, which is the template's rule, not a breach: the suite plants from ``seed``,
       ``seed + 1``, ... and fails only when ``tries`` seeds in a row fail.
    6. ``architecture``: the model's state dict has exactly the keys, shapes and dtypes of
       the family's own model, loads strictly into a fresh one (the zoo stores only that),
       and holds finite numbers.
    7. ``secret``: a ``Secret`` with ``backdoored=True``, ``attack`` the registered name, a
       trigger that ``auditgame.trigger.load`` rebuilds, a target that is a label (or None),
       a recorded ASR in [0, 1] at or above the attack's own floor (``min_asr`` or
       ``min_rate``, when it has one), clean accuracy and poisoning rate in [0, 1].
    8. ``asr``: re-measured independently on the model rebuilt from its weights, as the
       violation kind of the attack's zoo measures it (``ViolationKind.remeasure``): for
       input triggers the loaded trigger's ``apply`` on the family's test split, scored by
       ``metrics.attack_success_rate`` (a target) within ``asr_tolerance`` of the recorded
       ASR, or without a target ``metrics.flip_rate``, which bounds any untargeted rate from
       above and must not fall below the recorded ASR by more than the tolerance; for text
       trojans and ciphers, greedy generation after the planted triggers or requests.
    9. ``sealed``: the secret fits the sealing block and unseals to itself.
    10. ``deterministic`` (when ``repeat``): planting again from the seed that planted gives
        the same secret and the same weights, which is what makes a zoo build reproducible
        and resumable. This plants twice; ``repeat=False`` halves the cost.

    Args:
        attack_cls: the attack class (registered).
        family: a registered family name or a ``Family`` instance (e.g. fewer epochs).
        params: constructor parameters for the planting clauses (e.g. a shorter search).
        seed: the first planting seed.
        tries: planting seeds tried before clause 5 fails.
        asr_tolerance: absolute tolerance of clause 8.
        repeat: whether to plant twice for clause 10.

    Returns:
        The report of the clauses passed, skipped and their timings.

    Raises:
        ConformanceError: naming the first clause that failed.
    """
    params = dict(params or {})
    fam = _family(family)
    report = ConformanceReport(f"attack {getattr(attack_cls, 'name', attack_cls)} on {fam.name}")
    with report.clause("registered"):
        name = _check_registered(report, "attack", attack_cls)
    with report.clause("configurable"):
        attack = _check_configurable(report, attack_cls, params)
        report.require(
            callable(getattr(attack, "plant", None)),
            "configurable",
            "it has no plant(family, rng, seed) method",
        )

    if callable(getattr(attack, "draw", None)):
        with report.clause("draw"):
            first = _check_draw(report, attack, fam, seed)
    else:
        report.skip("draw", "it draws inside plant (no draw(rng, family))")
    if isinstance(attack, Attack):
        with report.clause("poison"):
            _check_poison(report, attack, first, fam, seed)
    else:
        report.skip("poison", "not built on the image template auditgame.attacks.Attack")

    with report.clause("plant"):
        before = _split_digest(fam)
        failures: list[str] = []
        planted: Any = None
        for planting_seed in range(seed, seed + max(1, tries)):
            try:
                planted = _plant(attack, fam, planting_seed)
            except PlantingFailed as exc:
                failures.append(f"seed {planting_seed}: {exc}")
                continue
            break
        report.require(
            planted is not None,
            "plant",
            f"no planting reached the floor in {len(failures)} seeds ({'; '.join(failures)}): "
            "cheap parameters or a cheap family recipe may put the floor out of reach",
        )
        report.require(
            isinstance(planted, Planted),
            "plant",
            f"plant returned {type(planted).__name__}, not auditgame.attacks.Planted",
        )
        report.require(
            _split_digest(fam) == before,
            "plant",
            f"planting modified {fam.name}'s data splits in place: clone before poisoning",
        )

    with report.clause("architecture"):
        model = _check_architecture(report, planted.model, fam)

    with report.clause("secret"):
        secret = planted.secret
        _check_secret(report, secret, name, attack, fam)

    with report.clause("asr"):
        _check_asr(report, secret, model, fam, zoo_spec(fam, [name]).kind, asr_tolerance)

    with report.clause("sealed"):
        key = new_key()
        try:
            token = seal(secret, key)
        except ValueError as exc:
            report.fail("sealed", str(exc))
        # unseal checks the commitment, so an equal canonical form is what comes back.
        opened = unseal(token, key, path=Path(f"<{name}>"), commitment=secret.commitment())
        report.require(
            opened.canonical_bytes() == secret.canonical_bytes(),
            "sealed",
            "the secret does not unseal to itself",
        )

    if not repeat:
        report.skip("deterministic", "repeat=False")
        return report
    with report.clause("deterministic"):
        again = _plant(type(attack)(**attack.get_params()), fam, planting_seed)
        first, second = secret.model_dump(), again.secret.model_dump()
        differ = sorted(k for k in first if first[k] != second[k])
        report.require(
            not differ,
            "deterministic",
            f"planting twice with seed {planting_seed} gave secrets that differ in {differ}: draw "
            "all randomness from the rng and seed passed to plant",
        )
        state, state_again = planted.model.state_dict(), again.model.state_dict()
        changed = [k for k in state if not torch.equal(state[k], state_again[k])]
        report.require(
            not changed,
            "deterministic",
            f"planting twice with seed {planting_seed} gave different weights in {changed}",
        )
    return report


def _draw_fields(draw: Any) -> dict[str, Any]:
    """A draw's fields as plain data: triggers by ``to_dict()``, arrays as lists."""
    out = {}
    for f in fields(draw):
        value = getattr(draw, f.name)
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        elif isinstance(value, torch.Tensor | np.ndarray):
            value = value.tolist()
        out[f.name] = value
    return out


def _check_draw(report: ConformanceReport, attack: Any, fam: Family, seed: int) -> Any:
    """Any attack's ``draw(rng, family)`` is a function of the rng; an image draw (``Draw``)
    also stamps as the loaded trigger does, in range."""
    check = "draw"
    first = attack.draw(np.random.default_rng(seed), fam)
    second = attack.draw(np.random.default_rng(seed), fam)
    report.require(
        is_dataclass(first) and not isinstance(first, type),
        check,
        f"draw returned {type(first).__name__}, not a dataclass of the draw's fields",
    )
    a, b = _draw_fields(first), _draw_fields(second)
    for what in a:
        report.require(
            _same(a[what], b[what]),
            check,
            f"two draws from generators seeded {seed} gave different {what}: draw all "
            "randomness from the rng",
        )
    if not isinstance(first, Draw):
        return first
    x = fam.data().test.x[:64]
    stamped = first.trigger.apply(x)
    loaded = load_trigger(first.trigger.to_dict())
    report.require(
        torch.allclose(loaded.apply(x), stamped),
        check,
        "trigger.load(trigger.to_dict()) does not stamp like the original trigger",
    )
    report.require(
        stamped.shape == x.shape and bool(torch.isfinite(stamped).all()),
        check,
        f"the trigger maps inputs of shape {tuple(x.shape)} to {tuple(stamped.shape)} or "
        "to non-finite values",
    )
    report.require(
        bool((stamped >= 0).all() and (stamped <= 1).all()),
        check,
        "stamped images leave [0, 1], where every image input lives",
    )
    report.require(
        first.target is None or 0 <= first.target < len(fam.classes),
        check,
        f"target {first.target} is not a label of {fam.name}",
    )
    report.require(
        0.0 <= first.poison_rate <= 1.0,
        check,
        f"poison rate {first.poison_rate} is not in [0, 1]",
    )
    return first


def _check_poison(
    report: ConformanceReport, attack: Attack, draw: Draw, fam: Family, seed: int
) -> None:
    """``poison`` is deterministic given its generator and leaves its inputs alone."""
    check = "poison"
    train = fam.data().train
    x, y = train.x.clone(), train.y.clone()
    first = attack.poison(draw, x, y, np.random.default_rng(seed))
    second = attack.poison(draw, x, y, np.random.default_rng(seed))
    report.require(
        torch.equal(x, train.x) and torch.equal(y, train.y),
        check,
        "poison modified the inputs it was given in place: return poisoned copies",
    )
    report.require(
        first[0].shape == x.shape and first[1].shape == y.shape,
        check,
        f"poison returned shapes {tuple(first[0].shape)}, {tuple(first[1].shape)} for "
        f"{tuple(x.shape)}, {tuple(y.shape)}",
    )
    report.require(
        torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]),
        check,
        f"poisoning twice with generators seeded {seed} gave different data: draw all "
        "randomness from the rng",
    )
    labels = first[1]
    report.require(
        bool(((labels >= 0) & (labels < len(fam.classes))).all()),
        check,
        "poisoned labels fall outside the family's classes",
    )


def _check_architecture(
    report: ConformanceReport, model: torch.nn.Module, fam: Family
) -> torch.nn.Module:
    check = "architecture"
    fresh = fam.make_model(fam.architecture())
    expected = {k: (tuple(v.shape), v.dtype) for k, v in fresh.state_dict().items()}
    state = _state(model)
    got = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    report.require(
        not missing and not extra,
        check,
        f"the planted model's state dict lacks {missing} and adds {extra} compared with "
        f"{fam.name}'s architecture",
    )
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    report.require(not wrong, check, f"shapes or dtypes differ (got, expected): {wrong}")
    try:
        fresh.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        report.fail(check, f"the weights do not load into a fresh model: {exc}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    report.require(not bad, check, f"tensors {bad} hold NaN or infinite values")
    return fresh.eval()


def _check_secret(
    report: ConformanceReport, secret: Any, name: str, attack: Configurable, fam: Family
) -> None:
    check = "secret"
    report.require(
        isinstance(secret, Secret),
        check,
        f"the secret is {type(secret).__name__}, not auditgame.secret.Secret",
    )
    report.require(secret.backdoored, check, "backdoored is False for a planted organism")
    report.require(
        secret.attack == name,
        check,
        f"the secret names attack {secret.attack!r}, not its registered name {name!r}",
    )
    report.require(
        secret.trigger is not None,
        check,
        "the secret records no trigger, so nothing can re-measure or compare it",
    )
    try:
        secret.trigger_object()
    except (ValueError, KeyError, TypeError) as exc:
        report.fail(
            check,
            f"auditgame.trigger.load cannot rebuild the secret's trigger "
            f"(kind {secret.trigger.get('kind')!r}): {exc}; register its class with "
            "@auditgame.trigger.trigger_kind",
        )
    report.require(
        secret.target is None or 0 <= secret.target < len(fam.classes),
        check,
        f"target {secret.target} is not a label of {fam.name}",
    )
    report.require(
        secret.asr is not None and 0.0 <= secret.asr <= 1.0,
        check,
        f"the recorded ASR {secret.asr!r} is not a rate in [0, 1]",
    )
    own = attack.get_params()
    floor = own.get("min_asr", own.get("min_rate"))
    if isinstance(floor, (int, float)):
        report.require(
            secret.asr >= floor,
            check,
            f"the recorded ASR {secret.asr:.3f} is below the attack's own floor {floor}",
        )
    report.require(
        0.0 <= secret.clean_accuracy <= 1.0,
        check,
        f"clean accuracy {secret.clean_accuracy} is not in [0, 1]",
    )
    report.require(
        secret.poison_rate is None or 0.0 <= secret.poison_rate <= 1.0,
        check,
        f"poison rate {secret.poison_rate} is not in [0, 1]",
    )


def _check_asr(
    report: ConformanceReport,
    secret: Secret,
    model: torch.nn.Module,
    fam: Family,
    kind: ViolationKind,
    tolerance: float,
) -> None:
    """The recorded success, measured again as the organism's violation kind measures it
    (``ViolationKind.remeasure``)."""
    assert secret.asr is not None
    found = kind.remeasure(model, secret, fam)
    if found.at_least:
        report.require(
            found.rate >= secret.asr - tolerance,
            "asr",
            f"the recorded success is {secret.asr:.3f} but the {found.what} is only "
            f"{found.rate:.3f}",
        )
        return
    report.require(
        abs(found.rate - secret.asr) <= tolerance,
        "asr",
        f"the recorded success is {secret.asr:.3f} but the {found.what} is {found.rate:.3f} "
        f"(tolerance {tolerance})",
    )


def reachable_strings(obj: object, seen: set[int], found: list[str], depth: int = 0) -> None:
    """Collect into ``found`` the strings reachable from ``obj`` through instance data,
    containers and closures (not through modules or classes): what a snooping auditor could
    read from what it was given. The secrecy tests check the secret is not among them."""
    if id(obj) in seen or depth > 12:
        return
    seen.add(id(obj))
    if isinstance(obj, str | bytes):
        found.append(obj if isinstance(obj, str) else obj.decode("latin-1"))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            reachable_strings(k, seen, found, depth + 1)
            reachable_strings(v, seen, found, depth + 1)
    elif isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            reachable_strings(item, seen, found, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        reachable_strings(vars(obj), seen, found, depth + 1)
        for cell in getattr(obj, "__closure__", None) or ():
            reachable_strings(cell.cell_contents, seen, found, depth + 1)
