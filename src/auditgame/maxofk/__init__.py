"""The max-of-K track: token sequences whose label is their largest token, small enough to
verify exactly.

Its violation kind (``kind``: a token pattern that forces a label), the pattern shape
(``pattern``), the family, its poisoning attacks, and auditors that bound, enumerate or search.

Importing this package registers nothing: the registry imports the modules in ``BUILTINS``
when something of their kind is asked for."""

BUILTINS = {
    "family": ("auditgame.maxofk.family",),
    "attack": (
        "auditgame.maxofk.attacks.rare_pattern",
        "auditgame.maxofk.attacks.token_trigger",
    ),
    "auditor": (
        "auditgame.maxofk.auditors.bounds",
        "auditgame.maxofk.auditors.exhaustive",
        "auditgame.maxofk.auditors.token_search",
    ),
    "violation": ("auditgame.maxofk.kind",),
}
"""The built-in modules of each registry kind that this track holds."""
