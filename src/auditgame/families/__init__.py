"""What every model family is (``auditgame.families.base``). The built-in families live in
their tracks (``auditgame.image``, ``auditgame.vector``, ``auditgame.maxofk``,
``auditgame.text``)."""

from auditgame.families.base import Dataset, Family, Splits, accuracy

__all__ = ["Dataset", "Family", "Splits", "accuracy"]
