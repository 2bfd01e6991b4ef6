"""The report as one self-contained HTML page: inline CSS, inline SVG, PNG data URIs and one
small inline script (``assets``); nothing is fetched, so it works opened from disk.

Every string that comes from the store passes through ``html.escape``: organism ids, auditor
names, errors and evidence are written by whoever built the zoo or the auditor, and could be
hostile. Element ids are generated here (``g0-o12``), never taken from the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from auditgame import __version__
from auditgame.leaderboard import ALL
from auditgame.report.assets import CSP, CSS, SCRIPT
from auditgame.report.content import (
    CHANCE_NOTE,
    DASH,
    DYNAMIC_NOTE,
    NATURAL_NOTE,
    Audit,
    Cell,
    Drawing,
    GalleryItem,
    GameSection,
    OrganismEntry,
    RocPlot,
    Table,
    fmt,
    seconds,
    target,
)
from auditgame.store import Store

AUDIT_HEADERS = [
    "auditor",
    "verdict",
    "p_violation",
    "target (predicted / true)",
    "witness ASR",
    "recovery",
    "seconds",
    "error",
    "evidence",
]


def _h(text: Any) -> str:
    return escape(str(text), quote=True)


def _td(cell: Cell) -> str:
    attrs = ""
    if cell.numeric:
        value = "" if cell.value is None else repr(float(cell.value))
        attrs = f' class="num" data-v="{value}"'
    text = _h(cell.text)
    if cell.href:
        data = f' data-filter="{_h(cell.filter)}"' if cell.filter is not None else ""
        text = f'<a href="#{_h(cell.href)}"{data}>{text}</a>'
    return f"<td{attrs}>{text}</td>"


def _table(t: Table, sortable: bool = False, pool_column: int | None = None) -> str:
    classes = " ".join(c for c in ("sortable" if sortable else "", t.css) if c)
    cls = f' class="{classes}"' if classes else ""
    if sortable:
        head = "".join(
            f'<th scope="col"><button type="button">{_h(h)}</button></th>' for h in t.headers
        )
    else:
        head = "".join(f'<th scope="col">{_h(h)}</th>' for h in t.headers)
    body = []
    for row in t.rows:
        pool = pool_column is not None and row[pool_column].text == ALL
        body.append(('<tr class="pool">' if pool else "<tr>") + "".join(map(_td, row)) + "</tr>")
    return (
        f'<div class="scroll"><table{cls}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _leaderboard(t: Table | None, what: str) -> str:
    if t is None:
        return f"<p>No {what} in this game.</p>"
    return _table(t, sortable=True, pool_column=t.headers.index("attack"))


def _roc(plot: RocPlot) -> str:
    svg = plot.svg if plot.svg is not None else "<p>No curve can be drawn.</p>"
    table = _table(plot.table) if plot.table is not None else ""
    notes = "".join(f"<li>{_h(n)}</li>" for n in plot.notes)
    return f"<figure>{svg}{table}" + (f"<ul>{notes}</ul>" if notes else "") + "</figure>"


def _images(drawing: Drawing) -> str:
    if drawing.images is None:
        return f'<td colspan="2"><div class="empty">{_h(drawing.note or DASH)}</div></td>'
    return "".join(
        f'<td><img src="{img.uri}" alt="{_h(img.title)}" title="{_h(img.title)}"></td>'
        for img in drawing.images
    )


def _figure(item: GalleryItem) -> str:
    l1 = f"mask L1 {fmt(item.true.l1, 1)}" if item.true.l1 is not None else ""
    rows = [f'<tr class="true">{_images(item.true)}<td class="who"><b>planted</b>{l1}</td></tr>']
    for rec in item.found:
        rows.append(
            f'<tr>{_images(rec.drawing)}<td class="who"><b>{_h(rec.auditor)}</b>'
            f"{_h(rec.caption)}</td></tr>"
        )
    return (
        f'<figure class="trigger"><figcaption><a href="#{item.anchor}">{_h(item.organism_id)}'
        f"</a><span>{_h(item.caption)}</span></figcaption>"
        "<table><thead><tr><th>mask</th><th>mask·pattern</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></figure>"
    )


def _gallery(s: GameSection) -> list[str]:
    g = s.gallery
    if not g.items:
        return ["<p>No auditor returned a trigger.</p>"]
    silent = f" Auditors that return no trigger: {_h(', '.join(g.silent))}." if g.silent else ""
    shown = (
        f"All {g.total} backdoored organisms."
        if len(g.items) == g.total
        else f"{len(g.items)} of {g.total} backdoored organisms, taking attacks in turn; "
        "every organism's numbers are under Organisms."
    )
    return [
        f'<p class="note">{shown} The planted trigger (top row) above each auditor\'s '
        "reconstruction: the mask and the stamped pattern mask·pattern, on an absolute scale "
        "(black 0, white 1), so a faint blend looks faint. Under each: the recovery metrics of "
        "the organism's violation kind (mask IoU: the overlap with the planted mask), and ASR, "
        f"the witness's success rate on held-out data.{silent}</p>",
        '<div class="gallery">' + "".join(_figure(item) for item in g.items) + "</div>",
    ]


def _chip(a: Audit) -> str:
    text = f"{a.auditor} error" if a.error is not None else f"{a.auditor} {a.p_violation:.2f}"
    return f'<span class="chip {a.outcome}" title="{_h(a.verdict)}">{_h(text)}</span>'


def _recovery(metrics: dict[str, float]) -> Cell:
    """A drill-down cell for an audit's recovery metrics, sorted by the first of them."""
    if not metrics:
        return Cell(DASH, True, None)
    shown = ", ".join(f"{name} {value:.2f}" for name, value in metrics.items())
    return Cell(shown, True, next(iter(metrics.values())))


