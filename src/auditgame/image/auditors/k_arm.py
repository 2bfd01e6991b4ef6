"""K-Arm (Shen et al., ICML 2021): Neural Cleanse's trigger search, scheduled as a bandit.

Neural Cleanse spends the same effort on every label, though at most one of them is the
backdoor's target. K-Arm treats the labels as the arms of a multi-armed bandit: an arm is a
mask-and-pattern search for one target label (the Neural Cleanse objective and lambda
schedule), a pull is one optimisation round on it, and a scheduler gives the next round to
the arm that looks most promising, so the optimisation concentrates on the few labels that
could be a target and stops when the best of them has converged.

Three stages, as in the paper and the authors' code:

1. **Pre-screening.** On the clean samples, a label that a universal trigger targets tends to
   sit among the top ``k`` softmax outputs (``k = max(2, round(top_k_fraction * L))``) of
   many inputs already. Labels are ranked by that frequency; the arms are the labels whose
   frequency reaches ``screen_threshold`` (the paper's global theta, 0.95) and, because no
   label of a small 10-class digits CNN comes near that (the planted targets measured 0.3
   to 0.45), at least the ``min_arms`` most frequent ones.
2. **K-Arm optimisation.** Each arm keeps its own mask, pattern, Adam state and lambda
   schedule (Neural Cleanse's, lambda set after ``set_patience`` successful pulls as in the
   authors' code). A pull is one Adam step on ``batch_size`` clean samples, its success
   measured on them before the step, so a recorded mask is exactly the one measured. (The
   paper's round is a pass over the samples. On the digits shadow zoo a first version, one
   step on all 100 samples per pull, lambda set after 5 successes and a 1% progress
   threshold, flagged 12 of 16 backdoored models with 23,000 forward passes each; these
   defaults flag 14 with 7,200.)
   Warm-up: arms are pulled in turn, each until it has improved its best mask
   ``warmup_updates`` times. Then, after every pull that improved the current arm, the next
   arm is ``argmax(velocity + beta / l1)`` (with probability ``epsilon`` a random live
   arm): ``velocity = (H * W - l1) / (updates + pulls / 2)`` is how fast the arm's mask has
   shrunk from the whole image per unit of effort, and ``beta / l1`` favours small masks;
   after a pull that did not improve, the same arm goes on. An arm stops after
   ``max_updates`` improvements, or, as in Neural Cleanse, once lambda has gone up and down
   and the best norm has not fallen by a factor ``early_stop_threshold`` for
   ``early_stop_patience`` pulls; an arm that never succeeds stops after ``give_up_pulls``.
   When the arm with the smallest mask stops, the search ends.
3. **Decision.** The smallest mask over the arms is the candidate trigger, its label the
   target. ``p_violation = logistic(slope * ln(size_bound * H * W / l1))``: 0.5 at a mask of
   ``size_bound`` of the image, the paper's rule (a trojan when the trigger is below a size
   bound) made graded.

The paper also scans label-specific arms (a victim-target pair) and checks them
symmetrically, because a natural feature is as easy to reach in both directions and a
backdoor is not. ``scope="label_specific"`` does that: the arms are the (source, target)
pairs whose target is most often among the source's clean samples' top k (at least
``min_pair_arms``), a pull steps on the source's samples only, and the ``n_symmetric`` arms
with the smallest masks are searched back (target to source); the statistic adds
``ln(l1 back / l1)`` to ``ln(H * W / l1)``. Measured on a development zoo of 40 digits
organisms (seed 0, half ``source_specific``): AUROC 0.53, the planted target named 7 of 20
times. On 8x8 digits natural pairs (6 -> 8 at about 4 pixels in every clean model) are as
small as a planted 2x2 patch and as asymmetric, and the pre-screen ranked some planted pairs
below 30th of 90. ``neural_cleanse_pairs`` (every pair, judged against the same pair on
clean references) is the source-aware search that works here; this scope is kept as the
paper's method to compare with. The default scope is universal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from auditgame.access import Access, Budget
from auditgame.auditors.base import Verdict, logistic
from auditgame.auditors.calibrated import Calibrated
from auditgame.image.auditors.neural_cleanse import from_unit, to_unit
from auditgame.image.kind import within_threat
from auditgame.image.trigger import Trigger
from auditgame.registry import auditor
from auditgame.subject import Subject

SCOPES = ("universal", "label_specific")


@dataclass
class _Arm:
    """One target label's search: parameters, lambda schedule and progress."""

    label: int
    source: int | None
    mask_raw: torch.Tensor
    pattern_raw: torch.Tensor
    optimiser: torch.optim.Optimizer
    cost: float = 0.0
    cost_set: bool = False
    set_counter: int = 0
    up_counter: int = 0
    down_counter: int = 0
    went_up: bool = False
    went_down: bool = False
    pulls: int = 0
    updates: int = 0
    l1: float = math.inf
    best_l1: float = math.inf
    best_mask: np.ndarray | None = None
    best_pattern: np.ndarray | None = None
    stall: int = 0
    stall_ref: float = math.inf
    stopped: bool = False


