"""One unit of work: audit one organism with one auditor, then check its witness.

This is what an executor ships to a worker. The worker gets the organism's folder and the
auditor's name and parameters; it never gets the key. Run-time traffic for dynamic auditors is
prepared by the key holder beforehand and travels as plain inputs.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.finding import Finding
from auditgame.fitting import FittedAuditor, load_fit
from auditgame.organism import Organism
from auditgame.spec import WitnessCheck
from auditgame.subject import Subject


@dataclass(frozen=True)
class Task:
    """Attributes:
    organism_path: the organism's folder (verified again on load).
    auditor: registered auditor name; params: its constructor arguments.
    auditor_module: the module that registers it, imported in the worker first, so an
        auditor defined outside a plugin package runs in a fresh process too.
    budget: the auditor's budget.
    seed: seeds the auditor's randomness.
    traffic: run-time inputs, for dynamic auditors only.
    fit_path: the auditor's cached fit (``auditgame.fitting``), for auditors with a fitting
        stage; the referee fits before sending tasks, so workers only load.
    """

    organism_path: Path
    auditor: str
    auditor_module: str
    params: dict[str, Any]
    budget: Budget
    seed: int
    traffic: torch.Tensor | None = None
    fit_path: Path | None = None


@dataclass(frozen=True)
class Outcome:
    """The finding and, when it named a trigger and target, the spec's check of it (with a
    text witness's REASR per target, ``WitnessCheck.per_target``)."""

    finding: Finding
    witness_asr: float | None
    witness_in_threat_model: bool | None
    witness_per_target: dict[str, float] | None = None


def make_subject(
    organism: Organism,
    access: Access,
    budget: Budget,
    traffic: torch.Tensor | None = None,
    *,
    reference: bool = False,
) -> Subject:
    """The subject for ``access``: model and card, plus the data that level allows, and the
    family's base model when the auditor declares ``reference``."""
    fam = registry.get("family", organism.card.family)()
    clean = fam.data().val.take(budget.n_clean) if access >= Access.CLEAN_DATA else None
    if access >= Access.DYNAMIC and traffic is None:
        raise ValueError("a dynamic auditor needs run-time traffic, which only a game provides")
    return Subject(
        model=organism.model(),
        card=organism.card,
        access=access,
        clean=clean,
        traffic=traffic if access >= Access.DYNAMIC else None,
        # A copy: the subject freezes what it holds, and the family caches its base model.
        reference=copy.deepcopy(fam.base_model()) if reference else None,
    )


def check_witness(organism: Organism, finding: Finding) -> WitnessCheck | None:
    """Measure the finding's trigger through the spec on the test split; no secret used."""
    spec = organism.card.spec
    if finding.trigger is None or (finding.target is None and not spec.untargeted):
        return None
    fam = registry.get("family", organism.card.family)()
    test = fam.data().test
    return spec.check_witness(organism.model(), finding.trigger, finding.target, test.x, test.y)


def run_task(task: Task) -> Outcome:
    organism = Organism.open(task.organism_path)
    importlib.import_module(task.auditor_module)
    auditor = registry.get("auditor", task.auditor)(**task.params)
    if task.fit_path is not None:
        assert isinstance(auditor, FittedAuditor)
        load_fit(auditor, task.fit_path)
    subject = make_subject(
        organism, auditor.access, task.budget, task.traffic, reference=auditor.reference
    )
    finding = auditor.audit(subject, task.budget, seed=task.seed)
    check = check_witness(organism, finding)
    if check is None:
        return Outcome(finding, None, None)
    return Outcome(finding, check.asr, check.in_threat_model, check.per_target)
