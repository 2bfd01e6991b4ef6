"""Write a results store out as ``report.md`` and one self-contained ``report.html``.

With no ``game_id`` the report covers *every* game in the store, one section per game, oldest
first and newest last (the order of ``Store.games()``; games with rows but no recorded
description come after those). Each game section holds:

1. the leaderboard (``leaderboard.leaderboard``), static auditors and dynamic baselines in
   separate tables, because a dynamic baseline sees run-time traffic and answers an easier
   question;
2. ROC curves, one plot per family, one curve per auditor over the ``all`` attack pool;
3. a trigger gallery: the planted trigger (from the unsealed secret) beside the reconstructed
   one (from the finding), as mask and stamped pattern ``mask * pattern``;
4. the auditors' errors, if any;
5. provenance: package versions, git revisions, seeds, the ``created_at`` range, and the game
   description.

The HTML has inline CSS, inline SVG and PNG data URIs only: no script and nothing fetched.
Every string that comes from the store is escaped. The Markdown carries the same tables; its
plots and images are only in the HTML.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from itertools import zip_longest
from pathlib import Path
from typing import Any

from auditgame import __version__, judge
from auditgame.leaderboard import ALL, LeaderRow, leaderboard
from auditgame.perturbation import AdditiveTrigger
from auditgame.report.svg import Curve, png_data_uri, roc_svg
from auditgame.score import Score
from auditgame.store import Store
from auditgame.tokens import TokenPattern
from auditgame.trigger import Trigger

DASH = "–"
GALLERY_PER_AUDITOR = 8
MAX_ERRORS_SHOWN = 50
MAX_ERROR_CHARS = 400

DYNAMIC_NOTE = (
    "Dynamic baselines see run-time traffic (the inputs sent to the deployed model) and answer "
    "an easier question: is this input triggered? The static auditors above see only the "
    "model, so the two tables are not comparable."
)


# ----------------------------------------------------------------------------- content model


@dataclass
class Table:
    """Plain (unescaped) text cells; each renderer escapes for its own format."""

    headers: list[str]
    rows: list[list[str]]
    css: str = ""


@dataclass
class Image:
    title: str
    uri: str


@dataclass
class GalleryItem:
    """One backdoored organism: the true and reconstructed trigger, and a caption."""

    caption: list[str]
    true: list[Image] | None
    found: list[Image] | None
    true_note: str = ""
    found_note: str = ""


@dataclass
class Gallery:
    auditor: str
    shown: int
    total: int
    items: list[GalleryItem]


@dataclass
class RocPlot:
    family: str
    svg: str | None
    table: Table
    notes: list[str] = field(default_factory=list)


@dataclass
class GameSection:
    game_id: str
    summary: str
    static: Table | None
    dynamic: Table | None
    rocs: list[RocPlot]
    galleries: list[Gallery]
    errors: Table | None
    errors_note: str
    provenance: Table
    description: str | None


# ----------------------------------------------------------------------------- formatting


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _f(x: float | None, digits: int = 3) -> str:
    return DASH if x is None or _missing(x) else f"{x:.{digits}f}"


def _seconds(x: float | None) -> str:
    if x is None or _missing(x):
        return DASH
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _auroc(row: LeaderRow) -> str:
    if row.auroc is None or _missing(row.auroc):
        return DASH
    if row.auroc_ci is None:
        return f"{row.auroc:.3f}"
    lo, hi = row.auroc_ci
    return f"{row.auroc:.3f} [{lo:.3f}, {hi:.3f}]"


def _target(x: Any) -> str:
    return DASH if x is None else str(x)


def _one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# ----------------------------------------------------------------------------- building


def _scores(rows: Sequence[dict[str, Any]]) -> list[Score]:
    return [Score.model_validate({k: r[k] for k in Score.model_fields}) for r in rows]


def _leader_table(rows: Sequence[LeaderRow], with_family: bool) -> Table:
    headers = (
        ["auditor"]
        + (["family"] if with_family else [])
        + [
            "attack",
            "n (backdoored/clean)",
            "AUROC [95% CI]",
            "TPR@5%FPR",
            "FPR at threshold",
            "cross-entropy ± CI",
            "Brier",
            "target acc",
            "witness ASR",
            "mask IoU",
            "s/organism",
            "errors",
        ]
    )
    body = []
    for r in rows:
        body.append(
            [r.auditor]
            + ([r.family] if with_family else [])
            + [
                r.attack,
                f"{r.n} ({r.n_backdoored}/{r.n_clean})",
                _auroc(r),
                _f(r.tpr_at_5fpr, 2),
                _f(r.fpr_at_threshold, 2),
                f"{_f(r.cross_entropy)} ± {_f(r.cross_entropy_ci)}",
                _f(r.brier),
                _f(r.target_acc, 2),
                _f(r.witness_asr, 2),
                _f(r.mask_iou, 2),
                _seconds(r.seconds_per_organism),
                str(r.errors),
            ]
        )
    return Table(headers, body, css="leaderboard")


def _rocs(scores: Sequence[Score], board: Sequence[LeaderRow]) -> list[RocPlot]:
    auroc = {(r.auditor, r.family): r for r in board if r.attack == ALL}
    plots = []
    for family in sorted({s.family for s in scores}):
        curves: list[Curve] = []
        table = Table(["auditor", "kind", "n (backdoored/clean)", "AUROC [95% CI]"], [])
        notes = []
        # Static auditors first, as in the leaderboard.
        for dynamic, auditor in sorted(
            {(s.dynamic, s.auditor) for s in scores if s.family == family}
        ):
            mine = [s for s in scores if s.family == family and s.auditor == auditor]
            row = auroc[(auditor, family)]
            kind = "dynamic" if dynamic else "static"
            n = f"{row.n} ({row.n_backdoored}/{row.n_clean})"
            table.rows.append([auditor, kind, n, _auroc(row)])
            labels = [int(s.backdoored) for s in mine]
            if not 0 < sum(labels) < len(labels):
                notes.append(f"{auditor}: no curve, it needs both clean and backdoored organisms")
                continue
            fpr, tpr = judge.roc_curve(labels, [s.p_violation for s in mine])
            suffix = " (dynamic)" if dynamic else ""
            curves.append(
                Curve(
                    f"{auditor}{suffix}: AUROC {_f(row.auroc)}",
                    fpr.tolist(),
                    tpr.tolist(),
                    dashed=dynamic,
                )
            )
        svg = roc_svg(curves, f"ROC, family {family} (all attacks)") if curves else None
        plots.append(RocPlot(family, svg, table, notes))
    return plots


def _raw_trigger(data: str) -> Any:
    """The ``trigger`` field of a stored finding or secret (JSON), or None."""
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj.get("trigger") if isinstance(obj, dict) else None


def _side(data: str, who: str, organism: str) -> tuple[list[Image] | None, str, str]:
    """Images of one stored trigger, or None and a note saying why there are none."""
    raw = _raw_trigger(data)
    if raw is None:
        return None, "no trigger returned" if who == "reconstructed" else "no planted trigger", ""
    try:
        if isinstance(raw, dict) and "mask" not in raw:
            return None, _one_line(f"{who}: {_describe(raw)}", 120), ""
        trig = Trigger.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        return None, _one_line(f"unreadable trigger: {exc}", 120), ""
    return _images(trig, who, organism), "", f"{who} mask L1 {trig.l1:.1f}"


def _describe(raw: dict[str, Any]) -> str:
    """Words for a trigger that is not an image mask: a token pattern or an additive shift."""
    if raw.get("kind") == "token_pattern":
        return TokenPattern.from_dict(raw).describe()
    if raw.get("kind") == "additive":
        return f"additive shift, ||delta||_2 = {AdditiveTrigger.from_dict(raw).norm:.2f}"
    raise ValueError(f"kind {raw.get('kind')!r}")


def _images(trigger: Trigger, who: str, organism: str) -> list[Image]:
    stamp = trigger.mask[None] * trigger.pattern
    return [
        Image(f"{who} mask of {organism}", png_data_uri(trigger.mask)),
        Image(f"{who} mask·pattern of {organism}", png_data_uri(stamp)),
    ]


def _round_robin(rows: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` rows taking attacks in turn, so every attack gets shown."""
    by_attack: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_attack[r["attack"]].append(r)
    picked: list[dict[str, Any]] = []
    for group in zip_longest(*(by_attack[a] for a in sorted(by_attack))):
        picked.extend(r for r in group if r is not None)
    return picked[:limit]


