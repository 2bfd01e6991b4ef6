"""Dynamic baselines: they see run-time traffic and answer an easier question."""

from auditgame.auditors.dynamic import mahalanobis

__all__ = ["mahalanobis"]
