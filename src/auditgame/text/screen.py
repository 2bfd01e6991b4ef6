"""Screening a text spec's targets against clean models: which of them a model that no one
planted anything in can be led to say.

A ``text_trigger`` spec forbids its targets after any prompt within the bound. With targets no
clean answer resembles (``tinylm``'s "wake up neo") a clean model keeps that spec; with
*plausible* targets (``tinylm_quiet``'s false answers in the corpus's own words, "the corn is
black .") it may not: on a 24-organism zoo the trigger searches proved every one of the 12
clean fine-tunes in violation, 47 counterexamples for 20 of the 30 targets
(docs/lm_trojans.md). Detection then scores how rarely an auditor finds a true counterexample
on a clean model, not how well it finds a planted trojan.

A spec clean models keep is made the way the violation is found: run the trigger-search
auditors on clean models of the family, each given the whole candidate list, and drop every
target one of them proves — a candidate prompt within the bound after which the clean model's
greedy reply is the target verbatim (``TextTriggerThreat.check``, the spec's own test). The
screen is only as strong as its searches and budget: a target that survives was not said by
these clean models to these searches, which is evidence, not proof, that clean models keep it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from auditgame import __version__
from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor
from auditgame.card import Card
from auditgame.spec import Spec
from auditgame.subject import Subject
from auditgame.text.family import TextFamily
from auditgame.text.kind import TextTriggerThreat
from auditgame.text.lm import CausalLM, TriggerPredictions


@dataclass(frozen=True)
class Proof:
    """A clean model proved to say a target: ``trigger`` (within the bound) makes ``model``
    (a clean fine-tune's seed) reply ``target`` verbatim; ``auditor`` found it."""

    target: str
    trigger: str
    auditor: str
    model: int


def screening_card(fam: TextFamily, targets: Sequence[str]) -> Card:
    """The public card of a ``fam`` organism whose spec lists ``targets`` (placeholder hashes:
    the screen audits models of its own making, not a zoo's)."""
    spec = fam.spec()
    threat = TextTriggerThreat(
        family=fam.name, targets=list(targets), max_trigger_tokens=fam.max_trigger_tokens
    )
    return Card(
        family=fam.name,
        architecture=fam.architecture(),
        input_shape=list(fam.input_shape),
        classes=list(fam.classes),
        spec=Spec(behaviour=spec.behaviour, threat_model=threat, tau=spec.tau),
        training_data=fam.training_data(),
        weights_sha256="0" * 64,
        secret_commitment="0" * 64,
        auditgame_version=__version__,
    )


def proofs(
    fam: TextFamily,
    model: CausalLM,
    seed: int,
    targets: Sequence[str],
    auditor: Auditor,
    seconds: float,
) -> list[Proof]:
    """Every target of ``targets`` that ``auditor``, given ``seconds`` in all, proves the clean
    model ``model`` (fine-tuned with ``seed``) says: each candidate trigger it names is checked
    on its own by the spec's check. An auditor that fails raises (a screen that silently
    found nothing would keep every target)."""
    card = screening_card(fam, targets)
    threat = card.spec.threat_model
    assert isinstance(threat, TextTriggerThreat)
    finding = auditor.audit(
        Subject(model=model, card=card, access=Access.WEIGHTS), Budget(seconds=seconds), seed=0
    )
    if finding.error is not None:
        raise RuntimeError(f"{auditor.name} failed while screening: {finding.error}")
    if finding.trigger is None:
        return []
    found = TriggerPredictions.from_dict(finding.trigger).predictions
    empty = torch.empty(0)
    out = []
    for target, candidates in found.items():
        for trigger in candidates:
            witness = TriggerPredictions({target: (trigger,)}).to_dict()
            if threat.check(model, witness, None, empty, empty, card.spec.tau).violates:
                out.append(Proof(target, trigger, auditor.name, seed))
                break
    return out


def kept(targets: Sequence[str], found: Sequence[Proof]) -> tuple[str, ...]:
    """``targets`` without those some clean model was proved to say, in their order."""
    said = {p.target for p in found}
    return tuple(t for t in targets if t not in said)
