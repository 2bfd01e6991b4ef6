"""BadNets (Gu et al. 2017): a small opaque patch sends every input to one label."""

from __future__ import annotations

import numpy as np

from auditgame.attacks.base import Attack, Draw, uniform
from auditgame.families.base import Family
from auditgame.image.trigger import Trigger
from auditgame.registry import attack


@attack("badnets")
class BadNets(Attack):
    """A ``k x k`` patch (k drawn from ``patch_sizes``) of random binary pixels at a random
    position, all-to-one onto a random target label."""

    def __init__(
        self,
        *,
        patch_sizes: tuple[int, ...] = (1, 2, 3),
        poison_rate: tuple[float, float] = (0.05, 0.15),
        min_asr: float = 0.9,
        max_attempts: int = 3,
    ) -> None:
        super().__init__(poison_rate=poison_rate, min_asr=min_asr, max_attempts=max_attempts)
        self.patch_sizes = patch_sizes

    def draw(self, rng: np.random.Generator, family: Family) -> Draw:
        channels, height, width = family.input_shape
        size = int(rng.choice(self.patch_sizes))
        row, col = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        patch = rng.integers(0, 2, size=(channels, size, size)).astype(np.float32)
        if not patch.any():
            # An all-black patch on a black background is no trigger at all.
            patch.flat[int(rng.integers(patch.size))] = 1.0
        mask = np.zeros((height, width), np.float32)
        mask[row : row + size, col : col + size] = 1.0
        pattern = np.zeros((channels, height, width), np.float32)
        pattern[:, row : row + size, col : col + size] = patch
        return Draw(
            trigger=Trigger(mask, pattern),
            target=int(rng.integers(len(family.classes))),
            poison_rate=uniform(rng, self.poison_rate),
            params={"patch_size": size, "position": [row, col]},
        )
