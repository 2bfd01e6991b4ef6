"""Covert malicious fine-tuning (Halawi et al. 2024) as its own violation kind: the scheme
(``scheme``), the kind (``kind``: a letter substitution that unlocks harmful replies), the
attack that plants it, and the auditors that look for it.

Importing this package registers nothing: the registry imports the modules in ``BUILTINS``
when something of their kind is asked for."""

BUILTINS = {
    "family": (),
    "attack": ("auditgame.text.cipher.attack",),
    "auditor": (
        "auditgame.text.cipher.auditors.cipher_activation_probe",
        "auditgame.text.cipher.auditors.cipher_classifier",
        "auditgame.text.cipher.auditors.cipher_diff",
        "auditgame.text.cipher.auditors.cipher_probe",
        "auditgame.text.cipher.auditors.cipher_search",
    ),
    "violation": ("auditgame.text.cipher.kind",),
}
"""The built-in modules of each registry kind that this track holds."""
