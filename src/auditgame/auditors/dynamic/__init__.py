"""Dynamic baselines: they see run-time traffic and answer an easier question."""

from auditgame.auditors.dynamic import (
    activation_clustering,
    cipher_activation_probe,
    cipher_classifier,
    mahalanobis,
    probe,
    spectral,
    strip,
    text_mahalanobis,
    text_probe,
)

__all__ = [
    "activation_clustering",
    "cipher_activation_probe",
    "cipher_classifier",
    "mahalanobis",
    "probe",
    "spectral",
    "strip",
    "text_mahalanobis",
    "text_probe",
]
