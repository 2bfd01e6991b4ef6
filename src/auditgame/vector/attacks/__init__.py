"""The vector track's attacks. Registered through ``auditgame.vector.BUILTINS``."""
