"""The report as Markdown: the same tables as the HTML page, without plots or images.

Every string from the store is escaped so that it can neither inject HTML (some renderers let
raw HTML through) nor break a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from auditgame import __version__
from auditgame.report.content import (
    CHANCE_NOTE,
    DASH,
    DYNAMIC_NOTE,
    NATURAL_NOTE,
    Cell,
    GameSection,
    Table,
    fmt,
    one_line,
    target,
)
from auditgame.store import Store


def _md(text: str) -> str:
    """Escape for a Markdown table cell or line: no raw HTML, no broken table."""
    return (
        escape(one_line(text, 10_000), quote=False)
        .replace("|", "\\|")
        .replace("`", "\\`")
        .replace("*", "\\*")
        .replace("_", "\\_")
    )


def _json_safe(text: str) -> str:
    """JSON text with ``<``, ``>``, ``&`` and backticks as ``\\uXXXX`` escapes: the same JSON,
    but inert in Markdown even where a renderer lets raw HTML through."""
    for ch in "<>&`":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text


def _table(t: Table) -> list[str]:
    headers = [_md(h) or " " for h in t.headers]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(_md(c.text) for c in row) + " |" for row in t.rows]
    return [*lines, ""]


def _gallery(s: GameSection) -> list[str]:
    g = s.gallery
    if not g.items:
        return ["No auditor returned a trigger.", ""]
    out = [f"{len(g.items)} of {g.total} backdoored organisms; images in report.html.", ""]
    table = Table(["organism", "family, attack, target", "auditor", "found", "trigger"], [])
    for item in g.items:
        true = item.true.note or f"true mask L1 {fmt(item.true.l1, 1)}"
        for rec in item.found:
            found = rec.drawing.note or f"mask L1 {fmt(rec.drawing.l1, 1)}"
            cells = [item.organism_id, item.caption, rec.auditor, rec.caption]
            table.rows.append([Cell(c) for c in (*cells, f"{true}; found {found}")])
    return out + _table(table)


def _organisms(s: GameSection) -> list[str]:
    """One row per organism, one column per auditor: ``p_violation`` and the named target."""
    auditors = sorted({a.auditor for o in s.organisms for a in o.audits})
    table = Table(["organism", "family", "attack", "true target", *auditors], [])
    for o in s.organisms:
        mine = {a.auditor: a for a in o.audits}
        attack = f"{o.attack} (natural violation)" if o.natural else o.attack
        cells = [Cell(o.organism_id), Cell(o.family), Cell(attack), Cell(target(o.true_target))]
        for name in auditors:
            a = mine.get(name)
            if a is None:
                cells.append(Cell(DASH))
            elif a.error is not None:
                cells.append(Cell("error"))
            else:
                named = f", target {a.predicted_target}" if a.predicted_target is not None else ""
                cells.append(Cell(f"{a.p_violation:.2f} {a.verdict}{named}"))
        table.rows.append(cells)
    return _table(table)


def markdown(sections: Sequence[GameSection], store: Store) -> str:
    out = [
        "# auditgame report",
        "",
        f"Store: `{_md(str(store.path))}`. Written by auditgame {_md(__version__)}. "
        "ROC plots and trigger images are in report.html.",
        "",
    ]
    for s in sections:
        out += [f"## Game {_md(s.game_id)}", "", _md(s.summary), ""]
        out += [f"### Leaderboard: {s.static_title}", ""]
        out += _table(s.static) if s.static else ["No static auditors in this game.", ""]
        out += ["### Leaderboard: dynamic baselines", "", DYNAMIC_NOTE, ""]
        out += _table(s.dynamic) if s.dynamic else ["No dynamic baselines in this game.", ""]
        if s.naturals is not None:
            out += ["### Natural violations", "", NATURAL_NOTE, "", *_table(s.naturals)]
        for kind in s.kinds:
            out += [f"### {_md(kind.title)}", "", _md(kind.note), ""]
            out += _table(kind.table)
        out += ["### ROC curves", ""]
        for roc in s.rocs:
            out += [f"{_md(roc.title)}:", ""]
            out += _table(roc.table) if roc.table else []
            out += [f"- {_md(n)}" for n in roc.notes] + ([""] if roc.notes else [])
        if s.chance:
            out += ["### Recovery against chance", "", CHANCE_NOTE, ""]
            for plot in s.chance:
                out += [f"{_md(plot.title)}:", "", *_table(plot.table)]
        out += ["### Trigger gallery", "", *_gallery(s)]
        out += ["### Organisms", "", "p_violation and verdict (✓ right, ✗ wrong) per auditor.", ""]
        out += _organisms(s)
        if s.errors is not None:
            out += ["### Errors", "", _md(s.errors_note), ""]
            out += _table(s.errors)
        out += ["### Provenance", ""]
        out += _table(s.provenance)
        if s.description is not None:
            out += ["Game description:", "", "```json", _json_safe(s.description), "```", ""]
    return "\n".join(out)
