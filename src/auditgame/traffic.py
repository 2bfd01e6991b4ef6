"""Run-time traffic for dynamic auditors, prepared by the key holder.

A dynamic auditor sees unlabelled inputs as a deployed model would. For a backdoored organism
a fraction of them carry its trigger. For a clean organism the same fraction carries a *decoy*
trigger drawn from one of the zoo's attacks: the inputs are shifted the same way, so a dynamic
detector must notice how the model reacts, not merely that some inputs look unusual.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from auditgame import registry
from auditgame.families.base import Dataset, Family
from auditgame.secret import Secret
from auditgame.trigger import InputTrigger

# For zoos built before the manifest named its attacks.
DECOY_ATTACKS = ("badnets", "blend")


def traffic_rng(organism_id: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"traffic:{seed}:{organism_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def make_traffic(
    family: Family,
    secret: Secret,
    n: int,
    rng: np.random.Generator,
    *,
    triggered_fraction: float = 0.1,
    decoys: tuple[str, ...] = DECOY_ATTACKS,
) -> torch.Tensor:
    """``n`` test-split inputs in random order, ``triggered_fraction`` of them triggered.

    Triggered inputs are drawn from those whose label is not the trigger's target, so each
    one is an input the backdoor would change (any input, for a backdoor with no single
    target). A language-model family's traffic is prompts (``auditgame.text_traffic``).
    """
    if family.modality == "text":
        from auditgame.families.text import TextFamily
        from auditgame.text_traffic import text_traffic

        assert isinstance(family, TextFamily)
        return text_traffic(
            family, secret, n, rng, triggered_fraction=triggered_fraction, decoys=decoys
        )
    test: Dataset = family.data().test
    trigger: InputTrigger | None = secret.trigger_object()
    target: int | None = secret.target
    if trigger is None:
        decoy = registry.get("attack", decoys[int(rng.integers(len(decoys)))])()
        draw = decoy.draw(rng, family)
        trigger, target = draw.trigger, draw.target
    n = min(n, len(test))
    order = rng.permutation(len(test))[:n]
    x = test.x[order].clone()
    labels = test.y[order].numpy()
    eligible = np.flatnonzero(labels != target) if target is not None else np.arange(n)
    count = min(len(eligible), round(triggered_fraction * n))
    chosen = torch.as_tensor(rng.choice(eligible, size=count, replace=False))
    x[chosen] = trigger.apply(x[chosen])
    return x
