"""The blue team; importing this package registers the built-in auditors."""

from auditgame.auditors import (
    bounds,
    dynamic,
    exhaustive,
    flip_search,
    neural_cleanse,
    token_search,
    weight_stats,
    weight_tests,
)
from auditgame.auditors.base import Auditor, Verdict

__all__ = [
    "Auditor",
    "Verdict",
    "bounds",
    "dynamic",
    "exhaustive",
    "flip_search",
    "neural_cleanse",
    "token_search",
    "weight_stats",
    "weight_tests",
]
