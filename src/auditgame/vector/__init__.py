"""The vector track: random-feature classifiers and additive perturbations, where the
provably undetectable backdoors live (Goldwasser et al. 2022).

Its violation kind (``kind``: an L2-bounded additive shift), the perturbation shape, the rff and
signed families, the CLWE, sparse-spike and signature constructions beside a naive direction,
and the auditors that test weights or search for flips.

Importing this package registers nothing: the registry imports the modules in ``BUILTINS``
when something of their kind is asked for."""

BUILTINS = {
    "family": (
        "auditgame.vector.families.rff",
        "auditgame.vector.families.signed",
    ),
    "attack": (
        "auditgame.vector.attacks.clwe",
        "auditgame.vector.attacks.naive_direction",
        "auditgame.vector.attacks.signature",
        "auditgame.vector.attacks.sparse_spike",
    ),
    "auditor": (
        "auditgame.vector.auditors.flip_search",
        "auditgame.vector.auditors.weight_tests",
    ),
    "violation": ("auditgame.vector.kind",),
}
"""The built-in modules of each registry kind that this track holds."""
