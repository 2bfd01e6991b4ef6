"""Run-time traffic for dynamic auditors, prepared by the key holder.

A dynamic auditor sees unlabelled inputs as a deployed model would. For a backdoored organism
a fraction of them carry its trigger. For a clean organism the same fraction carries a *decoy*
trigger drawn from one of the zoo's attacks: the inputs are shifted the same way, so a dynamic
detector must notice how the model reacts, not merely that some inputs look unusual. How a
trigger rides in the traffic is the violation kind's business (``ViolationKind.traffic``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from auditgame.families.base import Family
from auditgame.secret import Secret
from auditgame.violation import ViolationKind, kind_of

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
    kind: ViolationKind | None = None,
    triggered_fraction: float = 0.1,
    decoys: tuple[str, ...] = DECOY_ATTACKS,
) -> torch.Tensor:
    """``n`` inputs of ``family``'s test split, ``triggered_fraction`` of them triggered as
    ``kind`` carries its triggers (default: the kind of the family's own spec)."""
    kind = kind or kind_of(family.violation)
    return kind.traffic(
        family, secret, n, rng, triggered_fraction=triggered_fraction, decoys=decoys
    )
