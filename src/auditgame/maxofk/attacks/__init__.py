"""The maxofk track's attacks. Registered through ``auditgame.maxofk.BUILTINS``."""
