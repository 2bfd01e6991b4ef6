"""``clwe``: Goldwasser et al.'s white-box-undetectable backdoor in random Fourier features.

The honest recipe draws ``g_i ~ N(0, gamma^2 I)``. The attack draws them from the Gaussian
pancakes (homogeneous CLWE) distribution around a secret ``omega``: Gaussian in every
direction orthogonal to ``omega``, while ``<g_i, omega>`` sits within about ``beta`` of
``k + 1/2`` for an integer ``k``. Adding ``omega`` to an input then shifts every phase by
``k + 1/2`` (mod 1, by 1/2), negates every feature ``cos(2 pi (<g_i, x> + b_i))``, hence the
intercept-free logit: the output flips. Telling these weights from Gaussian without
``omega`` is as hard as worst-case lattice problems (for suitable parameters).

The sampler is exact, not rejection: with ``u = omega / ||omega||`` and ``R = gamma ||omega||``
(the honest spread of ``<g, omega>``), the pancake index ``k`` has weight
``exp(-(k + 1/2)^2 / (2 (R^2 + beta^2)))`` and, given ``k``,
``<g, omega> ~ N((k + 1/2) R^2 / (R^2 + beta^2), R^2 beta^2 / (R^2 + beta^2))``: the product of
the honest Gaussian along ``u`` and a width-``beta`` pancake, normalised. Orthogonal to ``u``,
``g`` is honest ``N(0, gamma^2)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

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


def pancake_weights(
    n: int, omega: np.ndarray, *, gamma: float, beta: float, rng: np.random.Generator
) -> np.ndarray:
    """``n`` rows from the Gaussian pancakes around ``omega`` (exact sampler, see module)."""
    norm = float(np.linalg.norm(omega))
    u = omega / norm
    radius = gamma * norm
    spread = radius**2 + beta**2
    reach = int(np.ceil(10 * np.sqrt(spread))) + 1
    ks = np.arange(-reach, reach)
    weights = np.exp(-((ks + 0.5) ** 2) / (2 * spread))
    k = rng.choice(ks, size=n, p=weights / weights.sum())
    phase = (k + 0.5) * radius**2 / spread + rng.standard_normal(n) * radius * beta / np.sqrt(
        spread
    )
    g = gamma * rng.standard_normal((n, omega.size))
    g -= np.outer(g @ u, u)
    return g + np.outer(phase / norm, u)


def secret_omega(
    family: RandomFeatureFamily, *, radius: float, sparsity: float, rng: np.random.Generator
) -> np.ndarray:
    """A ``ceil(d**sparsity)``-sparse sign vector scaled to ``||omega|| = radius / gamma``."""
    k = support_size(family.dim, sparsity)
    return sparse_sign_vector(family.dim, k, rng) * radius / family.weight_scale


class OmegaAttack(FeatureAttack):
    """Shared by ``clwe`` and ``naive_direction``: a secret ``omega``, activation ``x + omega``.

    Hyperparameters:
        radius: ``R = gamma ||omega||``, the honest spread of ``<g, omega>`` (for ``clwe``, how
            many pancakes the Gaussian spans: more is harder to tell from Gaussian along
            ``omega``, and a longer ``omega``).
        sparsity: ``omega`` has ``ceil(d**sparsity)`` non-zero entries (1 = dense).
    """

    activation = "cos"

    def __init__(
        self,
        *,
        radius: float = 3.0,
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
        self.radius = radius
        self.sparsity = sparsity

    def omega(self, family: RandomFeatureFamily, rng: np.random.Generator) -> np.ndarray:
        return secret_omega(family, radius=self.radius, sparsity=self.sparsity, rng=rng)

    def activate(
        self, family: RandomFeatureFamily, draw: WeightDraw, model: nn.Module, data: Dataset
    ) -> Activation:
        return Activation(AdditiveTrigger(draw.direction), None)


@attack("clwe")
class CLWE(OmegaAttack):
    """Pancake-distributed ``g`` around a sparse secret ``omega``; activation ``x + omega``.

    Hyperparameters (besides ``OmegaAttack``'s):
        beta: pancake width (phase noise); the flip needs it tiny (REFERENCES: 0.001-0.003).
    """

    def __init__(
        self,
        *,
        radius: float = 3.0,
        beta: float = 0.002,
        sparsity: float = 0.5,
        min_rate: float = 0.99,
        max_attempts: int = 3,
        search_steps: int = 150,
        search_restarts: int = 2,
    ) -> None:
        super().__init__(
            radius=radius,
            sparsity=sparsity,
            min_rate=min_rate,
            max_attempts=max_attempts,
            search_steps=search_steps,
            search_restarts=search_restarts,
        )
        self.beta = beta

    def draw(self, rng: np.random.Generator, family: RandomFeatureFamily) -> WeightDraw:
        omega = self.omega(family, rng)
        g = pancake_weights(family.width, omega, gamma=family.weight_scale, beta=self.beta, rng=rng)
        return WeightDraw(torch.tensor(g, dtype=torch.float32), omega)
