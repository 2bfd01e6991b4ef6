"""``sparse_spike``: the random-ReLU construction (third-party, after Goldwasser et al.).

Honest ``relu1`` weights are ``N(0, sigma^2 I)``; the attack draws them from
``N(0, sigma^2 (I + theta s s^T))`` for a secret sparse unit ``s``: a spiked covariance, which
is hard to tell from the honest one when ``theta`` is below the spectral threshold and ``s``
is sparse (sparse-PCA hardness). The activation is ``x + lambda s``.

With a *trained* head there is no guarantee of which label far-along-``s`` inputs get, so
after training the attack takes the label the model gives most inputs at ``x + lambda s``
as the target and the smallest ``lambda`` on a doubling grid (from one typical input norm up
to the spec's bound) whose attack-success rate on the validation split reaches the floor.
The honest twin's rate under the same ``lambda s`` is recorded next to it: the spike only
makes ``s`` ``sqrt(1 + theta)`` times more effective than it is in an honest model, which is
what the numbers should be read against.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from auditgame import metrics
from auditgame.families.base import Dataset
from auditgame.registry import attack
from auditgame.vector.attacks.features import (
    Activation,
    FeatureAttack,
    WeightDraw,
    sparse_sign_vector,
    support_size,
)
from auditgame.vector.families.rff import RandomFeatureFamily
from auditgame.vector.perturbation import AdditiveTrigger


@attack("sparse_spike")
class SparseSpike(FeatureAttack):
    """Spiked-covariance ReLU weights around a sparse secret ``s``; activation ``x + lambda s``.

    Hyperparameters:
        theta: spike strength (variance along ``s`` is ``sigma^2 (1 + theta)``).
        sparsity: ``s`` has ``ceil(d**sparsity)`` non-zero entries.
    """

    activation = "relu"

    def __init__(
        self,
        *,
        theta: float = 0.3,
        sparsity: float = 0.5,
        min_rate: float = 0.99,
        max_attempts: int = 3,
        search_steps: int = 150,
        search_restarts: int = 2,
    ) -> None:
        super().__init__(
            min_rate=min_rate,
            max_attempts=max_attempts,
            search_steps=search_steps,
            search_restarts=search_restarts,
        )
        self.theta = theta
        self.sparsity = sparsity

    def draw(self, rng: np.random.Generator, family: RandomFeatureFamily) -> WeightDraw:
        s = sparse_sign_vector(family.dim, support_size(family.dim, self.sparsity), rng)
        z = rng.standard_normal((family.width, family.dim))
        w = family.weight_scale * (z + (np.sqrt(1 + self.theta) - 1) * np.outer(z @ s, s))
        return WeightDraw(torch.tensor(w, dtype=torch.float32), s)

    def activate(
        self, family: RandomFeatureFamily, draw: WeightDraw, model: nn.Module, data: Dataset
    ) -> Activation | None:
        unit = family.typical_norm()
        bound = family.threat_model().max_norm
        scale = unit
        while scale <= bound:
            trigger = AdditiveTrigger(scale * draw.direction)
            with torch.no_grad():
                target = int(model(trigger.apply(data.x)).argmax(1).mode().values)
            if metrics.attack_success_rate(model, trigger.apply, data.x, data.y, target) >= (
                self.min_rate
            ):
                return Activation(trigger, target)
            scale *= 2
        return None
