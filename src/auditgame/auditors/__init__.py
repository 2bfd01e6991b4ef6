"""The blue team; importing this package registers the built-in auditors."""

from auditgame.auditors import dynamic, neural_cleanse, weight_stats
from auditgame.auditors.base import Auditor, Verdict

__all__ = ["Auditor", "Verdict", "dynamic", "neural_cleanse", "weight_stats"]
