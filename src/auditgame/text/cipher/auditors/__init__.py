"""The cipher track's auditors. Registered through ``auditgame.text.cipher.BUILTINS``."""
