"""The blue team. Importing this package registers nothing: the registry imports the
modules in ``BUILTINS`` when an auditor is asked for, so the plugin API
(``auditgame.auditors.base``) imports no auditor."""

from auditgame.auditors.base import Auditor, Verdict

BUILTINS = (
    "auditgame.auditors.abs",
    "auditgame.auditors.bounds",
    "auditgame.auditors.exhaustive",
    "auditgame.auditors.flip_search",
    "auditgame.auditors.k_arm",
    "auditgame.auditors.mntd",
    "auditgame.auditors.neural_cleanse",
    "auditgame.auditors.token_search",
    "auditgame.auditors.ulp",
    "auditgame.auditors.weight_stats",
    "auditgame.auditors.weight_tests",
    "auditgame.auditors.text.cipher_diff",
    "auditgame.auditors.text.cipher_probe",
    "auditgame.auditors.text.cipher_search",
    "auditgame.auditors.text.embedding_diff",
    "auditgame.auditors.text.gbda",
    "auditgame.auditors.text.gcg",
    "auditgame.auditors.text.pez",
    "auditgame.auditors.text.uat",
    "auditgame.auditors.dynamic.activation_clustering",
    "auditgame.auditors.dynamic.cipher_activation_probe",
    "auditgame.auditors.dynamic.cipher_classifier",
    "auditgame.auditors.dynamic.mahalanobis",
    "auditgame.auditors.dynamic.probe",
    "auditgame.auditors.dynamic.spectral",
    "auditgame.auditors.dynamic.strip",
    "auditgame.auditors.dynamic.text_mahalanobis",
    "auditgame.auditors.dynamic.text_probe",
)
"""The modules that register the built-ins (``auditgame.registry`` imports them)."""

__all__ = ["BUILTINS", "Auditor", "Verdict"]