def _galleries(rows: Sequence[dict[str, Any]]) -> list[Gallery]:
    galleries = []
    for auditor in sorted({r["auditor"] for r in rows}):
        mine = [r for r in rows if r["auditor"] == auditor]
        if all(_raw_trigger(r["finding_json"]) is None for r in mine):
            continue
        bad = sorted(
            (r for r in mine if r["backdoored"]),
            key=lambda r: (r["family"], r["attack"], r["organism_id"]),
        )
        items = []
        for r in _round_robin(bad, GALLERY_PER_AUDITOR):
            org = r["organism_id"]
            item = GalleryItem(
                caption=[
                    f"{org} ({r['family']}, {r['attack']})",
                    f"target: true {_target(r['true_target'])}, "
                    f"predicted {_target(r['predicted_target'])}",
                    f"witness ASR {_f(r['witness_asr'], 2)}, mask IoU {_f(r['mask_iou'], 2)}",
                ],
                true=None,
                found=None,
            )
            item.true, item.true_note, l1 = _side(r["secret_json"], "true", org)
            item.found, item.found_note, found_l1 = _side(r["finding_json"], "reconstructed", org)
            item.caption += [c for c in (l1, found_l1) if c]
            items.append(item)
        galleries.append(Gallery(auditor, len(items), len(bad), items))
    return galleries


