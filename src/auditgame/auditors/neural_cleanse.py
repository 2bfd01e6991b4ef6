"""Neural Cleanse (Wang et al., IEEE S&P 2019): reverse-engineer a minimal trigger per label.

For every label ``t`` Neural Cleanse searches for the smallest mask ``m_t`` (with a pattern
``p_t``) such that ``(1 - m_t) x + m_t p_t`` sends clean inputs to ``t``::

    min_{m_t, p_t}  CE(f((1 - m_t) x + m_t p_t), t) + lambda_t * ||m_t||_1

A backdoored label needs far less of the image than a clean one, so its best mask's L1 norm is
an outlier *below* the others. The outlier is scored with the MAD anomaly index (consistency
constant 1.4826); the paper flags an index above 2.

All labels are solved at once as one batched problem: the parameters are ``(L, 1, H, W)``
masks and ``(L, C, H, W)`` patterns, every step stamps each label's trigger on the same
minibatch and sends all ``L * B`` images through the model in one pass. The per-label losses
are summed; since each label's parameters enter only its own loss and Adam is elementwise,
this is exactly ``L`` independent Neural Cleanse runs, at the cost of one.

lambda follows the schedule of the authors' code, per label: it is 0 until the attack first
reaches ``attack_success_threshold`` (for ``patience`` consecutive steps), then ``init_cost``;
afterwards it is multiplied by ``cost_multiplier`` after ``patience`` consecutive successful
steps and divided by ``cost_multiplier ** 1.5`` after ``patience`` consecutive failures. Each
label keeps the smallest-norm mask seen while its minibatch success rate met the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict, anomaly_index, logistic
from auditgame.registry import auditor
from auditgame.subject import Subject
from auditgame.trigger import Trigger

# Keeps tanh(.)/(2 - eps) + 0.5 strictly inside (0, 1), so arctanh of the initial value exists.
_TANH_EPS = 1e-6


@dataclass(frozen=True)
class ReverseResult:
    """Per-label outcome of the batched trigger search.

    Attributes:
        masks: ``(L, H, W)`` best masks (smallest L1 while successful, over all restarts;
            the last mask for a label that never succeeded).
        patterns: ``(L, C, H, W)`` the patterns that go with ``masks``.
        l1: ``(L,)`` L1 norms used for the outlier test (see ``NeuralCleanse`` for failures).
        succeeded: ``(L,)`` whether the label's attack ever met the success threshold.
        lambdas: ``(L,)`` final lambda per label.
        steps: optimisation steps taken.
        stopped_early: whether the budget cut the search short.
    """

    masks: np.ndarray
    patterns: np.ndarray
    l1: np.ndarray
    succeeded: np.ndarray
    lambdas: np.ndarray
    steps: int
    stopped_early: bool


def _to_unit(raw: torch.Tensor) -> torch.Tensor:
    return torch.tanh(raw) / (2 - _TANH_EPS) + 0.5


def _from_unit(value: np.ndarray) -> torch.Tensor:
    return torch.atanh(torch.as_tensor((value - 0.5) * (2 - _TANH_EPS), dtype=torch.float32))


@auditor("neural_cleanse")
class NeuralCleanse(Auditor):
    """Neural Cleanse over all labels in one batched optimisation.

    Args:
        steps: Adam steps (each one minibatch for every label at once).
        batch_size: clean images per step, shared by all labels.
        lr: Adam learning rate on the tanh-space mask and pattern.
        init_cost: lambda once a label's attack first succeeds.
        attack_success_threshold: minibatch success rate that counts as a working trigger.
        patience: consecutive steps of success (failure) before lambda goes up (down).
        cost_multiplier: lambda's factor up; down is ``cost_multiplier ** 1.5``.
        restarts: independent random starts per label, solved in the same batch (the cost
            grows linearly); each label keeps its smallest mask over the starts. The search
            has local minima: on one digits badnets organism (a 2x2 patch) a single start
            landed on a natural L1-7 trigger for the target, instead of the planted patch
            (L1 3.3), in one of three seeds; with two starts, also one of three.
        anomaly_threshold: anomaly index at which ``p_violation`` is 0.5 (paper: 2).
        slope: steepness of ``p_violation = logistic(slope * (index - anomaly_threshold))``.

    A label whose attack never met the threshold gets the L1 norm ``H * W`` for the outlier
    test: the whole-image mask is an upper bound on the smallest working trigger (stamping a
    full mask replaces the input by the pattern), so "not found" is placed at that bound
    rather than at infinity, which would break the median and MAD when several labels fail.
    Such labels sit at the top of the distribution and can never be flagged.
    """

    access = Access.CLEAN_DATA

    def __init__(
        self,
        *,
        steps: int = 300,
        batch_size: int = 32,
        lr: float = 0.1,
        init_cost: float = 1e-2,
        attack_success_threshold: float = 0.99,
        patience: int = 5,
        cost_multiplier: float = 1.5,
        restarts: int = 1,
        anomaly_threshold: float = 2.0,
        slope: float = 2.0,
    ) -> None:
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.init_cost = init_cost
        self.attack_success_threshold = attack_success_threshold
        self.patience = patience
        self.cost_multiplier = cost_multiplier
        self.restarts = restarts
        self.anomaly_threshold = anomaly_threshold
        self.slope = slope

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        result = self.reverse_engineer(subject, budget, rng)
        index = anomaly_index(result.l1)
        median = float(np.median(result.l1))
        # Only a norm below the median is suspicious: a backdoor makes the mask small.
        one_sided = np.where(result.l1 < median, index, 0.0)
        flagged = int(np.argmax(one_sided))
        score = float(one_sided[flagged])
        # The witness: the flagged label's trigger, or the smallest-norm one when none is below
        # the median (all norms equal); the judge measures it either way.
        target = flagged if score > 0 else int(np.argmin(result.l1))
        p_violation = logistic(self.slope * (score - self.anomaly_threshold))
        evidence: dict[str, Any] = {
            "l1_norms": [float(v) for v in result.l1],
            "anomaly_index": [float(v) for v in index],
            "below_median": [bool(v) for v in result.l1 < median],
            "succeeded": [bool(v) for v in result.succeeded],
            "lambda": [float(v) for v in result.lambdas],
            "flagged_index": score,
            "steps": result.steps,
            "stopped_early": result.stopped_early,
        }
        trigger = Trigger(result.masks[target], result.patterns[target])
        return Verdict(p_violation=p_violation, target=target, trigger=trigger, evidence=evidence)

    def reverse_engineer(
        self, subject: Subject, budget: Budget, rng: np.random.Generator
    ) -> ReverseResult:
        """Run the batched search for every label; returns each label's best trigger."""
        model: nn.Module = subject.model
        data = subject.clean_data
        channels, height, width = (int(v) for v in subject.card.input_shape)
        n_labels = len(subject.card.classes)
        n_restarts = max(1, int(self.restarts))
        # Problem j searches for label j % n_labels, from its own random start.
        n_problems = n_labels * n_restarts
        x_all = data.x.float()
        y_all = data.y.long()
        n = len(y_all)
        if n == 0:
            raise ValueError("Neural Cleanse needs at least one clean sample")
        device = next(model.parameters()).device
        x_all, y_all = x_all.to(device), y_all.to(device)
        batch = min(self.batch_size, n)

        mask_raw = _from_unit(rng.uniform(0, 1, size=(n_problems, 1, height, width))).to(device)
        pattern_raw = _from_unit(rng.uniform(0, 1, size=(n_problems, channels, height, width)))
        pattern_raw = pattern_raw.to(device)
        mask_raw.requires_grad_(True)
        pattern_raw.requires_grad_(True)
        optimiser = torch.optim.Adam([mask_raw, pattern_raw], lr=self.lr, betas=(0.5, 0.9))

        labels = torch.arange(n_labels, device=device).repeat(n_restarts)
        targets = labels.repeat_interleave(batch)
        cost = np.zeros(n_problems)
        cost_set = np.zeros(n_problems, dtype=bool)
        set_counter = np.zeros(n_problems, dtype=int)
        up_counter = np.zeros(n_problems, dtype=int)
        down_counter = np.zeros(n_problems, dtype=int)
        best_l1 = np.full(n_problems, np.inf)
        best_mask = np.zeros((n_problems, height, width), np.float32)
        best_pattern = np.zeros((n_problems, channels, height, width), np.float32)
        up, down = self.cost_multiplier, self.cost_multiplier**1.5

        steps = 0
        stopped_early = False
        for _ in range(self.steps):
            if subject.elapsed > budget.seconds:
                stopped_early = True
                break
            idx = torch.as_tensor(rng.choice(n, size=batch, replace=False), device=device)
            x, y = x_all[idx], y_all[idx]
            mask = _to_unit(mask_raw)  # (L * restarts, 1, H, W)
            pattern = _to_unit(pattern_raw)  # (L * restarts, C, H, W)
            stamped = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]
            logits = model(stamped.reshape(n_problems * batch, channels, height, width))
            ce = nn.functional.cross_entropy(logits, targets, reduction="none")
            ce = ce.view(n_problems, batch).mean(dim=1)
            l1 = mask.abs().sum(dim=(1, 2, 3))
            loss = (ce + torch.as_tensor(cost, dtype=ce.dtype, device=device) * l1).sum()
            optimiser.zero_grad()
            loss.backward()

            # Success is judged on the inputs not already labelled t, before this step's update,
            # so the mask recorded below is exactly the one that was measured.
            with torch.no_grad():
                hit = (logits.argmax(dim=1) == targets).view(n_problems, batch)
                other = y[None, :] != labels[:, None]
                asr = ((hit & other).sum(1) / other.sum(1).clamp(min=1)).cpu().numpy()
                l1_now = l1.detach().cpu().numpy()
                ok = asr >= self.attack_success_threshold
                better = ok & (l1_now < best_l1)
                if better.any():
                    rows = np.flatnonzero(better)
                    best_l1[rows] = l1_now[rows]
                    best_mask[rows] = mask[rows, 0].cpu().numpy()
                    best_pattern[rows] = pattern[rows].cpu().numpy()
            optimiser.step()
            steps += 1

            # lambda schedule, vectorised over problems (labels times restarts).
            set_counter = np.where(~cost_set & ok, set_counter + 1, 0)
            start = ~cost_set & (set_counter >= self.patience)
            cost[start] = self.init_cost
            cost_set |= start
            active = cost_set & ~start
            up_counter = np.where(active & ok, up_counter + 1, 0)
            down_counter = np.where(active & ~ok, down_counter + 1, 0)
            raise_cost = up_counter >= self.patience
            lower_cost = down_counter >= self.patience
            cost[raise_cost] *= up
            cost[lower_cost] /= down
            up_counter[raise_cost] = 0
            down_counter[lower_cost] = 0

        succeeded = np.isfinite(best_l1)
        with torch.no_grad():
            last_mask = _to_unit(mask_raw)[:, 0].cpu().numpy()
            last_pattern = _to_unit(pattern_raw).cpu().numpy()
        best_mask[~succeeded] = last_mask[~succeeded]
        best_pattern[~succeeded] = last_pattern[~succeeded]
        norms = np.where(succeeded, best_l1, float(height * width))
        # Per label, keep the restart with the smallest norm (ties: the first restart).
        pick = norms.reshape(n_restarts, n_labels).argmin(axis=0) * n_labels + np.arange(n_labels)
        return ReverseResult(
            masks=best_mask[pick],
            patterns=best_pattern[pick],
            l1=norms[pick],
            succeeded=succeeded[pick],
            lambdas=cost[pick],
            steps=steps,
            stopped_early=stopped_early,
        )
