"""The image track's model families. Registered through ``auditgame.image.BUILTINS``."""
