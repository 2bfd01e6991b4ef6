"""The vector track's auditors. Registered through ``auditgame.vector.BUILTINS``."""
