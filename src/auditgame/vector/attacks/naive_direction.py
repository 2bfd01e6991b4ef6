"""``naive_direction``: the ``clwe`` backdoor with its structure left in plain sight.

The positive control of the same strength: the same secret ``omega`` (same norm, same
sparsity, same activation ``x + omega``), but every ``<g_i, omega>`` is set to exactly 1/2
instead of being drawn from the pancakes. Each phase still shifts by exactly 1/2, so the
output flips, but all weight vectors now lie on one hyperplane: the weight covariance has a
near-zero eigenvalue along ``omega``, which any second-moment test sees.
"""

from __future__ import annotations

import numpy as np
import torch

from auditgame.registry import attack
from auditgame.vector.attacks.clwe import OmegaAttack
from auditgame.vector.attacks.features import WeightDraw
from auditgame.vector.families.rff import RandomFeatureFamily


@attack("naive_direction")
class NaiveDirection(OmegaAttack):
    """Honest Gaussian ``g`` projected onto ``<g, omega> = 1/2``; activation ``x + omega``.

    ``radius`` and ``sparsity`` are ``clwe``'s, so the two draw ``omega`` alike.
    """

    def draw(self, rng: np.random.Generator, family: RandomFeatureFamily) -> WeightDraw:
        omega = self.omega(family, rng)
        norm = float(np.linalg.norm(omega))
        u = omega / norm
        g = family.weight_scale * rng.standard_normal((family.width, family.dim))
        g += np.outer(0.5 / norm - g @ u, u)
        return WeightDraw(torch.tensor(g, dtype=torch.float32), omega)
