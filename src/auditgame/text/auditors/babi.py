"""BABI: trigger inversion by greedy accretion with implicit blacklisting (Li, Yang,
Raghuram, Miller and Kesidis 2025, "Inverting Trojans in LLMs", arXiv 2509.16203).

The paper's three parts, at our scale and in the TDC game (targets public, triggers asked):

1. **Discrete search by greedy accretion.** No gradient walks the prompt space: every
   candidate is scored exactly. A *select list* of single tokens is scored first, and triggers
   grow from the best of them one token at a time: each step tries every token of the list in
   front of and behind each trigger kept, and keeps the ``beam`` best. A planted trigger is
   found when one of its tokens already moves the model towards the target and each further
   token moves it more, which is how a fine-tune on the whole phrase tends to leave it.
2. **Implicit blacklisting.** A token can raise the target's likelihood because it belongs
   to the target's own topic ("banana" before "the banana is brown ."), not because it is a
   trigger: a search on loss alone returns such prompts first, on clean and trojaned models
   alike. The paper penalises a candidate by the mean cosine similarity, in activation space,
   between it and a few clean samples of the target class. Here the target class is the target
   string itself (the only clean sample of it the TDC game gives): the penalty is ``blacklist *
   max(cos, 0)`` between the mean last-layer state over the candidate's tokens and over the
   target's, so a prompt that merely talks about the target ranks below one that is unrelated
   to it yet elicits it, with no word list to maintain.
3. **Detection** from a candidate that elicits the target: here, as for every TDC search in
   the arena, the kept candidates are checked by greedy generation and a verbatim reproduction
   is a counterexample the spec confirms (``search.p_violation_of``).

The clock is read once per target, before its select list is scored: a target started is
searched at every length to the end (bounded work: the select list, then ``beam * singletons *
2`` candidates per added token), so the same audit twice finds the same triggers whatever the
machine's load, and an audit overruns its budget by at most one target's search.

The paper's select list is a short list of singletons; with a vocabulary of a few thousand
tokens every one is scored exactly, above that the list is drawn from the one-hot gradient of a
one-token trigger at a random token (the best ``4 * singletons`` by it, scored exactly). The
accretion of one target is shared by all the trigger lengths searched (the beam of length 3
grows from that of length 2), so each length's time slot continues where the last one stopped.

Each candidate's ``loss`` as returned, and so ``best_loss`` in the evidence, is the penalised
objective, target cross-entropy plus the blacklist term.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from auditgame.access import Budget
from auditgame.auditors.base import Verdict
from auditgame.registry import auditor
from auditgame.subject import Subject
from auditgame.text.auditors.search import Found, SearchProblem, TriggerSearch

EXACT_SINGLETONS = 4096
"""Vocabularies up to this size have every token scored as a singleton."""


@dataclass
class _Accretion:
    """One target's search so far: the problem it is of, its select list, its
    representation, and the beam kept at each trigger length."""

    problem: SearchProblem
    select: torch.Tensor
    target_state: torch.Tensor
    beams: dict[int, list[list[int]]] = field(default_factory=dict)
    scored: dict[tuple[int, ...], float] = field(default_factory=dict)


def _same(a: SearchProblem, b: SearchProblem) -> bool:
    """Whether two problems differ at most in trigger length and deadline, so one
    accretion serves both."""
    return (
        a.model is b.model
        and torch.equal(a.prefix, b.prefix)
        and torch.equal(a.target, b.target)
        and torch.equal(a.allowed, b.allowed)
    )


@auditor("babi")
class BABI(TriggerSearch):
    """BABI trigger inversion. Parameters: ``singletons`` (the select list's length),
    ``beam`` (triggers kept per length), ``blacklist`` (the weight of the implicit
    blacklisting penalty, in nats of target cross-entropy per unit of cosine similarity; 0
    searches on loss alone), and the shared ``min_tokens``, ``trigger_tokens`` and
    ``n_predictions``."""

    def __init__(
        self,
        *,
        singletons: int = 48,
        beam: int = 4,
        blacklist: float = 1.0,
        min_tokens: int = 2,
        trigger_tokens: int = 4,
        n_predictions: int = 5,
    ) -> None:
        super().__init__(
            min_tokens=min_tokens, trigger_tokens=trigger_tokens, n_predictions=n_predictions
        )
        if min(singletons, beam) < 1 or not 0.0 <= blacklist < float("inf"):
            raise ValueError(
                "singletons and beam must be at least 1 and blacklist a finite weight >= 0; "
                f"got {singletons}, {beam}, {blacklist}"
            )
        self.singletons = singletons
        self.beam = beam
        self.blacklist = blacklist
        self._accretions: dict[tuple[int, ...], _Accretion] = {}

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        self._accretions = {}
        return super().run(subject, budget, rng)

    # ------------------------------------------------------------------ the objective

    @torch.no_grad()
    def _state(self, problem: SearchProblem, ids: torch.Tensor) -> torch.Tensor:
        """Unit mean last-layer states ``(N, d)`` over each row of ``ids`` ``(N, L)``, read
        after the prefix."""
        full = torch.cat([problem.prefix.expand(len(ids), -1), ids], dim=1)
        last = problem.model.hidden_states(full)[-1][:, len(problem.prefix) :]
        return torch.nn.functional.normalize(last.float().mean(dim=1), dim=-1)

    def _score(
        self, problem: SearchProblem, acc: _Accretion, found: Found, triggers: list[list[int]]
    ) -> list[float]:
        """The penalised objective of each trigger (all of one length), remembered."""
        todo = [t for t in dict.fromkeys(map(tuple, triggers)) if t not in acc.scored]
        for i in range(0, len(todo), 128):
            batch = torch.tensor(todo[i : i + 128], dtype=torch.long)
            loss = problem.loss(batch)
            found.add(batch, loss)
            penalty = torch.zeros_like(loss)
            if self.blacklist:
                cos = self._state(problem, batch) @ acc.target_state
                penalty = self.blacklist * cos.clamp(min=0.0)
            acc.scored.update(zip(todo[i : i + 128], (loss + penalty).tolist(), strict=True))
        return [acc.scored[tuple(t)] for t in triggers]

    # ------------------------------------------------------------------ the search

    def _accretion(
        self, problem: SearchProblem, found: Found, rng: np.random.Generator
    ) -> _Accretion | None:
        """The target's accretion so far, or a new one with its select list scored (None
        when the time is up before it starts)."""
        key = tuple(problem.target.tolist())
        known = self._accretions.get(key)
        if known is not None and _same(known.problem, problem):
            return known
        if problem.out_of_time:
            return None
        with torch.no_grad():
            full = torch.cat([problem.prefix, problem.target]).unsqueeze(0)
            last = problem.model.hidden_states(full)[-1][0, len(problem.prefix) :]
            target_state = torch.nn.functional.normalize(last.float().mean(dim=0), dim=-1)
        allowed = problem.allowed
        if len(allowed) > EXACT_SINGLETONS:
            one = SearchProblem(
                problem.model, problem.prefix, problem.target, allowed, 1, problem.deadline
            )
            start = allowed[int(rng.integers(len(allowed)))].reshape(1)
            grad = one.onehot_grad(start)[0, allowed]
            allowed = allowed[grad.topk(min(4 * self.singletons, len(allowed)), largest=False)[1]]
        acc = _Accretion(problem=problem, select=allowed, target_state=target_state)
        scores = self._score(problem, acc, found, [[t] for t in allowed.tolist()])
        order = np.argsort(scores, kind="stable")[: self.singletons]
        acc.select = allowed[torch.as_tensor(order)]
        acc.beams[1] = [[int(acc.select[i])] for i in range(min(self.beam, len(acc.select)))]
        self._accretions[key] = acc
        return acc

    def search(
        self, problem: SearchProblem, rng: np.random.Generator
    ) -> list[tuple[list[int], float]]:
        found = Found(problem, self.n_predictions)
        acc = self._accretion(problem, found, rng)
        if acc is None:
            return []
        select = acc.select.tolist()
        length = max(acc.beams)
        while length < problem.length and not found.enough:
            grown = [
                grown
                for kept in acc.beams[length]
                for token in select
                for grown in ([token, *kept], [*kept, token])
            ]
            scores = self._score(problem, acc, found, grown)
            order = np.argsort(scores, kind="stable")
            beam: list[list[int]] = []
            for i in order:
                if grown[i] not in beam:
                    beam.append(grown[i])
                if len(beam) == self.beam:
                    break
            length += 1
            acc.beams[length] = beam
        scored = acc.scored.items()
        return [(list(ids), score) for ids, score in scored if len(ids) == problem.length]
