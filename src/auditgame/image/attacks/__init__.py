"""The image track's attacks. Registered through ``auditgame.image.BUILTINS``."""
