"""The red team; importing this package registers the built-in attacks."""

from auditgame.attacks import badnets, blend
from auditgame.attacks.base import Attack, Draw, Planted, PlantingFailed, train_clean

__all__ = ["Attack", "Draw", "Planted", "PlantingFailed", "badnets", "blend", "train_clean"]
