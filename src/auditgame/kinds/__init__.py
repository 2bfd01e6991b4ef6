"""The built-in violation kinds (``auditgame.violation``), one module each. Importing this
package registers nothing: the registry imports the modules in ``BUILTINS`` when a kind is
asked for."""

BUILTINS = (
    "auditgame.kinds.mask_pattern",
    "auditgame.kinds.additive",
    "auditgame.kinds.token_pattern",
    "auditgame.kinds.text_trigger",
    "auditgame.kinds.cipher",
)
"""The modules that register the built-ins (``auditgame.registry`` imports them)."""
