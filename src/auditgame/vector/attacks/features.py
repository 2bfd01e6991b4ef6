"""The red team's template for random-feature families: plant in the sampled weights.

The Goldwasser et al. attacks poison no data. They replace the honest draw of the random
first-layer weights with the attacker's own and leave the rest of the recipe alone
(``RandomFeatureFamily.train(..., feature_weights=W)``). ``FeatureAttack.plant`` therefore:

1. trains the honest twin (same seed, honest weights): the reference for the accuracy change
   and the model the "catch" is measured on;
2. draws planted weights and trains with them (same seed, same biases, same head recipe);
3. measures the activation on the held-out test split: the flip rate (``target=None``: the
   trigger negates a binary output) or the attack-success rate (an int target);
4. re-plants below ``min_rate``; after ``max_attempts`` raises ``PlantingFailed``.

The secret's ``trigger`` is ``AdditiveTrigger.to_dict()`` (``{"kind": "additive", "delta":
[...]}``), its ``target`` None for a flip, and ``params["measured"]`` records: the activation
rate, the clean-accuracy change against the honest twin (points), the activation norm
relative to a typical input, and the honest twin's rate under (a) the same delta, (b) a random
direction of the same norm and (c) an optimised universal perturbation of the same norm. (c)
is the catch: when a clean model already flips under that norm, a spec that forbids the
backdoor forbids the clean model too.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from auditgame import metrics
from auditgame.attacks.base import Attempt, Planted, Planter, plant_attempts
from auditgame.errors import AuditgameError
from auditgame.families.base import Dataset, Family, accuracy
from auditgame.vector.families.rff import RandomFeatureFamily
from auditgame.vector.perturbation import AdditiveTrigger, universal_search


@dataclass(frozen=True)
class WeightDraw:
    """Planted first-layer weights and the secret direction they were built around."""

    weights: torch.Tensor
    direction: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Activation:
    """How the planted model is triggered: ``x + delta``, flip (None) or to ``target``."""

    trigger: AdditiveTrigger
    target: int | None


def activation_rate(
    model: nn.Module, trigger: AdditiveTrigger, target: int | None, data: Dataset
) -> float:
    """``metrics.flip_rate`` for a flip, ``metrics.attack_success_rate`` for a target."""
    if target is None:
        return metrics.flip_rate(model, trigger.apply, data.x)
    return metrics.attack_success_rate(model, trigger.apply, data.x, data.y, target)


def sparse_sign_vector(dim: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A unit vector with ``k`` non-zero entries ``+-1/sqrt(k)`` on a random support."""
    vector = np.zeros(dim)
    support = rng.choice(dim, size=k, replace=False)
    vector[support] = rng.choice([-1.0, 1.0], size=k) / np.sqrt(k)
    return vector


def support_size(dim: int, sparsity: float) -> int:
    """``ceil(d ** sparsity)``: 0 gives a 1-sparse direction, 1 a dense one."""
    return int(min(dim, max(1, np.ceil(dim**sparsity - 1e-9))))


class FeatureAttack(Planter):
    """Base of the weight-planting attacks on ``RandomFeatureFamily`` models.

    Attributes:
        activation: the family activation (``cos`` or ``relu``) the attack is built for.
    """

    name: ClassVar[str]
    activation: ClassVar[str]

    def __init__(
        self,
        *,
        min_rate: float = 0.99,
        max_attempts: int = 3,
        search_steps: int = 150,
        search_restarts: int = 2,
    ) -> None:
        self.min_rate = min_rate
        self.max_attempts = max_attempts
        self.search_steps = search_steps
        self.search_restarts = search_restarts

    @abstractmethod
    def draw(self, rng: np.random.Generator, family: RandomFeatureFamily) -> WeightDraw:
        """Planted ``(width, dim)`` weights around a fresh secret direction."""

    @abstractmethod
    def activate(
        self, family: RandomFeatureFamily, draw: WeightDraw, model: nn.Module, data: Dataset
    ) -> Activation | None:
        """The trigger of a trained planted model, or None when no activation reaches the
        floor on ``data``."""

    def check_family(self, family: Family) -> RandomFeatureFamily:
        if not isinstance(family, RandomFeatureFamily) or family.activation != self.activation:
            raise AuditgameError(
                f"attack {self.name} plants in {self.activation} random-feature families, "
                f"not in {family.name}"
            )
        return family

    def plant(self, family: Family, rng: np.random.Generator, seed: int) -> Planted:
        fam = self.check_family(family)
        splits = fam.data()

        def attempt(n: int) -> Attempt | None:
            run_seed = seed + n - 1
            honest = fam.train(splits.train.x, splits.train.y, run_seed)
            draw = self.draw(rng, fam)
            model = fam.train(
                splits.train.x, splits.train.y, run_seed, feature_weights=draw.weights
            )
            act = self.activate(fam, draw, model, splits.val)
            if act is None:
                return None
            rate = activation_rate(model, act.trigger, act.target, splits.test)

            def secret() -> dict[str, Any]:
                assert act is not None
                measured = self.measure(fam, model, honest, act, splits.test, rng, run_seed)
                return {
                    "backdoored": True,
                    "attack": self.name,
                    "params": {**self.get_params(), **draw.params, "measured": measured},
                    "trigger": act.trigger.to_dict(),
                    "target": act.target,
                    "asr": rate,
                    "clean_accuracy": measured["clean_accuracy"],
                }

            return Attempt(model, score=rate, accepted=rate >= self.min_rate, secret=secret)

        return plant_attempts(self.name, self.max_attempts, rng, attempt)

    def measure(
        self,
        family: RandomFeatureFamily,
        model: nn.Module,
        honest: nn.Module,
        act: Activation,
        test: Dataset,
        rng: np.random.Generator,
        seed: int,
    ) -> dict[str, float]:
        """The numbers ``params["measured"]`` records (see the module docstring)."""
        norm = act.trigger.norm
        random_dir = rng.standard_normal(family.dim)
        random_trigger = AdditiveTrigger(norm * random_dir / np.linalg.norm(random_dir))
        searched = universal_search(
            honest,
            test.x,
            max_norm=norm,
            target=act.target,
            steps=self.search_steps,
            restarts=self.search_restarts,
            lr=0.05,
            generator=torch.Generator().manual_seed(seed),
        )
        clean_accuracy = accuracy(model, test)
        return {
            "rate": activation_rate(model, act.trigger, act.target, test),
            "clean_accuracy": clean_accuracy,
            "honest_accuracy": accuracy(honest, test),
            "accuracy_change_points": 100 * (clean_accuracy - accuracy(honest, test)),
            "norm": norm,
            "norm_ratio": norm / family.typical_norm(),
            "honest_rate_same_delta": activation_rate(honest, act.trigger, act.target, test),
            "honest_rate_random_same_norm": activation_rate(
                honest, random_trigger, act.target, test
            ),
            "honest_rate_optimised_same_norm": activation_rate(honest, searched, act.target, test),
            "planted_rate_random_same_norm": activation_rate(
                model, random_trigger, act.target, test
            ),
        }
