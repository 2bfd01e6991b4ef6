"""The blue team's plugin API: an auditor's base class (``auditgame.auditors.base``) and what
the dynamic baselines of every track share (``auditgame.auditors.dynamic``). The built-in
auditors live in their tracks (``auditgame.image``, ``auditgame.vector``, ``auditgame.maxofk``,
``auditgame.text``)."""

from auditgame.auditors.base import Auditor, Verdict

__all__ = ["Auditor", "Verdict"]
