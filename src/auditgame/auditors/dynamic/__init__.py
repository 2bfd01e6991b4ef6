"""Dynamic baselines: they see run-time traffic and answer an easier question. Registered
through ``auditgame.auditors.BUILTINS``."""
