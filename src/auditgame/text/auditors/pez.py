"""``pez``: Hard Prompts made EaZy (Wen et al. 2023, arXiv 2302.03668), a TDC 2023 baseline.

A discrete prompt cannot be optimised by gradient descent, and a continuous one optimised
freely drifts far from every real token, so projecting it at the end loses what was learnt.
PEZ keeps the continuous prompt ``P`` (``L x d``) but always *evaluates* it projected: each
step maps every row of ``P`` to its nearest allowed token embedding (cosine similarity, as
the authors' code does), computes the loss and its gradient at that projection ``P'``, and
applies the gradient to ``P`` (a straight-through estimate). ``P`` accumulates small moves
until a row crosses into another token's neighbourhood, so the prompt hops between real
tokens while being steered by gradients taken at real tokens.

The loss at ``P'`` is the exact loss of a discrete trigger, so every step's projection is a
candidate at no extra cost; ``restarts`` independent prompts run side by side as one batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

from auditgame.registry import auditor
from auditgame.text.auditors.search import SearchProblem, TriggerSearch


def nearest_tokens(prompts: torch.Tensor, normed_vocab: torch.Tensor) -> torch.Tensor:
    """Index ``(..., L)`` into the vocabulary of the row of ``normed_vocab`` ``(A, d)``
    (unit rows) with the highest cosine similarity to each row of ``prompts`` ``(..., L, d)``."""
    return (functional.normalize(prompts, dim=-1) @ normed_vocab.T).argmax(dim=-1)


@auditor("pez")
class Pez(TriggerSearch):
    """PEZ with AdamW over ``restarts`` parallel prompts; see the module docstring.

    Args:
        steps: optimisation steps per prompt.
        lr: AdamW learning rate.
        restarts: prompts optimised in parallel, each from random allowed tokens.
        weight_decay: AdamW's decoupled weight decay (the paper's default is 0.1).
        trigger_tokens, n_predictions: see ``TriggerSearch``.
    """

    def __init__(
        self,
        *,
        steps: int = 300,
        lr: float = 0.1,
        restarts: int = 16,
        weight_decay: float = 0.1,
        min_tokens: int = 2,
        trigger_tokens: int = 4,
        n_predictions: int = 5,
    ) -> None:
        super().__init__(
            min_tokens=min_tokens, trigger_tokens=trigger_tokens, n_predictions=n_predictions
        )
        if steps < 1 or restarts < 1:
            raise ValueError("steps and restarts must be at least 1")
        if lr <= 0 or weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay non-negative")
        self.steps = steps
        self.lr = lr
        self.restarts = restarts
        self.weight_decay = weight_decay

    def search(
        self, problem: SearchProblem, rng: np.random.Generator
    ) -> list[tuple[list[int], float]]:
        vocab = problem.model.embedding_matrix.detach()[problem.allowed]
        normed = functional.normalize(vocab, dim=-1)
        start = problem.random_triggers(self.restarts, rng)
        prompts = problem.model.embed(start).detach().clone().requires_grad_(True)
        optimiser = torch.optim.AdamW([prompts], lr=self.lr, weight_decay=self.weight_decay)
        found: list[tuple[list[int], float]] = []
        for _ in range(self.steps):
            if problem.out_of_time:
                break
            picks = nearest_tokens(prompts.detach(), normed)
            projected = vocab[picks].requires_grad_(True)
            losses = problem.loss_of_embeds(projected)
            (grad,) = torch.autograd.grad(losses.sum(), projected)
            triggers = problem.allowed[picks]
            found.extend(
                (ids, loss) for ids, loss in zip(triggers.tolist(), losses.tolist(), strict=True)
            )
            optimiser.zero_grad()
            prompts.grad = grad
            optimiser.step()
        return found
