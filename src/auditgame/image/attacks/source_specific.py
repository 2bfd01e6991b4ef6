"""A source-specific backdoor: TaCT (Tang et al. 2021, "Demon in the Variant").

The trigger sends the inputs of a few *source* labels to the target and leaves every other
label alone. Two kinds of training inputs teach that: *poison* inputs of the source labels,
stamped and relabelled to the target, and *cover* inputs of the other labels, stamped and
kept under their own label. A detector that looks for a small trigger moving all inputs to
one label (Neural Cleanse's premise) finds a trigger that moves only a tenth of them; the
all-labels attack-success rate of a ``mask_pattern`` spec stays near the sources' share, so
the organism does not even violate that spec. Its zoo is held to ``source_mask_pattern``,
whose rate is the best source label's (``spec``).

The floor is per source: every planted source label must reach ``min_asr``. The secret's
``params`` name the ``sources``, each one's held-out rate (``asr_per_source``) and the rate on
the other labels (``other_rate``: what the cover inputs keep low).
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
from auditgame.image.kind import SourceMaskPatternThreat, mask_bound
from auditgame.registry import attack
from auditgame.spec import Spec


@attack("source_specific")
class SourceSpecific(BadNets):
    """A BadNets patch onto a random target, learnt from ``n_sources`` random source labels
    (poison: ``poison_rate`` of the training set, drawn from the sources) and unlearnt on the
    others (cover: ``cover_rate`` of the training set, drawn from the labels that are neither
    source nor target)."""

    def __init__(
        self,
        *,
        n_sources: tuple[int, ...] = (1, 2),
        patch_sizes: tuple[int, ...] = (2, 3),
        poison_rate: tuple[float, float] = (0.05, 0.1),
        cover_rate: tuple[float, float] = (0.05, 0.1),
        min_asr: float = 0.9,
        max_attempts: int = 3,
    ) -> None:
        if not n_sources or min(n_sources) < 1:
            raise ValueError(f"n_sources must be positive counts of source labels, got {n_sources}")
        super().__init__(
            patch_sizes=patch_sizes,
            poison_rate=poison_rate,
            min_asr=min_asr,
            max_attempts=max_attempts,
        )
        self.n_sources = n_sources
        self.cover_rate = cover_rate

    def draw(self, rng: np.random.Generator, family: Family) -> Draw:
        patch = super().draw(rng, family)
        assert patch.target is not None
        others = [c for c in range(len(family.classes)) if c != patch.target]
        count = min(int(rng.choice(self.n_sources)), len(others) - 1)
        sources = sorted(int(s) for s in rng.choice(others, size=count, replace=False))
        return Draw(
            trigger=patch.trigger,
            target=patch.target,
            poison_rate=patch.poison_rate,
            params={
                **patch.params,
                "sources": sources,
                "cover_fraction": uniform(rng, self.cover_rate),
            },
        )

    def poison(
        self, draw: Draw, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stamp ``poison_rate`` of the training set from the sources and relabel them to the
        target; stamp ``cover_rate`` of it from the other non-target labels, labels kept."""
        assert draw.target is not None
        labels = y.numpy()
        sources = np.asarray(draw.params["sources"])
        from_sources = np.flatnonzero(np.isin(labels, sources))
        others = np.flatnonzero(~np.isin(labels, sources) & (labels != draw.target))
        n_poison = min(len(from_sources), round(draw.poison_rate * len(y)))
        n_cover = min(len(others), round(draw.params["cover_fraction"] * len(y)))
        poisoned = torch.as_tensor(rng.choice(from_sources, size=n_poison, replace=False))
        covered = torch.as_tensor(rng.choice(others, size=n_cover, replace=False))
        x, y = x.clone(), y.clone()
        x[poisoned] = draw.trigger.apply(x[poisoned])
        y[poisoned] = draw.target
        x[covered] = draw.trigger.apply(x[covered])
        return x, y

    def success_rate(
        self, model: nn.Module, draw: Draw, data: Dataset
    ) -> tuple[float, dict[str, Any]]:
        """The smallest per-source rate (every source must reach the floor), with each
        source's rate and the rate on the other labels."""
        assert draw.target is not None
        rates = metrics.source_success_rates(model, draw.trigger.apply, data.x, data.y, draw.target)
        sources = draw.params["sources"]
        keep = ~np.isin(data.y.numpy(), [*sources, draw.target])
        other = metrics.attack_success_rate(
            model, draw.trigger.apply, data.x[keep], data.y[keep], draw.target
        )
        return min(rates[s] for s in sources), {
            "asr_per_source": {str(s): rates[s] for s in sources},
            "other_rate": other,
        }

    def spec(self, family: Family) -> Spec:
        """The family's spec with its mask bound, held to the best source label's rate."""
        own = family.spec()
        bound = mask_bound(own.threat_model)
        if not np.isfinite(bound):
            raise ValueError(f"source_specific needs a family with a mask bound; {family.name}")
        return own.model_copy(update={"threat_model": SourceMaskPatternThreat(max_mask_l1=bound)})
