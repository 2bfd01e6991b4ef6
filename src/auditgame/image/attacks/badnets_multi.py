"""Two BadNets backdoors in one model: two patches, two targets (the multi-trigger setting of
Gu et al. 2017 and of the TrojAI rounds that plant more than one trigger per model).

A detector that stops at the first trigger it finds, or scores only the most anomalous label,
may recover one backdoor and miss the other. The secret says so honestly: ``trigger`` and
``target`` hold the first backdoor (so every tool that reads one trigger still works), and
``params["triggers"]`` lists both, each with its target, patch size and position;
``params["asr_per_trigger"]`` gives each one's held-out success rate and ``asr`` is the
smaller, so the floor holds for both.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from torch import nn

from auditgame import metrics
from auditgame.attacks.base import Draw
from auditgame.families.base import Dataset, Family
from auditgame.image.attacks.badnets import BadNets
from auditgame.image.trigger import Trigger
from auditgame.registry import attack
from auditgame.trigger import InputTrigger, load

# Redraws of the second patch before giving up on a disjoint one with another target.
_MAX_REDRAWS = 100


def _mask(draw: Draw) -> np.ndarray:
    return cast(Trigger, draw.trigger).mask


def planted(draw: Draw) -> list[tuple[InputTrigger, int]]:
    """Every (trigger, target) pair a ``badnets_multi`` draw (or secret's params) holds."""
    return [(load(t["trigger"]), int(t["target"])) for t in draw.params["triggers"]]


@attack("badnets_multi")
class BadNetsMulti(BadNets):
    """Two random BadNets patches that do not overlap, onto two different targets. Each gets
    half of ``poison_rate`` (the total fraction of poisoned training inputs), on disjoint
    inputs."""

    def __init__(
        self,
        *,
        patch_sizes: tuple[int, ...] = (2, 3),
        poison_rate: tuple[float, float] = (0.1, 0.2),
        min_asr: float = 0.9,
        max_attempts: int = 3,
    ) -> None:
        super().__init__(
            patch_sizes=patch_sizes,
            poison_rate=poison_rate,
            min_asr=min_asr,
            max_attempts=max_attempts,
        )

    def draw(self, rng: np.random.Generator, family: Family) -> Draw:
        first = super().draw(rng, family)
        for _ in range(_MAX_REDRAWS):
            second = super().draw(rng, family)
            disjoint = not (_mask(first) * _mask(second)).any()
            if disjoint and second.target != first.target:
                break
        else:
            raise ValueError(
                f"could not place two disjoint patches of sizes {self.patch_sizes} in a "
                f"{family.input_shape} image"
            )
        triggers = [
            {"trigger": d.trigger.to_dict(), "target": d.target, **d.params}
            for d in (first, second)
        ]
        return Draw(first.trigger, first.target, first.poison_rate, {"triggers": triggers})

    def poison(
        self, draw: Draw, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each trigger on ``poison_rate / 2`` of the inputs not of its target, disjointly."""
        x, y = x.clone(), y.clone()
        taken = np.zeros(len(y), dtype=bool)
        pairs = planted(draw)
        for trigger, target in pairs:
            candidates = np.flatnonzero((y.numpy() != target) & ~taken)
            count = round(draw.poison_rate / len(pairs) * len(y))
            chosen = rng.choice(candidates, size=count, replace=False)
            taken[chosen] = True
            index = torch.as_tensor(chosen)
            x[index] = trigger.apply(x[index])
            y[index] = target
        return x, y

    def success_rate(
        self, model: nn.Module, draw: Draw, data: Dataset
    ) -> tuple[float, dict[str, Any]]:
        rates = [
            metrics.attack_success_rate(model, trigger.apply, data.x, data.y, target)
            for trigger, target in planted(draw)
        ]
        return min(rates), {"asr_per_trigger": [round(r, 4) for r in rates]}
