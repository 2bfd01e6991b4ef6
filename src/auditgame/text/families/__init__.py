"""The text track's model families. Registered through ``auditgame.text.BUILTINS``."""
