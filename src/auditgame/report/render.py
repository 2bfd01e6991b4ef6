"""Write a results store out as ``report.md`` and one self-contained ``report.html``.

With no ``game_id`` the report covers *every* game in the store, one section per game, oldest
first and newest last. What each section holds is built once (``content``) and written twice:
as Markdown tables (``markdown``) and as an HTML page with plots, images, sortable tables and a
per-organism drill-down (``page``).
"""

from __future__ import annotations

from pathlib import Path

from auditgame.report.content import sections
from auditgame.report.markdown import markdown
from auditgame.report.page import page
from auditgame.store import Store


def write_report(store: Store, out: Path, game_id: str | None = None) -> tuple[Path, Path]:
    """Write ``out/report.md`` and ``out/report.html`` (creating ``out``).

    Args:
        store: The results store.
        out: Folder to write into.
        game_id: One game to report; None reports every game, one section each, newest last.

    Returns:
        ``(markdown_path, html_path)``.

    Raises:
        ValueError: If the store holds no results (for ``game_id``, when given).
    """
    games = sections(store, game_id)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(markdown(games, store), encoding="utf-8")
    html_path.write_text(page(games, store), encoding="utf-8")
    return md_path, html_path


__all__ = ["write_report"]
