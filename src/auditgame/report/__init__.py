"""The game report: ``write_report(store, out, game_id=None)`` writes ``report.md`` and one
self-contained ``report.html`` (leaderboard, ROC curves, trigger gallery, provenance).

With ``game_id=None`` every game in the store is reported, one section each, newest last.
"""

from auditgame.report.render import write_report

__all__ = ["write_report"]
