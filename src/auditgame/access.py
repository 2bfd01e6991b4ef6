"""What an auditor may see, and how much it may spend."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Access(IntEnum):
    """Ordered access levels; every auditor declares the least it needs.

    ``WEIGHTS``: the model and its card, no data (static, white-box).
    ``CLEAN_DATA``: also a few clean labelled samples from the validation split.
    ``DYNAMIC``: also unlabelled run-time traffic, some of which may carry the trigger. This
    answers an easier question (is *this input* triggered?); such auditors are reported apart.
    """

    WEIGHTS = 0
    CLEAN_DATA = 1
    DYNAMIC = 2


@dataclass(frozen=True)
class Budget:
    """Limits an auditor is held to.

    Attributes:
        seconds: wall-clock seconds the auditor should stay within; an auditor checks
            ``Subject.elapsed`` against it and stops early with its best answer so far.
        n_clean: clean samples handed out at ``Access.CLEAN_DATA`` and above.
        n_traffic: run-time inputs handed out at ``Access.DYNAMIC``.
    """

    seconds: float = 120.0
    n_clean: int = 100
    n_traffic: int = 200
