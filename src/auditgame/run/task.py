"""One unit of work: audit one organism with one auditor, then check its witness.

This is what an executor ships to a worker, and ``run_task`` is all a worker runs. The worker
is the referee's code: it opens and verifies the organism, stages what the auditor's access
allows, and hands that to the auditor's sandboxed child (``auditgame.run.sealed``), which is
the only place auditor code runs. The finding comes back as data; the worker then measures its
trigger through the spec itself, so an auditor cannot report a witness check of its own. A
task never carries the key or a secret; run-time traffic for dynamic auditors is prepared by
the key holder beforehand and travels as plain inputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.families.base import Dataset
from auditgame.finding import Finding
from auditgame.organism import Organism
from auditgame.provenance import code_fingerprint
from auditgame.run import sealed
from auditgame.run.sealed import AuditorInfo, Fit
from auditgame.subject import Subject
from auditgame.violation import WitnessCheck


@dataclass(frozen=True)
class Task:
    """Attributes:
    organism_path: the organism's folder (verified again on load).
    info: the auditor, its parameters and what its subject carries (``AuditorInfo``).
    budget: the auditor's budget.
    seed: seeds the auditor's randomness.
    traffic: run-time inputs, for dynamic auditors only.
    fit: the auditor's fit and its recorded hash, for auditors with a fitting stage; the
        referee fits (in a sandbox) before sending tasks, so workers only load.
    hidden: folders a sandbox must never show even when a bound folder contains them (the
        zoo's folder, the store's, the fits').
    code: the game's code fingerprint (``provenance.code_fingerprint``): a worker, or an
        auditor's child, that loaded other code stops the game (``sealed.CodeChanged``).
    """

    organism_path: Path
    info: AuditorInfo
    budget: Budget
    seed: int
    traffic: torch.Tensor | None = None
    fit: Fit | None = None
    hidden: tuple[Path, ...] = ()
    code: str | None = None

    @property
    def auditor(self) -> str:
        return self.info.name


@dataclass(frozen=True)
class Outcome:
    """The finding and, when it named a trigger (and a target, where the spec needs one), the
    spec's check of it; ``sealed`` says whether the auditor ran in a sandbox
    (``auditgame.run.sandbox``)."""

    finding: Finding
    check: WitnessCheck | None
    sealed: bool = False


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
    clean, traffic = access_data(organism, access, budget, traffic)
    return Subject(
        model=organism.model(),
        card=organism.card,
        access=access,
        clean=clean,
        traffic=traffic,
        # A copy: the subject freezes what it holds, and the family caches its base model.
        reference=copy.deepcopy(fam.base_model()) if reference else None,
    )


def access_data(
    organism: Organism, access: Access, budget: Budget, traffic: torch.Tensor | None
) -> tuple[Dataset | None, torch.Tensor | None]:
    """The data ``access`` allows, and nothing above it: ``n_clean`` validation samples from
    ``CLEAN_DATA``, the run-time traffic at ``DYNAMIC``."""
    fam = registry.get("family", organism.card.family)()
    clean = fam.data().val.take(budget.n_clean) if access >= Access.CLEAN_DATA else None
    if access >= Access.DYNAMIC and traffic is None:
        raise ValueError("a dynamic auditor needs run-time traffic, which only a game provides")
    return clean, traffic if access >= Access.DYNAMIC else None


def check_witness(organism: Organism, finding: Finding) -> WitnessCheck | None:
    """Measure the finding's trigger through the spec on the test split; no secret used."""
    spec = organism.card.spec
    if finding.trigger is None or (finding.target is None and not spec.untargeted):
        return None
    fam = registry.get("family", organism.card.family)()
    test = fam.data().test
    return spec.check_witness(organism.model(), finding.trigger, finding.target, test.x, test.y)


def run_task(task: Task) -> Outcome:
    if task.code is not None and code_fingerprint() != task.code:
        raise sealed.CodeChanged(task.code, code_fingerprint(), "a worker")
    organism = Organism.open(task.organism_path)
    info = task.info
    clean, traffic = access_data(organism, info.access, task.budget, task.traffic)
    finding, was_sealed = sealed.audit(
        info,
        organism,
        task.budget,
        task.seed,
        clean=clean,
        traffic=traffic,
        fit=task.fit,
        hidden=task.hidden,
        code=task.code,
    )
    try:
        check = check_witness(organism, finding)
    except Exception as exc:  # the trigger is the auditor's data: malformed is its failure
        bad = finding.model_copy(
            update={"error": f"witness rejected by the spec: {type(exc).__name__}: {exc}"[:2000]}
        )
        return Outcome(bad, None, sealed=was_sealed)
    return Outcome(finding, check, sealed=was_sealed)
