"""Model families. Importing this package registers nothing: the registry imports the
modules in ``BUILTINS`` when a family is asked for."""

from auditgame.families.base import Dataset, Family, Splits, accuracy

BUILTINS = (
    "auditgame.families.digits",
    "auditgame.families.maxofk",
    "auditgame.families.mnist",
    "auditgame.families.rff",
    "auditgame.families.signed",
    "auditgame.families.smollm",
    "auditgame.families.tinylm",
)
"""The modules that register the built-ins (``auditgame.registry`` imports them)."""

__all__ = ["BUILTINS", "Dataset", "Family", "Splits", "accuracy"]
