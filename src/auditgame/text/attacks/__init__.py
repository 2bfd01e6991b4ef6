"""The text track's attacks. Registered through ``auditgame.text.BUILTINS``."""
