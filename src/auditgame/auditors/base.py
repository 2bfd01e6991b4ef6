"""The blue team's template: ``Auditor.audit`` is final, subclasses write ``run``.

``audit`` checks the subject's access against what the auditor declares, seeds every random
source, times the run, counts passes through the model, turns an exception into a finding
with ``error`` set (so one failure does not sink a game) and wraps the verdict in a
``Finding``.
"""

from __future__ import annotations

import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, final

import numpy as np
import torch

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.finding import Cost, Finding
from auditgame.params import Configurable
from auditgame.subject import Subject


class Witness(Protocol):
    """A reconstructed trigger: a ``Trigger`` (mask and pattern) for image families, an
    ``AdditiveTrigger`` for vector families; the finding stores its ``to_dict()``."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Verdict:
    """What ``run`` returns; ``audit`` adds the bookkeeping. ``statistic`` is the detector's
    raw suspicion, where it has one (``auditors.calibrated`` judges it against clean models)."""

    p_violation: float
    target: int | None = None
    trigger: Witness | None = None
    certificate: dict[str, Any] | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    statistic: float | None = None


class Auditor(Configurable, ABC):
    """Base of every auditor.

    Class attributes (the auditor's tags):
        access: the least access it needs; the runner gives it exactly this.
        modalities: the kinds of family it can examine (``Family.modality``: "image", ...).
        families: a narrower list of family names, or None for every family of those
            modalities.
        threats: the threat-model kinds whose violations it looks for (``ThreatModel.kind``),
            or None for any: a user's audit runs only auditors that speak to its spec.
        reference: whether it also needs the family's base model (``TextFamily.base_model``),
            which every organism was fine-tuned from: a separate, declared access, since a
            real auditor rarely has the pre-tuning weights; reported apart.
    """

    name: ClassVar[str]
    access: ClassVar[Access] = Access.WEIGHTS
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    families: ClassVar[tuple[str, ...] | None] = None
    threats: ClassVar[tuple[str, ...] | None] = None
    reference: ClassVar[bool] = False

    @classmethod
    def supports(cls, family: str) -> bool:
        """Whether the runner should pair this auditor with organisms of ``family``."""
        modality = registry.get("family", family).modality
        return modality in cls.modalities and (cls.families is None or family in cls.families)

    @classmethod
    def looks_for(cls, threat: str) -> bool:
        """Whether it looks for violations of a spec whose threat model is of kind ``threat``
        (``threats``: None looks for any)."""
        return cls.threats is None or threat in cls.threats

    @classmethod
    def is_dynamic(cls) -> bool:
        return cls.access >= Access.DYNAMIC

    @final
    def audit(self, subject: Subject, budget: Budget, *, seed: int = 0) -> Finding:
        subject.require(self.access)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        verdict: Verdict | None = None
        error = None
        try:
            verdict = self.run(subject, budget, rng)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
        cost = Cost(
            seconds=time.perf_counter() - start,
            forward=subject.passes.forward,
            backward=subject.passes.backward,
        )
        if verdict is None:
            return Finding(
                auditor=self.name,
                params=self.get_params(),
                p_violation=None,
                cost=cost,
                error=error,
            )
        return Finding(
            auditor=self.name,
            params=self.get_params(),
            p_violation=float(np.clip(verdict.p_violation, 0.0, 1.0)),
            target=verdict.target,
            trigger=verdict.trigger.to_dict() if verdict.trigger is not None else None,
            certificate=verdict.certificate,
            evidence=verdict.evidence,
            cost=cost,
        )

    @abstractmethod
    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        """Examine the subject and return a verdict; may use only what ``access`` allows."""


class FittedAuditor(Auditor):
    """An auditor with a fitting stage (see ``auditgame.fitting``); ``run`` may rely on
    ``self.fitted``.

    ``without_fit`` names the parameters under which it needs no fit (its paper's fixed
    rule), or None when it has no rule without one: a model outside a zoo whose spec names no
    ``fit_family`` is audited under them."""

    fitted: dict[str, torch.Tensor] | None = None
    without_fit: ClassVar[dict[str, Any] | None] = None

    @abstractmethod
    def fit(self, family: str, workdir: Path) -> dict[str, torch.Tensor]:
        """Learn what ``run`` needs for ``family``; ``workdir`` holds shadow zoos and the like.

        Must be deterministic given the auditor's parameters: the result is cached by them.
        """

    def load_fitted(self, tensors: dict[str, torch.Tensor]) -> None:
        self.fitted = tensors

    def require_fitted(self) -> dict[str, torch.Tensor]:
        if self.fitted is None:
            raise RuntimeError(
                f"{self.name} has a fitting stage: call auditgame.fitting.ensure_fitted "
                "(a game does this before auditing)"
            )
        return self.fitted


def anomaly_index(values: np.ndarray) -> np.ndarray:
    """MAD-based anomaly index ``|v - median| / (1.4826 * MAD)``, as in Neural Cleanse.

    The constant makes the MAD a consistent estimator of the standard deviation under a normal
    distribution, so an index of 2 means about two standard deviations from the median.
    """
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    return np.abs(values - median) / max(mad, 1e-12)


def logistic(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))
