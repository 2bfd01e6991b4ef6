"""Text-track auditors: trigger search in the style of TDC 2023 (static) and reference
comparison with the base model. Registered through ``auditgame.auditors.BUILTINS``."""
