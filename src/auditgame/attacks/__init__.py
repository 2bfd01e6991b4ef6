"""The red team's plugin API: an attack's base classes and the one planting loop
(``auditgame.attacks.base``). The built-in attacks live in their tracks (``auditgame.image``,
``auditgame.vector``, ``auditgame.maxofk``, ``auditgame.text``)."""

from auditgame.attacks.base import Attack, Draw, Planted, PlantingFailed, train_clean

__all__ = ["Attack", "Draw", "Planted", "PlantingFailed", "train_clean"]