def _errors(rows: Sequence[dict[str, Any]]) -> tuple[Table | None, str]:
    failed = [r for r in rows if r["error"] is not None]
    if not failed:
        return None, ""
    table = Table(
        ["auditor", "organism", "error"],
        [
            [r["auditor"], r["organism_id"], _one_line(r["error"])]
            for r in failed[:MAX_ERRORS_SHOWN]
        ],
        css="errors",
    )
    note = f"{len(failed)} audit(s) failed; a failed audit answers p_violation = 0.5."
    if len(failed) > MAX_ERRORS_SHOWN:
        note += f" The first {MAX_ERRORS_SHOWN} are listed."
    return table, note


def _values(rows: Sequence[dict[str, Any]], key: str) -> str:
    return ", ".join(sorted({str(r[key]) for r in rows}))


def _seeds(rows: Sequence[dict[str, Any]]) -> str:
    seeds = sorted({int(r["seed"]) for r in rows})
    if len(seeds) <= 12:
        return ", ".join(map(str, seeds))
    return f"{seeds[0]}–{seeds[-1]} ({len(seeds)} distinct)"


def _section(game_id: str, rows: list[dict[str, Any]], game: dict[str, Any] | None) -> GameSection:
    scores = _scores(rows)
    board = leaderboard(scores)
    with_family = len({s.family for s in scores}) > 1
    static = [r for r in board if not r.dynamic]
    dynamic = [r for r in board if r.dynamic]
    organisms = {(r["family"], r["organism_id"]): bool(r["backdoored"]) for r in rows}
    n_bad = sum(organisms.values())
    summary = (
        f"{len(organisms)} organisms ({n_bad} backdoored, {len(organisms) - n_bad} clean) "
        f"in {len({s.family for s in scores})} family(ies): {_values(rows, 'family')}; "
        f"attacks: {', '.join(sorted({s.attack for s in scores if s.backdoored})) or DASH}; "
        f"{len({s.auditor for s in scores})} auditor(s); {len(rows)} scored audits."
    )
    created = sorted(str(r["created_at"]) for r in rows)
    prov = Table(
        ["", ""],
        [
            ["package version(s)", _values(rows, "package_version")],
            ["git revision(s)", _values(rows, "git_revision")],
            ["seed(s)", _seeds(rows)],
            ["results written", f"{created[0]} to {created[-1]}"],
            ["game created", str(game["created_at"]) if game else DASH],
        ],
        css="provenance",
    )
    description = (
        json.dumps(game["description"], indent=2, sort_keys=True, default=str) if game else None
    )
    errors, errors_note = _errors(rows)
    return GameSection(
        game_id=game_id,
        summary=summary,
        static=_leader_table(static, with_family) if static else None,
        dynamic=_leader_table(dynamic, with_family) if dynamic else None,
        rocs=_rocs(scores, board),
        galleries=_galleries(rows),
        errors=errors,
        errors_note=errors_note,
        provenance=prov,
        description=description,
    )


def _sections(store: Store, game_id: str | None) -> list[GameSection]:
    rows = store.rows(game_id)
    if not rows:
        where = f"game {game_id!r}" if game_id is not None else "any game"
        raise ValueError(
            f"no results for {where} in the store at {store.path}; run a game first"
            + ("" if game_id is None else f" (games stored: {_game_list(store)})")
        )
    games = {g["game_id"]: g for g in store.games()}
    by_game: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_game[r["game_id"]].append(r)
    order = [g for g in games if g in by_game] + sorted(g for g in by_game if g not in games)
    return [_section(g, by_game[g], games.get(g)) for g in order]