def _audit_row(a: Audit, o: OrganismEntry) -> str:
    cells = [
        f"<td>{_h(a.auditor)}{' (dynamic)' if a.dynamic else ''}</td>",
        f'<td><span class="verdict {a.outcome}">{_h(a.verdict)}</span></td>',
        # A failed audit gave no probability; the judge scored it as the worst answer.
        _td(
            Cell(f"none (scored {a.p_violation:.0f})", True, a.p_violation)
            if a.error is not None
            else Cell(f"{a.p_violation:.3f}", True, a.p_violation)
        ),
        f"<td>{_h(target(a.predicted_target))} / {_h(target(o.true_target))}</td>",
        _td(Cell(fmt(a.witness_asr, 2), True, a.witness_asr)),
        _td(_recovery(a.recovery)),
        _td(Cell(seconds(a.seconds), True, a.seconds)),
        f'<td class="error">{_h(a.error)}</td>' if a.error is not None else f"<td>{DASH}</td>",
        f'<td class="evidence">{_h(a.evidence)}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def _organism(o: OrganismEntry) -> str:
    kind = "backdoored" if o.backdoored else "clean"
    label = (
        f"{o.attack} → {target(o.true_target)}"
        if o.backdoored
        else "clean, natural violation"
        if o.natural
        else "clean"
    )
    head = "".join(
        f'<th scope="col"><button type="button">{_h(h)}</button></th>' for h in AUDIT_HEADERS
    )
    rows = "".join(_audit_row(a, o) for a in o.audits)
    misjudged = " data-misjudged" if o.misjudged else ""
    return (
        f'<details class="organism" id="{o.anchor}" data-text="{_h(o.filter_text)}"{misjudged}>'
        f'<summary><span class="oid">{_h(o.organism_id)}</span>'
        f'<span class="tag family">{_h(o.family)}</span>'
        f'<span class="tag {kind}">{_h(label)}</span>'
        f'<span class="chips">{"".join(_chip(a) for a in o.audits)}</span></summary>'
        f'<div class="scroll"><table class="sortable audits"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div></details>"
    )


def _organisms(s: GameSection) -> list[str]:
    n = len(s.organisms)
    return [
        '<p class="note">Every auditor\'s answer on every organism: backdoored organisms '
        "first. Chips are green when the verdict (flagged at p_violation ≥ 0.5) is right, red "
        "when wrong, grey when the audit failed. Click an organism for targets, witness ASR, "
        "cost, errors and evidence.</p>",
        f'<div class="organisms" id="{s.anchor("organisms")}">',
        '<div class="controls" hidden><input type="search" aria-label="Filter organisms" '
        'placeholder="Filter: id, attack:blend, family:digits, auditor:…">'
        '<label><input type="checkbox"> only organisms some auditor got wrong</label>'
        f'<span class="count">{n} of {n} shown</span></div>',
        *(_organism(o) for o in s.organisms),
        "</div>",
    ]


def _jump(s: GameSection) -> str:
    parts = [
        ("leaderboard", "Leaderboard"),
        ("roc", "ROC curves"),
        *([("chance", "Against chance")] if s.chance else []),
        ("gallery", "Trigger gallery"),
        ("organisms-h", "Organisms"),
        *([("errors", "Errors")] if s.errors is not None else []),
        ("provenance", "Provenance"),
    ]
    return (
        '<nav class="jump">'
        + "".join(f'<a href="#{s.anchor(a)}">{t}</a>' for a, t in parts)
        + "</nav>"
    )


def _section(s: GameSection) -> list[str]:
    out = [
        f'<section class="game" id="{s.key}"><h2>Game {_h(s.game_id)}</h2>',
        f'<p class="summary">{_h(s.summary)}</p>',
        _jump(s),
        f'<h3 id="{s.anchor("leaderboard")}">Leaderboard: {_h(s.static_title)}</h3>',
        '<p class="note">Click a column header to sort. Rows in bold pool every attack '
        "(<code>all</code>); each attack's row compares its backdoored organisms with all "
        f"clean ones. An attack links to its organisms. Missing values: {DASH}.</p>",
        _leaderboard(s.static, s.static_title),
        "<h3>Leaderboard: dynamic baselines</h3>",
        f'<p class="note">{_h(DYNAMIC_NOTE)}</p>',
        _leaderboard(s.dynamic, "dynamic baselines"),
    ]
    for kind in s.kinds:
        out += [
            f"<h3>{_h(kind.title)}</h3>",
            f'<p class="note">{_h(kind.note)}</p>',
            _table(kind.table, sortable=True),
        ]
    out += [
        f'<h3 id="{s.anchor("roc")}">ROC curves</h3>',
        '<p class="note">One curve per auditor over all attacks; dashed curves are dynamic '
        "baselines.</p>",
        '<div class="rocs">' + "".join(_roc(p) for p in s.rocs) + "</div>",
    ]
    if s.auditor_rocs:
        out.append(
            '<details class="more"><summary>ROC per auditor: one curve per attack (its '
            "backdoored organisms against all clean ones), all attacks dashed</summary>"
            '<div class="rocs">' + "".join(_roc(p) for p in s.auditor_rocs) + "</div></details>"
        )
    if s.naturals is not None:
        out += [
            f'<h3 id="{s.anchor("natural")}">Natural violations</h3>',
            f'<p class="note">{_h(NATURAL_NOTE)}</p>',
            _table(s.naturals),
        ]
    if s.chance:
        out += [
            f'<h3 id="{s.anchor("chance")}">Recovery against chance</h3>',
            f'<p class="note">{_h(CHANCE_NOTE)}</p>',
            '<div class="rocs">'
            + "".join(f"<figure>{p.svg}{_table(p.table)}</figure>" for p in s.chance)
            + "</div>",
        ]
    out += [f'<h3 id="{s.anchor("gallery")}">Trigger gallery</h3>', *_gallery(s)]
    out += [f'<h3 id="{s.anchor("organisms-h")}">Organisms</h3>', *_organisms(s)]
    if s.errors is not None:
        out += [
            f'<h3 id="{s.anchor("errors")}">Errors</h3>',
            f"<p>{_h(s.errors_note)}</p>",
            _table(s.errors),
        ]
    out += [f'<h3 id="{s.anchor("provenance")}">Provenance</h3>', _table(s.provenance)]
    if s.description is not None:
        out.append(
            '<details class="more"><summary>Game description (JSON)</summary>'
            f"<pre>{_h(s.description)}</pre></details>"
        )
    out.append("</section>")
    return out


def page(sections: Sequence[GameSection], store: Store) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>auditgame report</title>",
        f"<style>{CSS}</style></head><body>",
        "<header><h1>auditgame report</h1>",
        f'<p class="meta">Store <code>{_h(store.path)}</code> · auditgame {_h(__version__)}</p>',
        "</header>",
    ]
    if len(sections) > 1:
        links = "".join(f'<a href="#{s.key}">Game {_h(s.game_id)}</a>' for s in sections)
        out.append(f'<nav class="jump" aria-label="Games, oldest first">{links}</nav>')
    for s in sections:
        out += _section(s)
    out.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(out) + "\n"
