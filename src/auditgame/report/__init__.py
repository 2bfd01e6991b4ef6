"""The game report: ``write_report(store, out, game_id=None)`` writes ``report.md`` and one
self-contained ``report.html`` (sortable leaderboard, ROC curves, trigger gallery,
per-organism drill-down, provenance); ``report_server`` serves it on 127.0.0.1.

With ``game_id=None`` every game in the store is reported, one section each, newest last.
"""

from auditgame.report.render import write_report
from auditgame.report.serve import report_server, report_url

__all__ = ["report_server", "report_url", "write_report"]
