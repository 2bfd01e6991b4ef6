"""The maxofk track's auditors. Registered through ``auditgame.maxofk.BUILTINS``."""
