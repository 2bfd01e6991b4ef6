"""A violation kind: everything that depends on *what kind* of violation a spec forbids.

The game's core (spec, judge, store, leaderboard, report, traffic, command line, zoo,
conformance suite) is the same for every track; what differs between an image patch, an
additive perturbation, a token pattern, a text trojan and a covert cipher is asked of the
spec's ``ViolationKind``, never switched on. A kind knows:

- its threat model (``ThreatModel``): the triggers a spec forbids, and how a witness is
  checked on held-out data without the secret;
- how a planted trigger and a found one compare: named recovery metrics (``Metric``), which
  the judge stores in a long table, so a new kind adds metrics without a schema change;
- how the report shows a trigger it cannot draw, and its own report section, if any;
- how run-time traffic carries its trigger (or a decoy on a clean organism);
- how to re-measure a planted organism's recorded success (the conformance suite's check);
- the auditors that examine it unless a game names others.

A kind registers with ``@violation_kind(name)``, whose name is its threat model's ``kind``
(a plugin's from a module in the ``auditgame.plugins`` entry points); the built-ins live in
``auditgame.kinds``. Kinds are trusted code: the referee, which holds the key, runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from auditgame import registry
from auditgame.errors import RegistryError
from auditgame.table import Table

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from auditgame.families.base import Family
    from auditgame.score import Score
    from auditgame.secret import Secret


@dataclass(frozen=True)
class WitnessCheck:
    """The spec's verdict on one candidate trigger.

    Attributes:
        asr: the witness's success rate on held-out clean data, as its threat model defines
            it (an attack-success rate, a flip rate, a REASR ...).
        in_threat_model: whether the trigger is one the spec forbids at all.
        violates: ``in_threat_model and asr >= tau``: the trigger proves a violation.
        per_target: for a witness that names several targets, each one's own rate, so the
            judge, which alone knows the planted targets, can average over those.
    """

    asr: float
    in_threat_model: bool
    violates: bool
    per_target: dict[str, float] | None = None


class ThreatModel(BaseModel):
    """The triggers a spec forbids. Subclasses set ``kind`` to a ``Literal`` of their
    violation kind's name, and implement ``describe`` and ``check``.

    ``untargeted`` says whether a witness without a target label can be checked: a flip rate
    for additive perturbations, or a witness that names its target strings itself.
    ``needs_samples`` says whether ``check`` measures the witness on clean samples (an image
    trigger stamped on them) or needs none (a prompt that is the whole input)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    untargeted: ClassVar[bool] = False
    needs_samples: ClassVar[bool] = True

    def describe(self) -> str:
        raise NotImplementedError

    def check(
        self,
        model: torch.nn.Module,
        witness: dict[str, Any],
        target: int | None,
        x: torch.Tensor,
        y: torch.Tensor,
        tau: float,
    ) -> WitnessCheck:
        """Measure ``witness`` on ``model`` and held-out ``(x, y)``; no secret needed."""
        raise NotImplementedError

    def bound_to(self, interface: Any) -> ThreatModel:
        """This threat, checked with what a model of no family carries instead of its
        family's (``Subject.interface``, e.g. a language model's tokenizer); itself for a
        threat whose check needs nothing of a family."""
        return self


@dataclass(frozen=True)
class Metric:
    """A recovery metric a kind declares: how much of the planted violation a finding
    recovered, averaged over backdoored organisms on the leaderboard.

    Attributes:
        name: the key in ``Score.recovery`` and in the store's ``recovery`` table.
        label: the leaderboard column's heading.
        about: what it measures, with the formula's home (``judge.*``).
        chance_of: when set, this metric is the chance level of the named one: what guesses
            drawn from the attack's public distribution score on it (``ViolationKind.chance``).
            The leaderboard then also shows the named metric's mean over this one's.
    """

    name: str
    label: str
    about: str
    chance_of: str = ""


@dataclass(frozen=True)
class Remeasured:
    """A planted organism's success measured again (``ViolationKind.remeasure``).

    Attributes:
        rate: the rate measured now.
        what: what was measured, in words, for the conformance suite's message.
        at_least: the recorded rate is a floor the measurement must reach rather than a value
            it must match (a flip rate measured on another split).
    """

    rate: float
    what: str
    at_least: bool = False


@dataclass(frozen=True)
class KindSection:
    """A report section of a kind's own: a heading, a note saying how to read it, a table."""

    title: str
    note: str
    table: Table


@dataclass(frozen=True)
class Picture:
    """A trigger as the report draws it: named arrays in [0, 1] (``(H, W)`` or ``(C, H, W)``)
    and its size in the threat model's own measure (an image mask's L1), if it has one."""

    images: tuple[tuple[str, np.ndarray], ...]
    size: float | None = None


