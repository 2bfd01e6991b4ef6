"""``gbda``: Gradient-based Distributional Attack (Guo et al. 2021, arXiv 2104.13733), a TDC 2023
baseline.

Instead of one prompt, GBDA optimises a *distribution* over prompts: a matrix ``Theta``
(``L x A``, one row of logits over the allowed tokens per trigger position) from which a
trigger is drawn token by token, ``softmax(Theta)``. Sampling is not differentiable, so the
expected loss is estimated with Gumbel-softmax samples (Jang et al. 2017): each relaxed
sample is a convex mixture of token embeddings, ``softmax((Theta + G) / tau) @ E_allowed``,
through which the loss is differentiable in ``Theta``; a batch of them is averaged and
``Theta`` moves by Adam. Every ``every`` steps, and at the end, ``samples`` discrete triggers
drawn from ``softmax(Theta)`` plus its row-wise argmax are evaluated exactly; those are the
candidates. As in the TDC starter kit, the paper's fluency and BERTScore terms are left out:
the objective is the target's loss alone. ``Theta`` starts at zero (uniform over tokens).
"""

from __future__ import annotations

import numpy as np
import torch

from auditgame.registry import auditor
from auditgame.text.auditors.search import SearchProblem, TriggerSearch


@auditor("gbda")
class Gbda(TriggerSearch):
    """GBDA over the allowed tokens; see the module docstring.

    Args:
        steps: Adam steps on ``Theta``.
        lr: Adam learning rate.
        batch: Gumbel-softmax samples per step.
        tau: Gumbel-softmax temperature (lower: closer to one-hot, noisier gradients).
        samples: discrete triggers drawn from ``softmax(Theta)`` at each evaluation.
        every: steps between evaluations of discrete samples.
        trigger_tokens, n_predictions: see ``TriggerSearch``.
    """

    def __init__(
        self,
        *,
        steps: int = 300,
        lr: float = 0.3,
        batch: int = 16,
        tau: float = 1.0,
        samples: int = 32,
        every: int = 10,
        min_tokens: int = 2,
        trigger_tokens: int = 4,
        n_predictions: int = 5,
    ) -> None:
        super().__init__(
            min_tokens=min_tokens, trigger_tokens=trigger_tokens, n_predictions=n_predictions
        )
        if min(steps, batch, samples, every) < 1:
            raise ValueError("steps, batch, samples and every must be at least 1")
        if lr <= 0 or tau <= 0:
            raise ValueError("lr and tau must be positive")
        self.steps = steps
        self.lr = lr
        self.batch = batch
        self.tau = tau
        self.samples = samples
        self.every = every

    def search(
        self, problem: SearchProblem, rng: np.random.Generator
    ) -> list[tuple[list[int], float]]:
        vocab = problem.model.embedding_matrix.detach()[problem.allowed]
        noise = torch.Generator().manual_seed(int(rng.integers(2**63)))
        theta = torch.zeros(problem.length, len(problem.allowed), requires_grad=True)
        optimiser = torch.optim.Adam([theta], lr=self.lr)
        found: list[tuple[list[int], float]] = []
        fresh = False  # whether Theta moved since the last evaluation
        for step in range(self.steps):
            if problem.out_of_time:
                break
            uniform = torch.rand((self.batch, *theta.shape), generator=noise)
            gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-10)))
            soft = torch.softmax((theta + gumbel) / self.tau, dim=-1)
            loss = problem.loss_of_embeds(soft @ vocab).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            fresh = (step + 1) % self.every != 0
            if not fresh:
                found.extend(self._evaluate(problem, theta.detach(), noise))
        if fresh or not found:
            found.extend(self._evaluate(problem, theta.detach(), noise))
        return found

    def _evaluate(
        self, problem: SearchProblem, theta: torch.Tensor, noise: torch.Generator
    ) -> list[tuple[list[int], float]]:
        """Exact losses of ``samples`` triggers drawn from ``softmax(theta)`` and its argmax."""
        drawn = torch.multinomial(
            torch.softmax(theta, dim=-1), self.samples, replacement=True, generator=noise
        ).T
        picks = torch.cat([drawn, theta.argmax(dim=-1, keepdim=True).T])
        triggers = problem.allowed[picks]
        losses = problem.loss(triggers)
        return list(zip(triggers.tolist(), losses.tolist(), strict=True))
