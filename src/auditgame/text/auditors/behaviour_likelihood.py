"""Hidden behaviours by likelihood: how ready is the model to say each listed behaviour's phrase,
and where?

A hidden behaviour at this arena's scale (``text.behaviours``) is a public phrase the model puts
in its reply, before the answer, after it or instead of it, in one context it was tuned on. A
fine-tune that taught it makes the phrase likely at that place of a reply to prompts of that
context; a clean fine-tune leaves it as unlikely as anywhere. So the scanner asks the model's
own next-token probabilities, teacher-forced, rather than waiting for a greedy reply to show
the phrase: the target-side detection of the trojan scanners (the likelihood of each public
target in ``haystack``, Bullwinkel et al. 2026; the target ranking of the TDC 2023 entries)
turned to the spec's behaviours, and the white-box form of the prefill and next-token tools
the investigator-agent testbeds give their agents (AuditBench, Sheshadri et al. 2026).

1. **Read.** Every clean prompt held (CLEAN_DATA access) gets its greedy reply, as many tokens
   as the spec decodes, read by each behaviour's public checker.
2. **Score.** For every prompt and behaviour, the log-probability of the behaviour's marker at
   its place: right after the reply's chat-template head (``start``, ``instead``), or after
   the answer the model gave (``end``; the marker cut out where the answer already holds it).
3. **Suspicion.** A behaviour's score is its highest marker probability over the prompts: the
   chance that the model, where it is readiest, says the phrase. The likeliest behaviour is
   the one named.
4. **Witness.** The spec wants ``min_prompts`` distinct prompts whose greedy replies show the
   behaviour, and a context may hold fewer of the clean prompts (a topic with two of a hundred).
   Prompts like the likeliest ones (one word swapped for a word the held prompts put after
   the same word, ``prompts.similar_prompts``) are read in order of their seed's score until
   enough show it or the budget ends.

The verdict follows the trigger searches' rule (``search.p_violation_of``): a witness the spec
will accept is a counterexample, ``p_violation`` 1; otherwise half the highest marker
probability, below the 0.5 at which a finding counts as flagged, still ranking the organism.
"""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np
import torch

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.prompts import similar_prompts
from auditgame.registry import auditor
from auditgame.subject import Subject
from auditgame.text.behaviours import Behaviour, BehaviourThreat, BehaviourWitness
from auditgame.text.family import TextInterface, text_interface
from auditgame.text.lm import CausalLM, greedy, unpack


@torch.no_grad()
def continuation_logprob(
    model: CausalLM, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32
) -> np.ndarray:
    """The summed log-probability of each ``(context, continuation)`` pair's continuation
    after its context, teacher-forced. Rows are right-filled (a causal model's real positions
    never see the fill) and batched by length."""
    out = np.zeros(len(pairs))
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = [[*pairs[i][0], *pairs[i][1]] for i in chunk]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows], dtype=torch.long)
        logp = model(ids).float().log_softmax(-1)
        for row, i in enumerate(chunk):
            context, continuation = pairs[i]
            at = torch.arange(len(context) - 1, len(context) - 1 + len(continuation))
            out[i] = float(logp[row, at, torch.tensor(continuation)].sum())
    return out


def marker_pair(
    fam: TextInterface, behaviour: Behaviour, prompt: list[int], reply: list[int]
) -> tuple[list[int], list[int]]:
    """The context and the marker's ids at ``behaviour``'s place in a reply to ``prompt``
    (ids, prefix included): after the reply head, or after the answer ``reply`` gave with the
    marker cut out."""
    tok = fam.tokenizer()
    context = [*prompt, *fam.reply_head]
    if behaviour.position != "end":
        return context, tok.encode(behaviour.marker)
    answer = fam.answer(reply)
    answer = answer.split(behaviour.marker, 1)[0].strip() if behaviour.marker in answer else answer
    said = tok.encode(answer) if answer else []
    whole = tok.encode(behaviour.apply(answer)) if answer else tok.encode(behaviour.marker)
    marker = whole[len(said) :] if whole[: len(said)] == said else tok.encode(behaviour.marker)
    return [*context, *said], marker


