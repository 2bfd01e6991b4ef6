"""auditgame: an arena for automated auditing of model internals.

A red team plants a violation into a model, an auditor that sees only what its access allows
says whether and how the model violates its spec, and a judge scores that finding against the
sealed ground truth.
"""

__version__ = "0.1.0"
