"""The blue team; importing this package registers the built-in auditors."""

from auditgame.auditors import (
    abs,
    bounds,
    dynamic,
    exhaustive,
    flip_search,
    k_arm,
    mntd,
    neural_cleanse,
    text,
    token_search,
    ulp,
    weight_stats,
    weight_tests,
)
from auditgame.auditors.base import Auditor, Verdict

__all__ = [
    "Auditor",
    "Verdict",
    "abs",
    "bounds",
    "dynamic",
    "exhaustive",
    "flip_search",
    "k_arm",
    "mntd",
    "neural_cleanse",
    "text",
    "token_search",
    "ulp",
    "weight_stats",
    "weight_tests",
]
