"""The red team; importing this package registers the built-in attacks."""

from auditgame.attacks import (
    adaptive,
    all_to_all,
    badnets,
    badnets_multi,
    blend,
    clwe,
    jumbo,
    naive_direction,
    rare_pattern,
    signature,
    sparse_spike,
    token_trigger,
    warp,
    weight_surgery,
)
from auditgame.attacks.base import Attack, Draw, Planted, PlantingFailed, train_clean

__all__ = [
    "Attack",
    "Draw",
    "Planted",
    "PlantingFailed",
    "adaptive",
    "all_to_all",
    "badnets",
    "badnets_multi",
    "blend",
    "clwe",
    "jumbo",
    "naive_direction",
    "rare_pattern",
    "signature",
    "sparse_spike",
    "token_trigger",
    "train_clean",
    "warp",
    "weight_surgery",
]