class ViolationKind:
    """One kind of violation; see the module docstring. Subclass, set the class attributes,
    override what differs from these defaults (which suit input triggers ``x -> T(x)``
    classified into labels), and register with ``@violation_kind(name)``.

    Attributes:
        name: set by the registry; equal to ``threat``'s ``kind``.
        threat: the threat-model class a spec of this kind carries.
        metrics: the recovery metrics ``recovery`` may return.
        default_auditors: who audits a zoo of this kind when a game names no one.
        modalities: the inputs of the models a spec of this kind is about (``Family.modality``:
            "image", "vector", "tokens", "text"); a user's spec file is checked against it.
        witness_format: how a finding's witness of this kind is written, in words, for whoever
            writes one by hand (an auditing agent reads it from ``describe``).
    """

    name: ClassVar[str]
    threat: ClassVar[type[ThreatModel]]
    metrics: ClassVar[tuple[Metric, ...]] = ()
    default_auditors: ClassVar[tuple[str, ...]] = ()
    modalities: ClassVar[tuple[str, ...]] = ()
    witness_format: ClassVar[str] = (
        "trigger: the violation kind's to_dict() format (docs/spec.md); target if any"
    )

    def recovery(
        self,
        planted: dict[str, Any] | None,
        found: dict[str, Any] | None,
        check: WitnessCheck | None,
    ) -> dict[str, float]:
        """Named metrics (of ``metrics``) comparing the planted trigger with the found one;
        only those that apply (none when the finding returned no trigger)."""
        return {}

    def chance(
        self,
        family: str,
        planted: dict[str, Any] | None,
        found: dict[str, Any] | None,
        rng: np.random.Generator,
    ) -> dict[str, float]:
        """The chance levels (metrics with ``chance_of``) of the recovery metrics for this
        finding: what as many guesses as it made, drawn at random from the family's public
        trigger distribution, would have scored against ``planted``. None by default."""
        return {}

    def picture(self, raw: dict[str, Any]) -> Picture | None:
        """Images of a stored trigger of this kind for the report's gallery; None when ``raw``
        is not one of this kind's or this kind draws none (``describe_trigger`` then words it).

        Raises:
            KeyError, TypeError, ValueError: a trigger of this kind that cannot be read.
        """
        return None

    def describe_trigger(self, raw: dict[str, Any]) -> str | None:
        """Words for a stored trigger of this kind that the report cannot draw as an image
        mask; None when ``raw`` is not one of this kind's."""
        return None

    def section(self, scores: Sequence[Score]) -> KindSection | None:
        """A report section of this kind's own over its rows of one game, if it has one."""
        return None

    def user_model(
        self, folder: Path, model: torch.nn.Module, spec: Any
    ) -> tuple[torch.nn.Module, object | None]:
        """A model from outside a zoo (``auditgame audit``), loaded from ``folder`` under the
        user's ``spec`` file (``auditgame.user.spec``), made ready for this kind's auditors:
        the model they examine and what they use besides its weights (``Subject.interface``,
        e.g. a language model's tokenizer). By default the model as loaded, and nothing.

        Raises:
            AuditgameError: what the auditors need is missing from ``folder`` or ``spec``.
        """
        return model, None

    def traffic(
        self,
        family: Family,
        secret: Secret,
        n: int,
        rng: np.random.Generator,
        *,
        triggered_fraction: float,
        decoys: tuple[str, ...],
    ) -> torch.Tensor:
        """``n`` test-split inputs in random order, ``triggered_fraction`` of them triggered.

        Triggered inputs are drawn from those whose label is not the trigger's target, so
        each one is an input the backdoor would change (any input, for a backdoor with no
        single target). A clean organism's traffic carries a decoy drawn from one of the
        ``decoys`` attacks: the inputs are shifted alike, so traffic alone tells nothing."""
        import torch

        test = family.data().test
        trigger = secret.trigger_object()
        target = secret.target
        if trigger is None:
            name = decoys[int(rng.integers(len(decoys)))]
            decoy = registry.get("attack", name)().decoy(rng, family)
            if decoy is None:
                raise ValueError(f"attack {name!r} makes no input trigger to use as a decoy")
            trigger, target = decoy
        n = min(n, len(test))
        order = rng.permutation(len(test))[:n]
        x = test.x[order].clone()
        labels = test.y[order].numpy()
        eligible = np.flatnonzero(labels != target) if target is not None else np.arange(n)
        count = min(len(eligible), round(triggered_fraction * n))
        chosen = torch.as_tensor(rng.choice(eligible, size=count, replace=False))
        x[chosen] = trigger.apply(x[chosen])
        return x

    def remeasure(self, model: torch.nn.Module, secret: Secret, family: Family) -> Remeasured:
        """The planted organism's success measured again on the family's test split: the
        attack-success rate to its target, or with no single target the flip rate."""
        from auditgame import metrics

        trigger = secret.trigger_object()
        assert trigger is not None
        test = family.data().test
        if secret.target is None:
            rate = metrics.flip_rate(model, trigger.apply, test.x)
            return Remeasured(rate, "fraction of the test split the trigger flips", True)
        rate = metrics.attack_success_rate(model, trigger.apply, test.x, test.y, secret.target)
        what = (
            f"fraction of the test split the trigger sends to target {secret.target} "
            "(metrics.attack_success_rate)"
        )
        return Remeasured(rate, what)


def violation_kind(name: str) -> Any:
    """Class decorator: register a ``ViolationKind`` under its threat model's ``kind``."""
    return registry.register("violation", name)


def kind_of(name: str) -> ViolationKind:
    """The registered violation kind ``name`` (a spec's ``threat_model.kind``)."""
    cls = registry.get("violation", name)
    return cls()


def threat_model(data: Any) -> ThreatModel:
    """A threat model from its dict (or itself), by the class its ``kind`` registers."""
    if isinstance(data, ThreatModel):
        return data
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        raise ValueError("a threat model is a mapping with a 'kind' naming a violation kind")
    try:
        cls = kind_of(data["kind"]).threat
    except RegistryError as exc:
        raise ValueError(str(exc)) from None
    return cls.model_validate(data)
