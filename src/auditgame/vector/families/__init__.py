"""The vector track's model families. Registered through ``auditgame.vector.BUILTINS``."""
