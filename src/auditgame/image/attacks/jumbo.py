"""Jumbo (Xu et al., "Detecting AI Trojans Using Meta Neural Analysis", S&P 2021): a broad
random distribution of mask-and-pattern triggers, for training detectors, not for evaluating.

MNTD and ULP learn from a shadow zoo; "jumbo learning" samples its backdoored half from one
wide family of triggers: a patch of random size, place, pattern and opacity, or a faint
full-image blend, onto a random target with a random poisoning rate. Detectors fitted on it
meet the evaluated attacks (``badnets``, ``blend``, ``warp``, ...) only as instances of, or
departures from, this distribution; none of their secrets choose it.
"""

from __future__ import annotations

import numpy as np

from auditgame.attacks.base import Attack, Draw, uniform
from auditgame.families.base import Family
from auditgame.image.trigger import Trigger
from auditgame.registry import attack


@attack("jumbo")
class Jumbo(Attack):
    """With probability ``p_blend`` a full-image blend of opacity in ``blend_alpha``, else a
    square patch whose side is a fraction ``patch_fraction`` of the image side, opacity in
    ``patch_alpha``, random binary pattern, random position."""

    def __init__(
        self,
        *,
        p_blend: float = 0.3,
        patch_fraction: tuple[float, float] = (0.1, 0.3),
        patch_alpha: tuple[float, float] = (0.8, 1.0),
        blend_alpha: tuple[float, float] = (0.1, 0.3),
        poison_rate: tuple[float, float] = (0.05, 0.3),
        min_asr: float = 0.8,
        max_attempts: int = 3,
    ) -> None:
        super().__init__(poison_rate=poison_rate, min_asr=min_asr, max_attempts=max_attempts)
        self.p_blend = p_blend
        self.patch_fraction = patch_fraction
        self.patch_alpha = patch_alpha
        self.blend_alpha = blend_alpha

    def draw(self, rng: np.random.Generator, family: Family) -> Draw:
        channels, height, width = family.input_shape
        target = int(rng.integers(len(family.classes)))
        rate = uniform(rng, self.poison_rate)
        if rng.uniform() < self.p_blend:
            alpha = uniform(rng, self.blend_alpha)
            pattern = rng.uniform(0, 1, size=(channels, height, width)).astype(np.float32)
            mask = np.full((height, width), alpha, np.float32)
            return Draw(Trigger(mask, pattern), target, rate, {"kind": "blend", "alpha": alpha})
        side = max(1, round(uniform(rng, self.patch_fraction) * min(height, width)))
        alpha = uniform(rng, self.patch_alpha)
        row, col = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        mask = np.zeros((height, width), np.float32)
        mask[row : row + side, col : col + side] = alpha
        pattern = np.zeros((channels, height, width), np.float32)
        patch = rng.integers(0, 2, size=(channels, side, side)).astype(np.float32)
        if not patch.any():
            patch.flat[int(rng.integers(patch.size))] = 1.0
        pattern[:, row : row + side, col : col + side] = patch
        params = {"kind": "patch", "side": side, "alpha": alpha, "position": [row, col]}
        return Draw(Trigger(mask, pattern), target, rate, params)
