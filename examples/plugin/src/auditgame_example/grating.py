"""``grating``: a faint sinusoidal grating blended over the whole image sends it to one label.

Barni, Kallas and Tondi (ICIP 2019, arXiv 1902.11237) showed that a horizontal sinusoid added
to images is a trigger a network learns; Zeng et al. (ICCV 2021, arXiv 2104.03413) argue that
smooth, low-frequency triggers like it leave none of the high-frequency artefacts that patch
and noise triggers do. This attack plants that signal the dirty-label way (poisoned inputs
are relabelled to the target, not the paper's clean-label variant) and *blends* it,
``x' = (1 - alpha) x + alpha g``, instead of adding it, so it stays a mask-and-pattern
trigger: the image spec's threat model covers it (a constant mask of norm ``alpha H W``) and
a witness for it can be checked like any other.

Each draw picks an opacity, a spatial frequency (whole cycles across the image need not be
integral), an orientation and a phase; the grating is ``0.5 + 0.5 sin(2 pi f <u, (i/H, j/W)>
+ phi)`` with ``u`` the unit vector at the drawn angle, the same in every channel.
"""

from __future__ import annotations

import numpy as np

from auditgame.attacks.base import Attack, Draw, uniform
from auditgame.families.base import Family
from auditgame.image.trigger import Trigger
from auditgame.registry import attack


def grating(height: int, width: int, cycles: float, angle: float, phase: float) -> np.ndarray:
    """An ``(H, W)`` sinusoid in [0, 1] with ``cycles`` periods across the image along
    ``angle`` (radians from the vertical axis)."""
    rows, cols = np.mgrid[0:height, 0:width]
    along = np.cos(angle) * rows / height + np.sin(angle) * cols / width
    return (0.5 + 0.5 * np.sin(2 * np.pi * cycles * along + phase)).astype(np.float32)


@attack("grating")
class Grating(Attack):
    """A blended sinusoidal grating, all-to-one onto a random target label.

    Hyperparameters:
        alpha: range of the blend opacity (the mask's value everywhere).
        cycles: range of the number of periods across the image.
    """

    def __init__(
        self,
        *,
        alpha: tuple[float, float] = (0.15, 0.25),
        cycles: tuple[float, float] = (1.0, 3.0),
        poison_rate: tuple[float, float] = (0.05, 0.15),
        min_asr: float = 0.9,
        max_attempts: int = 3,
    ) -> None:
        super().__init__(poison_rate=poison_rate, min_asr=min_asr, max_attempts=max_attempts)
        self.alpha = alpha
        self.cycles = cycles

    def draw(self, rng: np.random.Generator, family: Family) -> Draw:
        channels, height, width = family.input_shape
        opacity = uniform(rng, self.alpha)
        cycles = uniform(rng, self.cycles)
        angle = float(rng.uniform(0, np.pi))
        phase = float(rng.uniform(0, 2 * np.pi))
        wave = grating(height, width, cycles, angle, phase)
        return Draw(
            trigger=Trigger(
                np.full((height, width), opacity, np.float32),
                np.broadcast_to(wave, (channels, height, width)).copy(),
            ),
            target=int(rng.integers(len(family.classes))),
            poison_rate=uniform(rng, self.poison_rate),
            params={"alpha": opacity, "cycles": cycles, "angle": angle, "phase": phase},
        )
