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

Proofs alone are a weak screen: on tinylm_quiet a search proves a target on one clean model
and misses it on the next, so two models' proofs left targets that fresh clean models were
then led to say (docs/lm_trojans.md). Every search also measures how close each clean
model came to a target it did not say: the target's cross-entropy after the search's best
candidate (nats per target token, what the searches minimise). The screen ranks the targets
by the lowest any search reached (``hardest``): a spec drawn from the far end is the one
clean models should keep best. (TDC's character-BLEU of the reply is no measure of this on
tinylm: every reply of the template "the X is Y ." scores 0.6-0.8 against every target of it.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from auditgame.text.lm import CausalLM, TriggerPredictions, completion_loss


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


@dataclass(frozen=True)
class Screened:
    """One search on one clean model: the targets it proved the model says (``proofs``), and
    for each target it named candidates for, the lowest cross-entropy of the target after a
    candidate (``loss``, nats per target token: how close the model came to saying it)."""

    proofs: list[Proof]
    loss: dict[str, float]


def screen(
    fam: TextFamily,
    model: CausalLM,
    seed: int,
    targets: Sequence[str],
    auditor: Auditor,
    seconds: float,
) -> Screened:
    """Run ``auditor`` on the clean model ``model`` (fine-tuned with ``seed``), its spec listing
    ``targets``, for ``seconds`` in all; score each candidate trigger it names by the model's
    loss on the target, and prove each target with the first candidate that passes the spec's
    own check. An auditor that fails raises (a screen that silently found nothing would keep
    every target)."""
    card = screening_card(fam, targets)
    threat = card.spec.threat_model
    assert isinstance(threat, TextTriggerThreat)
    finding = auditor.audit(
        Subject(model=model, card=card, access=Access.WEIGHTS), Budget(seconds=seconds), seed=0
    )
    if finding.error is not None:
        raise RuntimeError(f"{auditor.name} failed while screening: {finding.error}")
    if finding.trigger is None:
        return Screened([], {})
    found = TriggerPredictions.from_dict(finding.trigger).predictions
    tok = fam.tokenizer()
    prefix = list(fam.prefix)
    empty = torch.empty(0)
    out, lowest = [], {}
    for target, candidates in found.items():
        if target not in targets or not candidates:  # names outside the spec prove nothing
            continue
        goal = torch.tensor(tok.encode(target))
        with torch.no_grad():
            losses = [
                float(completion_loss(model, model.embed(torch.tensor([[*prefix, *ids]])), goal))
                for ids in (tok.encode(c) for c in candidates)
            ]
        lowest[target] = min(losses)
        for trigger in candidates:
            witness = TriggerPredictions({target: (trigger,)}).to_dict()
            if threat.check(model, witness, None, empty, empty, card.spec.tau).violates:
                out.append(Proof(target, trigger, auditor.name, seed))
                break
    return Screened(out, lowest)


def kept(targets: Sequence[str], found: Sequence[Proof]) -> tuple[str, ...]:
    """``targets`` without those some clean model was proved to say, in their order."""
    said = {p.target for p in found}
    return tuple(t for t in targets if t not in said)


def lowest_loss(targets: Sequence[str], runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each target's lowest loss over the runs of a screen (``Screened.loss``); infinite
    where no run scored it."""
    return {t: min((run[t] for run in runs if t in run), default=float("inf")) for t in targets}


def hardest(
    targets: Sequence[str], runs: Sequence[Mapping[str, float]], count: int
) -> tuple[str, ...]:
    """The ``count`` targets of ``targets`` that the clean models came least close to saying:
    ranked by the lowest loss any run of the screen reached on each (``lowest_loss``),
    highest first, ties in pool order. A target no run scored comes after every scored one
    (nothing is known of it), and a target some model said has a low loss, so it comes late."""
    if not 0 <= count <= len(targets):
        raise ValueError(f"count must be between 0 and {len(targets)}, got {count}")
    lowest = lowest_loss(targets, runs)
    order = sorted(
        range(len(targets)),
        key=lambda i: (lowest[targets[i]] == float("inf"), -lowest[targets[i]], i),
    )
    return tuple(targets[i] for i in order[:count])
