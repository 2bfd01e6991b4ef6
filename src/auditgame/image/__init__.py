"""The image track: classifiers of small images and triggers stamped on their inputs.

Its violation kind (``kind``: a mask-and-pattern trigger that sends inputs to a target label),
its trigger shapes (``trigger``), the digits and MNIST families, the data-poisoning and
weight-surgery attacks, and the auditors that reconstruct triggers (Neural Cleanse, K-Arm, ABS),
classify models (MNTD, ULP) or read run-time traffic (``auditors.dynamic``).

Importing this package registers nothing: the registry imports the modules in ``BUILTINS``
when something of their kind is asked for."""

BUILTINS = {
    "family": (
        "auditgame.image.families.digits",
        "auditgame.image.families.mnist",
    ),
    "attack": (
        "auditgame.image.attacks.adaptive",
        "auditgame.image.attacks.all_to_all",
        "auditgame.image.attacks.badnets",
        "auditgame.image.attacks.badnets_multi",
        "auditgame.image.attacks.blend",
        "auditgame.image.attacks.jumbo",
        "auditgame.image.attacks.source_specific",
        "auditgame.image.attacks.warp",
        "auditgame.image.attacks.weight_surgery",
    ),
    "auditor": (
        "auditgame.image.auditors.abs",
        "auditgame.image.auditors.dormant_units",
        "auditgame.image.auditors.k_arm",
        "auditgame.image.auditors.mntd",
        "auditgame.image.auditors.neural_cleanse",
        "auditgame.image.auditors.ulp",
        "auditgame.image.auditors.weight_stats",
        "auditgame.image.auditors.dynamic.activation_clustering",
        "auditgame.image.auditors.dynamic.mahalanobis",
        "auditgame.image.auditors.dynamic.probe",
        "auditgame.image.auditors.dynamic.spectral",
        "auditgame.image.auditors.dynamic.strip",
    ),
    "violation": ("auditgame.image.kind",),
}
"""The built-in modules of each registry kind that this track holds."""
