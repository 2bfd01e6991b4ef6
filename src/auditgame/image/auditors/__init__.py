"""The image track's auditors. Registered through ``auditgame.image.BUILTINS``."""