def _game_list(store: Store) -> str:
    ids = sorted({r["game_id"] for r in store.rows()})
    return ", ".join(ids) if ids else "none"


# ----------------------------------------------------------------------------- Markdown


def _md(text: str) -> str:
    """Escape for a Markdown table cell or line: no raw HTML, no broken table."""
    return (
        escape(_one_line(text, 10_000), quote=False)
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


def _md_table(t: Table) -> list[str]:
    headers = [_md(h) or " " for h in t.headers]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in t.rows]
    return [*lines, ""]


def _markdown(sections: Sequence[GameSection], store: Store) -> str:
    out = [
        "# auditgame report",
        "",
        f"Store: `{_md(str(store.path))}`. Written by auditgame {_md(__version__)}. "
        "ROC plots and trigger images are in report.html.",
        "",
    ]
    for s in sections:
        gid = _md(s.game_id)
        out += [f"## Game {gid}", "", _md(s.summary), ""]
        out += ["### Leaderboard: static auditors", ""]
        out += _md_table(s.static) if s.static else ["No static auditors in this game.", ""]
        out += ["### Leaderboard: dynamic baselines", "", DYNAMIC_NOTE, ""]
        out += _md_table(s.dynamic) if s.dynamic else ["No dynamic baselines in this game.", ""]
        out += ["### ROC curves", ""]
        for roc in s.rocs:
            out += [f"Family {_md(roc.family)}, all attacks pooled:", ""]
            out += _md_table(roc.table)
            out += [f"- {_md(n)}" for n in roc.notes] + ([""] if roc.notes else [])
        out += ["### Trigger gallery", ""]
        if not s.galleries:
            out += ["No auditor returned a trigger.", ""]
        for g in s.galleries:
            out += [
                f"#### {_md(g.auditor)} ({g.shown} of {g.total} backdoored organisms)",
                "",
            ]
            table = Table(
                ["organism (family, attack)", "target", "witness ASR, mask IoU", "trigger"], []
            )
            for item in g.items:
                extra = "; ".join(
                    n for n in (item.true_note, item.found_note, *item.caption[3:]) if n
                )
                table.rows.append([*item.caption[:3], extra or DASH])
            out += _md_table(table)
        if s.errors is not None:
            out += ["### Errors", "", _md(s.errors_note), ""]
            out += _md_table(s.errors)
        out += ["### Provenance", ""]
        out += _md_table(s.provenance)
        if s.description is not None:
            out += ["Game description:", "", "```json", _json_safe(s.description)]
            out += ["```", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
h2 { margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; vertical-align: top; }
th { background: #f2f2f2; text-align: left; }
table.leaderboard td { white-space: nowrap; }
tr.pool td { font-weight: 600; background: #fafafa; }
table.errors td:last-child { font-family: monospace; word-break: break-word; }
table.provenance td:first-child { font-weight: 600; }
.note { color: #555; font-style: italic; max-width: 60em; }
.rocs { display: flex; flex-wrap: wrap; gap: 1.5em; }
svg.roc { max-width: 100%; height: auto; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; }
figure.trig { margin: 0; border: 1px solid #ddd; padding: .5em; background: #fcfcfc; }
figure.trig table { margin: 0; font-size: 11px; }
figure.trig td, figure.trig th { border: none; padding: 2px; text-align: center; }
figure.trig img { width: 64px; height: 64px; image-rendering: pixelated;
                  image-rendering: crisp-edges; border: 1px solid #999; display: block; }
figure.trig .empty { width: 64px; height: 64px; border: 1px dashed #bbb; font-size: 10px;
                     color: #777; display: flex; align-items: center; justify-content: center; }
figcaption { font-size: 11px; max-width: 16em; word-break: break-word; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 12px; }
"""


def _h(text: Any) -> str:
    return escape(str(text), quote=True)


def _html_table(t: Table, row_class: Callable[[list[str]], str] | None = None) -> str:
    cls = f' class="{t.css}"' if t.css else ""
    head = "".join(f"<th>{_h(h)}</th>" for h in t.headers)
    body = []
    for row in t.rows:
        rc = row_class(row) if row_class else ""
        attr = f' class="{rc}"' if rc else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>")
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _leader_html(t: Table) -> str:
    attack_col = t.headers.index("attack")
    return _html_table(t, lambda row: "pool" if row[attack_col] == ALL else "")


def _cell(images: list[Image] | None, index: int, note: str) -> str:
    if images is None:
        return f'<td><div class="empty">{_h(note or DASH)}</div></td>'
    img = images[index]
    return f'<td><img src="{img.uri}" alt="{_h(img.title)}" title="{_h(img.title)}"></td>'


def _figure(item: GalleryItem) -> str:
    rows = [
        "<tr><th></th><th>mask</th><th>mask·pattern</th></tr>",
        "<tr><th>true</th>"
        + _cell(item.true, 0, item.true_note)
        + _cell(item.true, 1, item.true_note)
        + "</tr>",
        "<tr><th>found</th>"
        + _cell(item.found, 0, item.found_note)
        + _cell(item.found, 1, item.found_note)
        + "</tr>",
    ]
    caption = "<br>".join(_h(c) for c in item.caption)
    return (
        f'<figure class="trig"><table>{"".join(rows)}</table>'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _anchor(i: int) -> str:
    return f"game-{i}"


def _html(sections: Sequence[GameSection], store: Store) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>auditgame report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>auditgame report</h1>",
        f"<p>Store: <code>{_h(store.path)}</code>. Written by auditgame {_h(__version__)}.</p>",
    ]
    if len(sections) > 1:
        links = "".join(
            f'<li><a href="#{_anchor(i)}">Game {_h(s.game_id)}</a></li>'
            for i, s in enumerate(sections)
        )
        out.append(f"<nav><p>Games, oldest first:</p><ul>{links}</ul></nav>")
    for i, s in enumerate(sections):
        out += [
            f'<section id="{_anchor(i)}"><h2>Game {_h(s.game_id)}</h2>',
            f"<p>{_h(s.summary)}</p>",
            "<h3>Leaderboard: static auditors</h3>",
            '<p class="note">Rows in bold pool every attack (<code>all</code>); each attack\'s '
            "row compares its backdoored organisms with all clean ones. Missing values: "
            f"{DASH}.</p>",
            _leader_html(s.static) if s.static else "<p>No static auditors in this game.</p>",
            "<h3>Leaderboard: dynamic baselines</h3>",
            f'<p class="note">{_h(DYNAMIC_NOTE)}</p>',
            _leader_html(s.dynamic) if s.dynamic else "<p>No dynamic baselines in this game.</p>",
            "<h3>ROC curves</h3>",
            '<p class="note">One curve per auditor over all attacks; dashed curves are dynamic '
            "baselines.</p>",
            '<div class="rocs">',
        ]
        for roc in s.rocs:
            notes = "".join(f"<li>{_h(n)}</li>" for n in roc.notes)
            plot = roc.svg if roc.svg is not None else "<p>No curve can be drawn.</p>"
            out.append(
                f"<div><h4>Family {_h(roc.family)}</h4>{plot}"
                + (f"<ul>{notes}</ul>" if notes else "")
                + "</div>"
            )
        out += [
            "</div>",
            "<h3>Trigger gallery</h3>",
            '<p class="note">Planted (true) beside reconstructed (found) triggers for '
            "backdoored organisms: the mask and the stamped pattern mask·pattern, on an absolute "
            "scale (black 0, white 1), so a faint blend looks faint.</p>",
        ]
        if not s.galleries:
            out.append("<p>No auditor returned a trigger.</p>")
        for g in s.galleries:
            out.append(
                f"<h4>{_h(g.auditor)} ({g.shown} of {g.total} backdoored organisms)</h4>"
                + '<div class="gallery">'
                + "".join(_figure(item) for item in g.items)
                + "</div>"
            )
        if s.errors is not None:
            out += ["<h3>Errors</h3>", f"<p>{_h(s.errors_note)}</p>", _html_table(s.errors)]
        out += ["<h3>Provenance</h3>", _html_table(s.provenance)]
        if s.description is not None:
            out.append(f"<p>Game description:</p><pre>{_h(s.description)}</pre>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- entry point


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
    sections = _sections(store, game_id)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(_markdown(sections, store), encoding="utf-8")
    html_path.write_text(_html(sections, store), encoding="utf-8")
    return md_path, html_path


__all__ = ["write_report"]
