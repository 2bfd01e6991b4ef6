"""The red team; importing this package registers the built-in attacks."""

from auditgame.attacks import (
    badnets,
    blend,
    clwe,
    jumbo,
    naive_direction,
    rare_pattern,
    signature,
    sparse_spike,
    token_trigger,
)
from auditgame.attacks.base import Attack, Draw, Planted, PlantingFailed, train_clean

__all__ = [
    "Attack",
    "Draw",
    "Planted",
    "PlantingFailed",
    "badnets",
    "blend",
    "clwe",
    "jumbo",
    "naive_direction",
    "rare_pattern",
    "signature",
    "sparse_spike",
    "token_trigger",
    "train_clean",
]
