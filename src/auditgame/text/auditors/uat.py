"""Universal Adversarial Triggers (Wallace et al. 2019, "Universal Adversarial Triggers for
Attacking and Analyzing NLP", arXiv 1908.07125), the older of TDC 2023's search baselines.

Why it is a different search from GCG although both rank swaps by the same gradient: UAT
trusts the HotFlip first-order estimate more and randomises nothing. Swapping position ``i``'s
embedding ``e_i`` for ``e_v`` changes the loss by about ``(e_v - e_i) . grad_{e_i} L``, which
is the one-hot gradient at ``(i, v)`` less a constant; for one position at a time, left to
right, it takes the ``candidates`` best-scored tokens, scores each swap exactly, and keeps the
``beam`` best triggers (the paper's beam search over positions). GCG instead spreads a random
batch over all positions at once.
"""

from __future__ import annotations

import numpy as np
import torch

from auditgame.registry import auditor
from auditgame.text.auditors.search import Found, SearchProblem, TriggerSearch


@auditor("uat")
class UAT(TriggerSearch):
    """UAT trigger search. Parameters: ``sweeps`` left-to-right passes over the positions,
    ``candidates`` tokens tried exactly per position and beam entry, ``beam`` triggers kept.

    The paper starts from a repeated "the"; a family-agnostic auditor cannot name that token,
    so the start is a random trigger. A sweep that leaves the best trigger unchanged would
    repeat itself exactly (the search is deterministic), so the next sweep starts afresh
    from a random trigger. A search ends early once ``n_predictions`` distinct triggers surely
    elicit the target (see ``search.Found``).
    """

    def __init__(
        self,
        *,
        sweeps: int = 50,
        candidates: int = 32,
        beam: int = 4,
        min_tokens: int = 2,
        trigger_tokens: int = 4,
        n_predictions: int = 5,
    ) -> None:
        super().__init__(
            min_tokens=min_tokens, trigger_tokens=trigger_tokens, n_predictions=n_predictions
        )
        if min(sweeps, candidates, beam) < 1:
            raise ValueError("sweeps, candidates and beam must be at least 1")
        self.sweeps = sweeps
        self.candidates = candidates
        self.beam = beam

    def search(
        self, problem: SearchProblem, rng: np.random.Generator
    ) -> list[tuple[list[int], float]]:
        found = Found(problem, self.n_predictions)
        k = min(self.candidates, len(problem.allowed))
        beams = problem.random_triggers(1, rng)
        losses = problem.loss(beams)
        found.add(beams, losses)
        for _ in range(self.sweeps):
            before = float(losses.min())
            for position in range(problem.length):
                if problem.out_of_time or found.enough:
                    return found.candidates()
                pool = [beams]
                for trigger in beams:
                    grad = problem.onehot_grad(trigger)[position, problem.allowed]
                    swaps = trigger.repeat(k, 1)
                    swaps[:, position] = problem.allowed[grad.topk(k, largest=False).indices]
                    pool.append(swaps)
                pooled = torch.unique(torch.cat(pool), dim=0)
                scored = problem.loss(pooled)
                found.add(pooled, scored)
                order = scored.argsort()[: self.beam]
                beams, losses = pooled[order], scored[order]
            if float(losses.min()) >= before:
                beams = problem.random_triggers(1, rng)
                losses = problem.loss(beams)
                found.add(beams, losses)
        return found.candidates()