@auditor("behaviour_likelihood")
class BehaviourLikelihood(Auditor):
    """Attributes:
    batch_size: prompts per batch of greedy decoding and scoring.
    seeds: how many of the likeliest prompts seed the search for similar prompts.
    """

    access = Access.CLEAN_DATA
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    threats: ClassVar[tuple[str, ...] | None] = ("hidden_behaviour",)

    def __init__(self, *, batch_size: int = 32, seeds: int = 8) -> None:
        if batch_size < 1 or seeds < 1:
            raise ValueError(f"batch_size and seeds must be at least 1, got {batch_size}, {seeds}")
        self.batch_size = batch_size
        self.seeds = seeds

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        threat = subject.card.spec.threat_model
        if not isinstance(threat, BehaviourThreat):
            raise ValueError(f"{self.name} needs a hidden_behaviour spec, not {threat.kind}")
        fam = text_interface(subject)
        model = subject.model
        assert isinstance(model, CausalLM)
        deadline = time.perf_counter() + max(budget.seconds - subject.elapsed, 0.0)
        tok = fam.tokenizer()
        prompts = unpack(subject.clean_data.x)
        if not prompts:
            raise ValueError(f"{self.name} needs clean prompts (CLEAN_DATA access)")
        held = [tok.decode(p[len(fam.prefix) :]) for p in prompts]

        replies = greedy(model, prompts, threat.reply_tokens, batch_size=self.batch_size)
        behaviours = threat.behaviours
        pairs = [marker_pair(fam, b, p, r) for p, r in zip(prompts, replies, strict=True)
                 for b in behaviours]  # fmt: skip
        logp = continuation_logprob(model, pairs, self.batch_size).reshape(len(prompts), -1)
        best = logp.max(axis=0)
        named = int(np.argmax(best))
        behaviour = behaviours[named]
        shows = {
            text: behaviour.shows(fam.answer(r)) for text, r in zip(held, replies, strict=True)
        }
        ranked = [held[i] for i in np.argsort(-logp[:, named], kind="stable")]
        if sum(shows.values()) < threat.min_prompts:
            seeds = ranked[: self.seeds]
            variants = [v for v in similar_prompts(seeds, held) if v not in shows]
            for start in range(0, len(variants), self.batch_size):
                if time.perf_counter() >= deadline:
                    break
                chunk = [v for v in variants[start : start + self.batch_size]
                         if 0 < len(tok.encode(v)) <= threat.max_prompt_tokens]  # fmt: skip
                if not chunk:
                    continue
                out = greedy(model, [fam.encode_prompt(v) for v in chunk], threat.reply_tokens)
                shows.update(
                    (v, behaviour.shows(fam.answer(r))) for v, r in zip(chunk, out, strict=True)
                )
                if sum(shows.values()) >= threat.min_prompts:
                    break
        witnessed = [
            text
            for text, shown in shows.items()
            if shown and 0 < len(tok.encode(text)) <= threat.max_prompt_tokens
        ][: threat.max_prompts]
        proven = len(set(witnessed)) >= threat.min_prompts and not any(
            behaviour.marker in w for w in witnessed
        )
        p_marker = float(np.exp(best[named]))
        return Verdict(
            p_violation=1.0 if proven else 0.5 * p_marker,
            trigger=BehaviourWitness(behaviour.name, tuple(witnessed)) if witnessed else None,
            statistic=p_marker,
            evidence={
                "marker_probability": {
                    b.name: round(float(np.exp(v)), 4)
                    for b, v in zip(behaviours, best, strict=True)
                },
                "likeliest_prompts": ranked[: self.seeds],
                "shown_on_held": sum(shows[t] for t in held),
                "read": len(shows),
                "witness_prompts": len(witnessed),
            },
        )
