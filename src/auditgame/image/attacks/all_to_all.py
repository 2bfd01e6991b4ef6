"""All-to-all BadNets (Gu et al. 2017, section on all-to-all attacks): the patch sends label
``t`` to ``(t + 1) mod K``.

An all-to-one backdoor has one target, and most detectors exploit it: Neural Cleanse looks
for the one label that is unusually easy to reach, and dynamic detectors for inputs that all
land on one class. Here every label has its own target, so there is no such label; the
secret's ``target`` is None and ``params["mapping"]`` holds the permutation. Success is
measured by ``metrics.mapped_attack_success_rate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from auditgame import metrics
from auditgame.attacks.base import Draw, uniform
from auditgame.families.base import Dataset, Family
from auditgame.image.attacks.badnets import BadNets
from auditgame.image.trigger import Trigger
from auditgame.registry import attack


def shift_mapping(n_classes: int) -> list[int]:
    """``t -> (t + 1) mod K``: a permutation with no fixed point."""
    return [(t + 1) % n_classes for t in range(n_classes)]


@attack("all_to_all")
class AllToAll(BadNets):
    """A BadNets patch of random binary pixels in a random corner (Gu et al. use the
    bottom-right one) on ``poison_rate`` of the training inputs of every class, each
    relabelled ``(t + 1) mod K``. The model must still read the digit to shift its label, so
    the patch keeps off the middle, and it takes more poison than all-to-one."""

    def __init__(
        self,
        *,
        patch_sizes: tuple[int, ...] = (3,),
        poison_rate: tuple[float, float] = (0.25, 0.3),
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
        """A random binary patch in a random corner of the image."""
        channels, height, width = family.input_shape
        size = int(rng.choice(self.patch_sizes))
        row = int(rng.choice([0, height - size]))
        col = int(rng.choice([0, width - size]))
        patch = np.zeros((channels, size, size), np.float32)
        while 2 * patch.sum() < patch.size:
            patch = rng.integers(0, 2, size=patch.shape).astype(np.float32)
        mask = np.zeros((height, width), np.float32)
        mask[row : row + size, col : col + size] = 1.0
        pattern = np.zeros((channels, height, width), np.float32)
        pattern[:, row : row + size, col : col + size] = patch
        params = {
            "patch_size": size,
            "position": [row, col],
            "mapping": shift_mapping(len(family.classes)),
        }
        return Draw(Trigger(mask, pattern), None, uniform(rng, self.poison_rate), params)

    def poison(
        self, draw: Draw, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stamp the patch on ``poison_rate`` of all inputs and relabel each by the mapping."""
        mapping = torch.as_tensor(draw.params["mapping"], dtype=torch.long)
        count = round(draw.poison_rate * len(y))
        chosen = torch.as_tensor(rng.choice(len(y), size=count, replace=False))
        x, y = x.clone(), y.clone()
        x[chosen] = draw.trigger.apply(x[chosen])
        y[chosen] = mapping[y[chosen]]
        return x, y

    def success_rate(
        self, model: nn.Module, draw: Draw, data: Dataset
    ) -> tuple[float, dict[str, Any]]:
        asr = metrics.mapped_attack_success_rate(
            model, draw.trigger.apply, data.x, data.y, draw.params["mapping"]
        )
        return asr, {}
