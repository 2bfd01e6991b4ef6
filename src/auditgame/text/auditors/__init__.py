"""The text track's auditors. Registered through ``auditgame.text.BUILTINS``."""
