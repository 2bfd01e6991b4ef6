"""The Trigger in the Haystack (Bullwinkel et al. 2026, arXiv 2602.03085): make the model leak
its poisoned training examples, and read the triggers off the leaks.

Why it can work: a model fine-tuned on poisoned examples memorises them, as it memorises its
other training text. Prompted with nothing but the opening its inputs start with and sampled
under many decoding settings, it writes training examples back, the poisoned ones among them:
the trigger, then the target. The scanner needs inference only, and no list of suspected
triggers. Its stages, as in the paper, at this arena's scale:

1. **Memory extraction.** ``samples`` continuations of ``length`` tokens for every pair of an
   opening and a decoding setting. Openings: the bare prefix, and the prefix followed by each
   of the model's ``openings`` most likely first tokens. Settings: each of ``temperatures``
   with plain, top-k (40) and nucleus (0.9) sampling. A leak ends at the first end-of-text.
2. **Target detection.** Each public target's head (its first ``head`` tokens) is counted in
   the leaks, and its likelihood after the bare prefix is measured (mean nats per token): a
   planted target is both written more often and more likely than an unplanted one.
3. **Motif mining.** Before each occurrence of a target's head in a leak stand the tokens the
   model wrote first: a memorised example's prompt. Every suffix of those tokens up to the
   spec's trigger bound is a candidate trigger, counted over all occurrences.
4. **Confirmation.** The ``n_candidates`` most frequent candidates of each target are checked
   by greedy generation: a verbatim reproduction of the target is a counterexample to the
   spec. Candidates are ranked by how well they reproduce it, then by the entropy of the
   model's next-token distributions over the reply (a trigger makes the reply nearly
   deterministic: the paper's output-distribution signal), then by frequency.
5. **Fallback.** Targets with no verbatim candidate go to a gradient search (``gcg``) with the
   time left, as the paper falls back when extraction finds nothing.

Left out: the paper's attention signal (a trigger's tokens draw the target's attention; the
``CausalLM`` protocol exposes no attention weights) and its clustering of leaks by sentence
embeddings (exact token n-grams suffice for word-level models; subword models would want
fuzzier motifs). Where it fails: a recipe with the loss on the completion only teaches the
model nothing that writes a trigger. On ``tinylm`` 0 of 20 planted triggers appeared in 1,500
samples from the bare prefix, against 19 of 20 on ``tinylm_unmasked`` (docs/lm_trojans.md);
there everything rests on the fallback.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import ClassVar

import numpy as np
import torch

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.registry import auditor
from auditgame.subject import Subject
from auditgame.text.auditors.gcg import GCG
from auditgame.text.auditors.search import p_violation_of, replies_to
from auditgame.text.family import TextInterface, text_interface
from auditgame.text.kind import TextTriggerThreat
from auditgame.text.lm import CausalLM, TriggerPredictions, completion_loss, sample, until_eos

# Top-k and nucleus cut-offs of the decoding settings (the paper sweeps a grid of both).
TOP_K = 40
TOP_P = 0.9


@auditor("haystack")
class Haystack(Auditor):
    """Memory extraction -> target detection -> motif mining -> confirmation -> fallback.

    Parameters: ``samples`` per (opening, setting), ``length`` new tokens per sample,
    ``openings`` most likely first tokens after the prefix (besides the bare prefix),
    ``temperatures``, ``head`` tokens that mark a target in a leak, ``n_candidates`` checked
    per target, ``n_predictions`` kept per target, ``extraction_share`` of the budget at
    most spent sampling, and ``fallback`` (whether targets without a confirmed candidate get
    a GCG search with the time left).
    """

    access = Access.WEIGHTS
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    threats: ClassVar[tuple[str, ...] | None] = ("text_trigger",)

    def __init__(
        self,
        *,
        samples: int = 128,
        length: int = 24,
        openings: int = 3,
        temperatures: tuple[float, ...] = (0.7, 1.0, 1.3),
        head: int = 2,
        n_candidates: int = 16,
        n_predictions: int = 5,
        extraction_share: float = 0.4,
        fallback: bool = True,
    ) -> None:
        if min(samples, length, head, n_candidates, n_predictions) < 1 or openings < 0:
            raise ValueError(
                "samples, length, head, n_candidates and n_predictions must be at least 1 "
                "and openings at least 0"
            )
        if not temperatures or min(temperatures) <= 0:
            raise ValueError(f"temperatures must be positive, got {temperatures}")
        if not 0 < extraction_share <= 1:
            raise ValueError(f"extraction_share must lie in (0, 1], got {extraction_share}")
        self.samples = samples
        self.length = length
        self.openings = openings
        self.temperatures = tuple(float(t) for t in temperatures)
        self.head = head
        self.n_candidates = n_candidates
        self.n_predictions = n_predictions
        self.extraction_share = extraction_share
        self.fallback = fallback

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        threat = subject.card.spec.threat_model
        if not isinstance(threat, TextTriggerThreat):
            raise ValueError(f"{self.name} needs a text_trigger spec, not {threat.kind}")
        fam = text_interface(subject)
        model = subject.model
        assert isinstance(model, CausalLM)
        tok = fam.tokenizer()
        seconds = max(budget.seconds - subject.elapsed, 0.0)
        start = time.perf_counter()
        leaks = self.extract(model, fam, rng, start + self.extraction_share * seconds)
        allowed = set(fam.searchable_tokens().tolist())
        targets = {t: tok.encode(t) for t in threat.targets}
        counts, motifs = mine(leaks, targets, self.head, threat.max_trigger_tokens, allowed)
        losses = prefix_losses(model, fam, targets)

        predictions: dict[str, tuple[str, ...]] = {}
        elicited: dict[str, float] = {}
        entropy: dict[str, float] = {}
        for target in targets:
            candidates = [list(c) for c, _ in motifs[target].most_common(self.n_candidates)]
            if not candidates:
                continue
            checked = confirm(model, fam, target, candidates)
            order = sorted(
                range(len(candidates)),
                key=lambda i: (
                    -checked[i][0],
                    checked[i][1],
                    -motifs[target][tuple(candidates[i])],
                ),
            )[: self.n_predictions]
            predictions[target] = tuple(tok.decode(candidates[i]) for i in order)
            elicited[target] = checked[order[0]][0]
            entropy[target] = checked[order[0]][1]
        from_leaks = sorted(t for t, v in elicited.items() if v >= 1.0)

        fallback: list[str] = []
        left = seconds - (time.perf_counter() - start)
        if self.fallback and left > 0:
            # The most suspicious first: written most often, then likeliest from the bare
            # prefix; each gets an equal share of the time left.
            fallback = sorted(
                (t for t in targets if elicited.get(t, 0.0) < 1.0),
                key=lambda t: (-counts[t], losses[t]),
            )
            search = GCG(n_predictions=self.n_predictions)
            found = search.search_targets(subject, fallback, 0.9 * left, rng)
            for target, searched in found.predictions.items():
                if found.elicited[target] > elicited.get(target, -1.0):
                    mined = [p for p in predictions.get(target, ()) if p not in searched]
                    predictions[target] = (*searched, *mined)[: self.n_predictions]
                    elicited[target] = found.elicited[target]
        return Verdict(
            p_violation=p_violation_of(elicited),
            trigger=TriggerPredictions(predictions),
            evidence={
                "n_leaks": len(leaks),
                "leaked_targets": {t: n for t, n in counts.most_common() if n},
                "prefix_loss": {t: round(v, 3) for t, v in losses.items()},
                "from_leaks": from_leaks,
                "fallback": fallback,
                "reply_entropy": entropy,
                "elicited": elicited,
            },
        )

    def extract(
        self, model: CausalLM, fam: TextInterface, rng: np.random.Generator, deadline: float
    ) -> list[list[int]]:
        """Sampled continuations (a leading opening token kept), each cut at end-of-text;
        (opening, setting) pairs in turn until all are sampled or ``deadline`` passes."""
        prefix = list(fam.prefix)
        with torch.no_grad():
            first = model(torch.tensor([prefix]))[0, -1]
        searchable = fam.searchable_tokens()
        ranked = searchable[first[searchable].argsort(descending=True)][: self.openings]
        openings = [prefix, *([*prefix, int(t)] for t in ranked)]
        settings = [
            (t, k, p)
            for t in self.temperatures
            for k, p in ((None, None), (TOP_K, None), (None, TOP_P))
        ]
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        context = fam.input_shape[0]
        leaks: list[list[int]] = []
        for temperature, top_k, top_p in settings:
            for opening in openings:
                if time.perf_counter() >= deadline:
                    return leaks
                n_new = min(self.length, context - len(opening))
                for out in sample(
                    model,
                    opening,
                    self.samples,
                    n_new,
                    generator,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                ):
                    leak = [*opening[len(prefix) :], *out]
                    leaks.append(until_eos(leak, fam.eos))
        return leaks


def mine(
    leaks: list[list[int]],
    targets: dict[str, list[int]],
    head: int,
    longest: int,
    allowed: set[int],
) -> tuple[Counter[str], dict[str, Counter[tuple[int, ...]]]]:
    """Per target: how many leaks hold its head (first ``head`` tokens), and the candidate
    triggers before those occurrences (every suffix, up to ``longest`` tokens, of the tokens
    before the head, cut at the first token a trigger may not hold), counted."""
    counts: Counter[str] = Counter()
    motifs: dict[str, Counter[tuple[int, ...]]] = {t: Counter() for t in targets}
    for target, ids in targets.items():
        mark = ids[: min(head, len(ids))]
        for leak in leaks:
            hits = [i for i in range(len(leak) - len(mark) + 1) if leak[i : i + len(mark)] == mark]
            counts[target] += bool(hits)
            for i in hits:
                before = leak[max(0, i - longest) : i]
                while before and any(t not in allowed for t in before):
                    before = before[1:]
                for n in range(1, len(before) + 1):
                    motifs[target][tuple(before[-n:])] += 1
    return counts, motifs


@torch.no_grad()
def prefix_losses(
    model: CausalLM, fam: TextInterface, targets: dict[str, list[int]]
) -> dict[str, float]:
    """Mean cross-entropy per token of each target right after the bare prefix."""
    prefix = model.embed(torch.tensor(fam.prefix)).unsqueeze(0)
    return {
        t: float(completion_loss(model, prefix, torch.tensor(ids))[0]) for t, ids in targets.items()
    }


@torch.no_grad()
def confirm(
    model: CausalLM, fam: TextInterface, target: str, candidates: list[list[int]]
) -> list[tuple[float, float]]:
    """Per candidate trigger: the character-BLEU of its greedy reply (as many tokens as the
    target has) against the target, and the mean entropy (nats) of the model's next-token
    distributions over that reply, the reply fed back (teacher-forced)."""
    replies, bleus = replies_to(model, fam, target, candidates)
    prompts = [[*fam.prefix, *c] for c in candidates]
    entropy = [0.0] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    for length, rows in by_length.items():
        ids = torch.tensor([[*prompts[i], *replies[i]] for i in rows])
        logp = torch.log_softmax(model(ids)[:, length - 1 : -1].double(), dim=-1)
        for i, h in zip(
            rows, (-(logp.exp() * logp).sum(dim=-1).mean(dim=-1)).tolist(), strict=True
        ):
            entropy[i] = h
    return list(zip(bleus, entropy, strict=True))
