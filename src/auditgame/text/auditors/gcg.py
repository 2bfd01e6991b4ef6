"""Greedy Coordinate Gradient (Zou et al. 2023, "Universal and Transferable Adversarial Attacks
on Aligned Language Models", arXiv 2307.15043): the strongest TDC 2023 trigger-search baseline.

Why it works where plain gradient descent on tokens does not: the gradient with respect to a
one-hot trigger is only a first-order guess at which swaps lower the loss, good for ranking
but not for picking. GCG uses it to *shortlist* (the ``top_k`` tokens with the most negative
gradient at each position), then spends forward passes to *choose*: a batch of candidates,
each the current trigger with one random position swapped for one of that position's
shortlisted tokens, is scored exactly and the best becomes the next trigger, even when it is
worse than the current one (the paper's update, which lets the walk leave shallow minima).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from auditgame.registry import auditor
from auditgame.text.auditors.search import Found, SearchProblem, TriggerSearch


@auditor("gcg")
class GCG(TriggerSearch):
    """GCG trigger search. Parameters: ``steps`` per restart, ``top_k`` shortlisted tokens per
    position, ``batch`` candidates scored per step, ``restarts`` random starting triggers (the
    time left is shared evenly between those not yet run). A search ends early once
    ``n_predictions`` distinct triggers surely elicit the target (see ``Found``)."""

    def __init__(
        self,
        *,
        steps: int = 200,
        top_k: int = 64,
        batch: int = 64,
        restarts: int = 2,
        min_tokens: int = 2,
        trigger_tokens: int = 4,
        n_predictions: int = 5,
    ) -> None:
        super().__init__(
            min_tokens=min_tokens, trigger_tokens=trigger_tokens, n_predictions=n_predictions
        )
        if min(steps, top_k, batch, restarts) < 1:
            raise ValueError("steps, top_k, batch and restarts must be at least 1")
        self.steps = steps
        self.top_k = top_k
        self.batch = batch
        self.restarts = restarts

    def search(
        self, problem: SearchProblem, rng: np.random.Generator
    ) -> list[tuple[list[int], float]]:
        found = Found(problem, self.n_predictions)
        k = min(self.top_k, len(problem.allowed))
        rows = torch.arange(self.batch)
        for restart in range(self.restarts):
            now = time.perf_counter()
            stop = now + (problem.deadline - now) / (self.restarts - restart)
            trigger = problem.random_triggers(1, rng)
            found.add(trigger, problem.loss(trigger))
            for _ in range(self.steps):
                if time.perf_counter() >= stop or found.enough:
                    break
                grad = problem.onehot_grad(trigger[0])[:, problem.allowed]
                shortlist = problem.allowed[grad.topk(k, dim=1, largest=False).indices]
                positions = torch.as_tensor(rng.integers(problem.length, size=self.batch))
                picks = torch.as_tensor(rng.integers(k, size=self.batch))
                candidates = trigger.repeat(self.batch, 1)
                candidates[rows, positions] = shortlist[positions, picks]
                losses = problem.loss(candidates)
                found.add(candidates, losses)
                best = int(losses.argmin())
                trigger = candidates[best : best + 1]
            if found.enough or problem.out_of_time:
                break
        return found.candidates()
