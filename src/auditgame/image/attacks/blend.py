"""Blended injection (Chen et al. 2017): a faint full-image pattern mixed in at opacity alpha."""

from __future__ import annotations

import numpy as np

from auditgame.attacks.base import Attack, Draw, uniform
from auditgame.families.base import Family
from auditgame.image.trigger import Trigger
from auditgame.registry import attack


@attack("blend")
class Blend(Attack):
    """``x' = (1 - alpha) x + alpha p`` with a uniform random pattern ``p`` and ``alpha`` drawn
    from ``alpha``, all-to-one onto a random target label."""

    def __init__(
        self,
        *,
        alpha: tuple[float, float] = (0.1, 0.3),
        poison_rate: tuple[float, float] = (0.05, 0.15),
        min_asr: float = 0.9,
        max_attempts: int = 3,
    ) -> None:
        super().__init__(poison_rate=poison_rate, min_asr=min_asr, max_attempts=max_attempts)
        self.alpha = alpha

    def draw(self, rng: np.random.Generator, family: Family) -> Draw:
        channels, height, width = family.input_shape
        opacity = uniform(rng, self.alpha)
        pattern = rng.uniform(0, 1, size=(channels, height, width)).astype(np.float32)
        return Draw(
            trigger=Trigger(np.full((height, width), opacity, np.float32), pattern),
            target=int(rng.integers(len(family.classes))),
            poison_rate=uniform(rng, self.poison_rate),
            params={"alpha": opacity},
        )
