"""Text-track auditors: trigger search in the style of TDC 2023 (static) and reference
comparison with the base model."""

from auditgame.auditors.text import (
    cipher_diff,
    cipher_probe,
    cipher_search,
    embedding_diff,
    gbda,
    gcg,
    pez,
    uat,
)

__all__ = [
    "cipher_diff",
    "cipher_probe",
    "cipher_search",
    "embedding_diff",
    "gbda",
    "gcg",
    "pez",
    "uat",
]
