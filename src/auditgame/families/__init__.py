"""Model families; importing this package registers the built-ins."""

from auditgame.families import digits, maxofk, mnist, rff, signed, smollm, tinylm
from auditgame.families.base import Dataset, Family, Splits, accuracy

__all__ = [
    "Dataset",
    "Family",
    "Splits",
    "accuracy",
    "digits",
    "maxofk",
    "mnist",
    "rff",
    "signed",
    "smollm",
    "tinylm",
]