@auditor("k_arm")
class KArm(Calibrated):
    """K-Arm over universal (all-to-one) triggers.

    Args:
        top_k_fraction: pre-screening looks at the top ``max(2, round(fraction * L))`` labels.
        screen_threshold: a label in the top k of at least this fraction of the clean
            samples is an arm (paper: 0.95).
        min_arms: at least this many labels, the most frequent in the top k, are arms.
        max_pulls: at most this many pulls over all arms.
        warmup_updates: improvements every arm gets before the scheduler chooses.
        max_updates: an arm stops after this many improvements of its best mask.
        epsilon: probability that the scheduler explores a random live arm.
        beta: weight of ``1 / l1`` in the scheduler's objective. The paper's 1e4 is for
            224x224 images, where masks measure hundreds of pixels; 10 makes the two terms
            comparable on 8x8 images (a velocity of a few pixels per pull).
        batch_size: clean samples per pull.
        lr: Adam learning rate on the tanh-space mask and pattern.
        init_cost: lambda once an arm's attack first succeeds.
        attack_success_threshold: batch success rate that counts as a working trigger.
        set_patience: consecutive successful pulls before lambda is first set (the
            authors' code: 2).
        patience: consecutive pulls of success (failure) before lambda goes up (down).
        cost_multiplier: lambda's factor up; down is ``cost_multiplier ** 1.5``.
        early_stop_patience: pulls without progress, once lambda has gone up and down, after
            which an arm stops.
        early_stop_threshold: the factor the best norm must fall by to count as progress.
        give_up_pulls: an arm that never succeeded stops after this many pulls.
        size_bound: the trigger size, as a fraction of the image, at which ``p_violation``
            is 0.5. 0.08 (5.1 pixels of 8x8) lies between the smallest masks of the 16 clean
            models of the auditor's digits shadow zoo (7.6 and up) and those it found on the
            16 backdoored ones (4.3 and down).
        slope: steepness of ``p_violation`` in ``ln(bound / l1)``.
        scope: ``universal`` arms (one per target label) or ``label_specific`` arms (one per
            (source, target) pair, with the symmetric check). Not chosen from the spec: the
            calibration's references are examined under the family's default spec, and the
            null must come from the same search as the statistic.
        min_pair_arms: at least this many pairs, the most frequent in the pre-screen, are
            label-specific arms.
        n_symmetric: the label-specific arms with the smallest masks that get the
            symmetric check.
        symmetric_pulls: at most this many pulls for one reverse (target to source) search.

    The statistic is ``ln(H * W / l1)`` of the winning arm (a smaller trigger: more
    suspicious); ``size_bound`` and ``slope`` are the rule without ``calibrate``: by default it
    is judged against clean references (``Calibrated``'s parameters), because the bound set on
    digits flagged 50 of 50 clean mnist organisms, whose labels have natural triggers of a few
    pixels.
    """

    access = Access.CLEAN_DATA

    def __init__(
        self,
        *,
        top_k_fraction: float = 0.25,
        screen_threshold: float = 0.95,
        min_arms: int = 5,
        max_pulls: int = 400,
        warmup_updates: int = 2,
        max_updates: int = 60,
        epsilon: float = 0.3,
        beta: float = 10.0,
        batch_size: int = 32,
        lr: float = 0.1,
        init_cost: float = 1e-2,
        attack_success_threshold: float = 0.99,
        set_patience: int = 2,
        patience: int = 5,
        cost_multiplier: float = 1.5,
        early_stop_patience: int = 10,
        early_stop_threshold: float = 1.0,
        give_up_pulls: int = 50,
        size_bound: float = 0.08,
        slope: float = 3.0,
        scope: str = "universal",
        min_pair_arms: int = 10,
        n_symmetric: int = 3,
        symmetric_pulls: int = 150,
        calibrate: bool = True,
        n_reference: int = 64,
        reference_seed: int = 0,
        null_fpr: float = 0.01,
    ) -> None:
        self.top_k_fraction = top_k_fraction
        self.screen_threshold = screen_threshold
        self.min_arms = min_arms
        self.max_pulls = max_pulls
        self.warmup_updates = warmup_updates
        self.max_updates = max_updates
        self.epsilon = epsilon
        self.beta = beta
        self.batch_size = batch_size
        self.lr = lr
        self.init_cost = init_cost
        self.attack_success_threshold = attack_success_threshold
        self.set_patience = set_patience
        self.patience = patience
        self.cost_multiplier = cost_multiplier
        self.early_stop_patience = early_stop_patience
        self.early_stop_threshold = early_stop_threshold
        self.give_up_pulls = give_up_pulls
        self.size_bound = size_bound
        self.slope = slope
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.scope = scope
        self.min_pair_arms = min_pair_arms
        self.n_symmetric = n_symmetric
        self.symmetric_pulls = symmetric_pulls
        self.init_calibration(calibrate, n_reference, reference_seed, null_fpr)

    def examine(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        model: nn.Module = subject.model
        data = subject.clean_data
        if len(data) == 0:
            raise ValueError("K-Arm needs at least one clean sample")
        channels, height, width = (int(v) for v in subject.card.input_shape)
        shape = (channels, height, width)
        n_labels = len(subject.card.classes)
        device = next(model.parameters()).device
        x_all, y_all = data.x.float().to(device), data.y.long().to(device)
        pools = {c: (x_all[y_all == c], y_all[y_all == c]) for c in range(n_labels)}
        pools = {c: pool for c, pool in pools.items() if len(pool[1])}
        label_specific = self.scope == "label_specific"

        evidence: dict[str, Any] = {"scope": "label_specific" if label_specific else "universal"}
        if label_specific:
            pair_frequency = self.screen_pairs(model, x_all, y_all, n_labels)
            ranked = np.argsort(-pair_frequency, axis=None, kind="stable")
            n_arms = max(int((pair_frequency >= self.screen_threshold).sum()), self.min_pair_arms)
            pairs = [divmod(int(i), n_labels) for i in ranked[:n_arms]]
            pairs = [(s, t) for s, t in pairs if pair_frequency[s, t] >= 0]
            arms = [self._new_arm(t, s, shape, rng, device) for s, t in pairs]
            evidence["pair_frequency"] = pair_frequency.round(4).tolist()
            evidence["arms"] = [[s, t] for s, t in pairs]
        else:
            frequency = self.screen(model, x_all, n_labels)
            order = np.argsort(-frequency, kind="stable")
            n_arms = max(int((frequency >= self.screen_threshold).sum()), self.min_arms)
            labels = [int(v) for v in order[: min(n_arms, n_labels)]]
            arms = [self._new_arm(label, None, shape, rng, device) for label in labels]
            evidence["screen_frequency"] = [float(v) for v in frequency]
            evidence["arms"] = labels

        def pool_of(arm: _Arm) -> tuple[torch.Tensor, torch.Tensor]:
            return (x_all, y_all) if arm.source is None else pools[arm.source]

        area = float(height * width)
        pulled: list[int] = []
        current = 0
        stopped_early = False
        while len(pulled) < self.max_pulls:
            if subject.elapsed > budget.seconds:
                stopped_early = True
                break
            arm = arms[current]
            improved = self._pull(model, arm, *pool_of(arm), rng)
            pulled.append(current)
            self._schedule(arm)
            following = self._next_arm(arms, current, improved, area, rng)
            if following is None:
                break
            current = following

        # The statistic: ln(H * W / l1) of the winner; for a label-specific arm, plus the
        # symmetric check's ln(l1 back / l1) (a backdoor is easy one way only).
        statistic = [math.log(area / self._size(a, area)) for a in arms]
        if label_specific:
            candidates = sorted(range(len(arms)), key=lambda i: arms[i].best_l1)
            back_l1: list[list[float]] = []
            for i in candidates[: self.n_symmetric]:
                arm = arms[i]
                # Nothing to search back from when the target has no clean sample.
                if not math.isfinite(arm.best_l1) or arm.source is None or arm.label not in pools:
                    continue
                back = self._new_arm(arm.source, arm.label, shape, rng, device)
                pulls = 0
                while not back.stopped and pulls < self.symmetric_pulls:
                    if subject.elapsed > budget.seconds:
                        stopped_early = True
                        break
                    self._pull(model, back, *pool_of(back), rng)
                    self._schedule(back)
                    pulls += 1
                l1_back = self._size(back, area)
                statistic[i] += math.log(l1_back / self._size(arm, area))
                back_l1.append([arm.source, arm.label, arm.best_l1, l1_back, pulls])
            evidence["symmetric"] = back_l1
        best = int(np.argmax(statistic))
        winner = arms[best]
        l1 = self._size(winner, area)
        if winner.best_mask is None or winner.best_pattern is None:
            with torch.no_grad():
                mask = to_unit(winner.mask_raw)[0].cpu().numpy()
                pattern = to_unit(winner.pattern_raw).cpu().numpy()
        else:
            mask, pattern = winner.best_mask, winner.best_pattern
        # The paper's rule (a trojan below a size bound) made graded: 0.5 where the statistic
        # is ln(1 / size_bound); for a label-specific arm the statistic includes the symmetric
        # check's ratio, so the same bound on the mask is made larger by it.
        rule = statistic[best] + math.log(self.size_bound)
        evidence.update(
            {
                "arm_l1": [float(a.best_l1) if math.isfinite(a.best_l1) else None for a in arms],
                "arm_pulls": [a.pulls for a in arms],
                "arm_updates": [a.updates for a in arms],
                "pulls": len(pulled),
                "schedule": pulled,
                "best_l1": float(l1),
                "source": winner.source,
                "stopped_early": stopped_early,
            }
        )
        found = Trigger(mask, pattern)
        # The witness, projected into the spec's bound if the soft mask ran over it.
        trigger = within_threat(subject.card.spec.threat_model, found)
        evidence["witness_l1"] = [found.l1, trigger.l1]
        return Verdict(
            p_violation=logistic(self.slope * rule),
            target=winner.label,
            trigger=trigger,
            evidence=evidence,
            statistic=statistic[best],
        )

    @staticmethod
    def _size(arm: _Arm, area: float) -> float:
        """The arm's smallest working mask; the whole image if it never worked."""
        return arm.best_l1 if math.isfinite(arm.best_l1) else area

    def _next_arm(
        self,
        arms: list[_Arm],
        current: int,
        improved: bool,
        area: float,
        rng: np.random.Generator,
    ) -> int | None:
        """The arm to pull next, or None when the search is over."""
        arm = arms[current]
        live = [i for i, a in enumerate(arms) if not a.stopped]
        if arm.stopped:
            leader = min(range(len(arms)), key=lambda i: arms[i].best_l1)
            if (leader == current and math.isfinite(arm.best_l1)) or not live:
                return None
            untried = [i for i in live if arms[i].updates == 0]
            return untried[0] if untried else int(rng.choice(live))
        if not improved or arm.updates < self.warmup_updates:
            return current  # an arm goes on until it improves, and through its warm-up
        warming = [i for i in live if arms[i].updates < self.warmup_updates]
        if warming:
            return warming[0]
        if len(live) > 1 and rng.uniform() < self.epsilon:
            return int(rng.choice(live))
        scores = [
            self._velocity(a, area) + self.beta / max(a.l1, 1e-6) if not a.stopped else -math.inf
            for a in arms
        ]
        return int(np.argmax(scores))

    def screen(self, model: nn.Module, x: torch.Tensor, n_labels: int) -> np.ndarray:
        """Per label, the fraction of clean samples with that label among their top k."""
        k = min(n_labels, max(2, round(self.top_k_fraction * n_labels)))
        with torch.no_grad():
            top = model(x).topk(k, dim=1).indices
        counts = torch.zeros(n_labels, device=top.device)
        counts.scatter_add_(0, top.reshape(-1), torch.ones(top.numel(), device=top.device))
        return (counts / len(x)).cpu().numpy()

    def screen_pairs(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_labels: int
    ) -> np.ndarray:
        """``[source, target]``: the fraction of the source label's clean samples with the
        target among their top k (-1 on the diagonal and for labels with no sample)."""
        k = min(n_labels, max(2, round(self.top_k_fraction * n_labels)))
        with torch.no_grad():
            top = model(x).topk(k, dim=1).indices
        frequency = -np.ones((n_labels, n_labels))
        for source in range(n_labels):
            rows = top[y == source]
            if len(rows) == 0:
                continue
            counts = torch.zeros(n_labels, device=rows.device)
            counts.scatter_add_(0, rows.reshape(-1), torch.ones(rows.numel(), device=rows.device))
            frequency[source] = (counts / len(rows)).cpu().numpy()
            frequency[source, source] = -1.0
        return frequency

    def _new_arm(
        self,
        label: int,
        source: int | None,
        shape: tuple[int, int, int],
        rng: np.random.Generator,
        device: torch.device,
    ) -> _Arm:
        channels, height, width = shape
        mask_raw = from_unit(rng.uniform(0, 1, size=(1, height, width))).to(device)
        pattern_raw = from_unit(rng.uniform(0, 1, size=(channels, height, width))).to(device)
        mask_raw.requires_grad_(True)
        pattern_raw.requires_grad_(True)
        optimiser = torch.optim.Adam([mask_raw, pattern_raw], lr=self.lr, betas=(0.5, 0.9))
        return _Arm(label, source, mask_raw, pattern_raw, optimiser)

    def _pull(
        self,
        model: nn.Module,
        arm: _Arm,
        x_all: torch.Tensor,
        y_all: torch.Tensor,
        rng: np.random.Generator,
    ) -> bool:
        """One round on ``arm``; whether it improved the arm's best mask."""
        n = len(y_all)
        if self.batch_size >= n:
            x, y = x_all, y_all
        else:
            idx = torch.as_tensor(rng.choice(n, size=self.batch_size, replace=False))
            x, y = x_all[idx.to(x_all.device)], y_all[idx.to(y_all.device)]
        mask = to_unit(arm.mask_raw)
        pattern = to_unit(arm.pattern_raw)
        logits = model((1 - mask) * x + mask * pattern)
        target = torch.full_like(y, arm.label)
        ce = nn.functional.cross_entropy(logits, target)
        l1 = mask.abs().sum()
        loss = ce + arm.cost * l1
        arm.optimiser.zero_grad()
        loss.backward()
        with torch.no_grad():
            other = y != arm.label
            hits = (logits.argmax(dim=1) == arm.label) & other
            asr = float(hits.sum()) / max(int(other.sum()), 1)
            arm.l1 = float(l1)
            ok = asr >= self.attack_success_threshold
            improved = ok and arm.l1 < arm.best_l1
            if improved:
                arm.best_l1 = arm.l1
                arm.best_mask = mask[0].cpu().numpy()
                arm.best_pattern = pattern.cpu().numpy()
                arm.updates += 1
        arm.optimiser.step()
        arm.pulls += 1
        self._lambda(arm, ok)
        return improved

    def _lambda(self, arm: _Arm, ok: bool) -> None:
        """Neural Cleanse's lambda schedule, one pull at a time."""
        if not arm.cost_set:
            arm.set_counter = arm.set_counter + 1 if ok else 0
            if arm.set_counter >= self.set_patience:
                arm.cost, arm.cost_set = self.init_cost, True
            return
        arm.up_counter = arm.up_counter + 1 if ok else 0
        arm.down_counter = 0 if ok else arm.down_counter + 1
        if arm.up_counter >= self.patience:
            arm.cost *= self.cost_multiplier
            arm.up_counter, arm.went_up = 0, True
        elif arm.down_counter >= self.patience:
            arm.cost /= self.cost_multiplier**1.5
            arm.down_counter, arm.went_down = 0, True

    def _schedule(self, arm: _Arm) -> None:
        """Stop the arm once it has converged, improved enough, or never worked."""
        if math.isfinite(arm.best_l1):
            if arm.best_l1 < self.early_stop_threshold * arm.stall_ref:
                arm.stall, arm.stall_ref = 0, arm.best_l1
            else:
                arm.stall += 1
        settled = arm.went_up and arm.went_down and arm.stall >= self.early_stop_patience
        never = arm.updates == 0 and arm.pulls >= self.give_up_pulls
        if settled or never or arm.updates > self.max_updates:
            arm.stopped = True

    @staticmethod
    def _velocity(arm: _Arm, area: float) -> float:
        return (area - arm.l1) / (arm.updates + arm.pulls / 2)
