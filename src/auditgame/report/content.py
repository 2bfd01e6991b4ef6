"""What the report says, as data, built from a store's rows.

The Markdown and HTML renderers only format what is built here, so the two files can never
disagree about a number. One ``GameSection`` per game holds:

1. the leaderboard (``leaderboard.leaderboard``), static auditors and dynamic baselines in
   separate tables, because a dynamic baseline sees run-time traffic and answers an easier
   question;
2. ROC curves: per family one plot comparing the auditors (every attack pooled), and per
   auditor one plot with a curve per attack; and, for a recovery metric with a chance level
   (trigger recall beside random phrases), the metric against its chance level per auditor
   and attack;
3. a trigger gallery: per backdoored organism, the planted trigger (from the unsealed secret)
   beside every auditor's reconstruction (from its finding), as mask and ``mask * pattern``;
4. the drill-down: per organism, every auditor's verdict, target, witness ASR, cost, error and
   a summary of its evidence;
5. the auditors' errors, and provenance (versions, revisions, seeds, dates, description);
6. each violation kind's own section, where its kind has one (``ViolationKind.section``):
   for covert fine-tuning, the cipher's *how* per auditor on both populations.

Strings here are plain, unescaped text: each renderer escapes for its own format.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from statistics import median
from typing import Any

from auditgame import metrics, registry
from auditgame.errors import RegistryError
from auditgame.finding import AGENT_PREFIX
from auditgame.leaderboard import (
    ALL,
    LeaderRow,
    leaderboard,
    natural_violations,
    over_chance,
    recovery_columns,
)
from auditgame.report.svg import Curve, Point, png_data_uri, roc_svg, scatter_svg
from auditgame.score import Score
from auditgame.store import UNREVEALED, Store
from auditgame.table import DASH, Cell, Table, auroc_text, fmt, missing
from auditgame.table import num as _num
from auditgame.table import text as _text
from auditgame.violation import KindSection, ViolationKind, kind_of

GALLERY_LIMIT = 48
MAX_ERRORS_SHOWN = 50
MAX_ERROR_CHARS = 400
MAX_EVIDENCE_CHARS = 300
SHORT_LIST = 6

DYNAMIC_NOTE = (
    "Dynamic baselines see run-time traffic (the inputs sent to the deployed model) and answer "
    "an easier question: is this input triggered? The static auditors above see only the "
    "model, so the two tables are not comparable."
)

CHANCE_NOTE = (
    "Each point is one auditor on one attack's backdoored organisms: the recovery metric's "
    "mean against the same metric for random guesses drawn as the attack draws its secrets, "
    "as many as the auditor made. Points on the dashed diagonal recover no more than chance."
)


# ----------------------------------------------------------------------------- content model


@dataclass
class Image:
    title: str
    uri: str


@dataclass
class Drawing:
    """One stored trigger as images (mask, mask·pattern), or a note saying why there are none."""

    images: list[Image] | None
    note: str = ""
    l1: float | None = None


@dataclass
class Reconstruction:
    """One auditor's reconstructed trigger for one organism, with how good it is."""

    auditor: str
    drawing: Drawing
    caption: str


@dataclass
class GalleryItem:
    """One backdoored organism: the planted trigger and every auditor's reconstruction."""

    organism_id: str
    anchor: str
    caption: str
    true: Drawing
    found: list[Reconstruction]


@dataclass
class Gallery:
    items: list[GalleryItem]
    total: int
    auditors: list[str]
    silent: list[str]


@dataclass
class RocPlot:
    title: str
    svg: str | None
    table: Table | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ChancePlot:
    """A recovery metric against its chance level, one point per (auditor, attack)."""

    title: str
    svg: str
    table: Table


@dataclass
class Audit:
    """One auditor's answer on one organism, as the drill-down shows it."""

    auditor: str
    dynamic: bool
    p_violation: float
    flagged: bool
    right: bool | None
    predicted_target: int | None
    witness_asr: float | None
    recovery: dict[str, float]
    seconds: float
    error: str | None
    evidence: str

    @property
    def outcome(self) -> str:
        """``error``, ``right`` (flagged exactly when backdoored) or ``wrong``."""
        if self.error is not None:
            return "error"
        return "right" if self.right else "wrong"

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "failed"
        return ("flagged" if self.flagged else "passed") + (" ✓" if self.right else " ✗")


@dataclass
class OrganismEntry:
    anchor: str
    organism_id: str
    family: str
    attack: str
    backdoored: bool
    true_target: int | None
    audits: list[Audit]
    natural: bool = False

    @property
    def filter_text(self) -> str:
        """What the filter box matches: the id and ``family:``/``attack:``/``auditor:`` terms
        (and ``natural`` for a natural violation)."""
        terms = [self.organism_id, f"family:{self.family}", f"attack:{self.attack}"]
        terms += ["natural"] if self.natural else []
        terms += [f"auditor:{a.auditor}" for a in self.audits]
        return " ".join(terms).lower()

    @property
    def misjudged(self) -> bool:
        return any(a.outcome != "right" for a in self.audits)


@dataclass
class GameSection:
    game_id: str
    key: str
    summary: str
    static: Table | None
    dynamic: Table | None
    rocs: list[RocPlot]
    auditor_rocs: list[RocPlot]
    gallery: Gallery
    organisms: list[OrganismEntry]
    errors: Table | None
    errors_note: str
    provenance: Table
    description: str | None
    kinds: list[KindSection] = field(default_factory=list)
    chance: list[ChancePlot] = field(default_factory=list)
    static_title: str = "static auditors"
    naturals: Table | None = None

    def anchor(self, part: str) -> str:
        return f"{self.key}-{part}"


# ----------------------------------------------------------------------------- formatting


def seconds(x: float | None) -> str:
    if x is None or missing(x):
        return DASH
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def target(x: Any) -> str:
    return DASH if x is None else str(x)


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _auroc(row: LeaderRow) -> str:
    return auroc_text(row.auroc, row.auroc_ci)


def population(row: LeaderRow) -> str:
    """A row's organisms as ``n (backdoored/clean)``, with its clean organisms that are
    natural violations and how many of them this auditor proved."""
    text = f"{row.n} ({row.n_backdoored}/{row.n_clean})"
    if row.n_natural:
        text += f"; {row.n_natural} clean natural ({row.natural_found} proved here)"
    return text


def _brief(value: Any) -> str:
    """A few characters for one evidence value: scalars as they are, long lists summarised."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, str):
        return one_line(value, 60)
    if isinstance(value, dict):
        keys = ", ".join(str(k) for k in list(value)[:SHORT_LIST])
        return "{" + keys + (", …" if len(value) > SHORT_LIST else "") + "}"
    if isinstance(value, list):
        if value and all(isinstance(v, bool) for v in value):
            return f"{sum(value)} of {len(value)} true"
        if value and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            if len(value) <= SHORT_LIST:
                return "[" + ", ".join(_brief(v) for v in value) + "]"
            return f"{len(value)} values, min {min(value):.3g}, max {max(value):.3g}"
        return f"list of {len(value)}"
    return type(value).__name__


def evidence_summary(evidence: dict[str, Any]) -> str:
    """``key: value`` per evidence entry, long lists as their length and range, one line."""
    if not evidence:
        return DASH
    return one_line("; ".join(f"{k}: {_brief(v)}" for k, v in evidence.items()), MAX_EVIDENCE_CHARS)


# ----------------------------------------------------------------------------- leaderboard


def _scores(rows: Sequence[dict[str, Any]]) -> list[Score]:
    return [Score.model_validate({k: r[k] for k in Score.model_fields if k in r}) for r in rows]


def _family_filter(family: str, with_family: bool) -> str:
    return f"family:{family} " if with_family else ""


def _agent_spending(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, float]]:
    """For each agent and attack (``all`` too, clean organisms in every attack's), the median
    tool calls and generated tokens per organism, from its findings' evidence."""
    spent: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if not str(r["auditor"]).startswith(AGENT_PREFIX):
            continue
        evidence = json.loads(r["finding_json"]).get("evidence", {})
        pair = (float(evidence.get("tool_calls", 0)), float(evidence.get("tokens", 0)))
        spent[r["auditor"], ALL].append(pair)
        spent[r["auditor"], r["attack"]].append(pair)
    attacks = {a for _, a in spent} - {ALL, "clean"}
    for (auditor, attack), pairs in list(spent.items()):
        if attack == "clean":
            for other in attacks:
                spent[auditor, other].extend(pairs)
    return {
        key: (median(c for c, _ in pairs), median(t for _, t in pairs))
        for key, pairs in spent.items()
    }


def _leader_table(
    rows: Sequence[LeaderRow],
    with_family: bool,
    organisms: str,
    errors: str,
    spending: dict[tuple[str, str], tuple[float, float]] | None = None,
) -> Table:
    """The leaderboard's rows; with ``spending`` (agents), their tool calls and tokens."""
    recovered = recovery_columns(rows)
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
            *(label for _, label in recovered),
            "s/organism",
            *(["tool calls/organism", "tokens/organism"] if spending else []),
            "errors",
        ]
    )
    body = []
    for r in rows:
        spent = spending.get((r.auditor, r.attack), (None, None)) if spending else ()
        terms = _family_filter(r.family, with_family)
        attack_filter = (terms + (f"attack:{r.attack}" if r.attack != ALL else "")).strip()
        body.append(
            [_text(f"{r.auditor} (reference)" if r.reference else r.auditor)]
            + ([_text(r.family)] if with_family else [])
            + [
                _text(r.attack, href=organisms, terms=attack_filter),
                _num(r.n, population(r)),
                _num(r.auroc, _auroc(r)),
                _num(r.tpr_at_5fpr, digits=2),
                _num(r.fpr_at_threshold, digits=2),
                _num(r.cross_entropy, f"{fmt(r.cross_entropy)} ± {fmt(r.cross_entropy_ci)}"),
                _num(r.brier),
                _num(r.target_acc, digits=2),
                _num(r.witness_asr, digits=2),
                *(_num(r.recovery.get(name), digits=2) for name, _ in recovered),
                _num(r.seconds_per_organism, seconds(r.seconds_per_organism)),
                *(_num(used, digits=0) for used in spent),
                Cell(str(r.errors), True, r.errors, href=errors if r.errors else ""),
            ]
        )
    return Table(headers, body, css="leaderboard")


def _kind_sections(scores: Sequence[Score]) -> list[KindSection]:
    """Each violation kind's own section over its rows, for the kinds that have one."""
    out = []
    for violation in sorted({s.violation for s in scores if s.violation}):
        kind = _kind(violation)
        found = kind.section([s for s in scores if s.violation == violation]) if kind else None
        if found is not None:
            out.append(found)
    return out


def _kind(violation: str) -> ViolationKind | None:
    """The kind named by a row, or None for a row written before rows named their kind, or
    for a kind this installation does not have. Only a row naming a kind that is not built
    in makes the registry import the installed plugins (the kind's code is needed)."""
    if not violation:
        return None
    try:
        return kind_of(violation)
    except RegistryError:
        return None


# ----------------------------------------------------------------------------- ROC curves


def _curve(label: str, scores: Sequence[Score], dashed: bool = False) -> Curve | None:
    labels = [int(s.backdoored) for s in scores]
    if not 0 < sum(labels) < len(labels):
        return None
    fpr, tpr = metrics.roc_curve(labels, [s.p_violation for s in scores])
    return Curve(label, fpr.tolist(), tpr.tolist(), dashed=dashed)


def _family_rocs(scores: Sequence[Score], board: Sequence[LeaderRow]) -> list[RocPlot]:
    """One plot per family, one curve per auditor over every attack pooled."""
    pooled = {(r.auditor, r.family): r for r in board if r.attack == ALL}
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
            row = pooled[(auditor, family)]
            table.rows.append(
                [
                    _text(auditor),
                    _text("dynamic" if dynamic else "static"),
                    _num(row.n, population(row)),
                    _num(row.auroc, _auroc(row)),
                ]
            )
            suffix = " (dynamic)" if dynamic else ""
            curve = _curve(f"{auditor}{suffix}: AUROC {fmt(row.auroc)}", mine, dashed=dynamic)
            if curve is None:
                notes.append(f"{auditor}: no curve, it needs both clean and backdoored organisms")
            else:
                curves.append(curve)
        title = f"ROC, family {family} (all attacks)"
        svg = roc_svg(curves, title) if curves else None
        plots.append(RocPlot(title, svg, table, notes))
    return plots


def _auditor_rocs(scores: Sequence[Score], board: Sequence[LeaderRow]) -> list[RocPlot]:
    """Per (auditor, family): a curve per attack (its backdoored organisms against every clean
    one, as in the leaderboard) and the pooled curve, to show which attacks an auditor misses."""
    auroc = {(r.auditor, r.family, r.attack): r.auroc for r in board}
    plots = []
    for dynamic, auditor, family in sorted({(s.dynamic, s.auditor, s.family) for s in scores}):
        mine = [s for s in scores if s.auditor == auditor and s.family == family]
        clean = [s for s in mine if not s.backdoored]
        curves = []
        for attack in sorted({s.attack for s in mine if s.backdoored}):
            attacked = clean + [s for s in mine if s.attack == attack]
            label = f"{attack}: AUROC {fmt(auroc.get((auditor, family, attack)))}"
            curve = _curve(label, attacked)
            if curve is not None:
                curves.append(curve)
        pooled = _curve(f"all attacks: AUROC {fmt(auroc.get((auditor, family, ALL)))}", mine)
        if pooled is not None:
            curves.append(Curve(pooled.label, pooled.fpr, pooled.tpr, dashed=True))
        kind = " (dynamic)" if dynamic else ""
        title = f"{auditor}{kind}, family {family}"
        plots.append(RocPlot(title, roc_svg(curves, title, size=220) if curves else None))
    return plots


def chance_plots(board: Sequence[LeaderRow]) -> list[ChancePlot]:
    """Per family and per recovery metric that a violation kind gives a chance level
    (``Metric.chance_of``): the metric's mean over each attack's backdoored organisms against
    the chance level's, per auditor. Above the diagonal an auditor recovers more than chance
    does; TDC 2023's analysis found the best trigger recall at it."""
    plots = []
    for family in sorted({r.family for r in board}):
        rows = [r for r in board if r.family == family and r.attack != ALL]
        pairs: dict[tuple[str, str], str] = {}
        for violation in dict.fromkeys(r.violation for r in rows):
            kind = _kind(violation)
            labels = {m.name: m.label for m in kind.metrics} if kind else {}
            for m in kind.metrics if kind else ():
                if m.chance_of:
                    pairs[(m.chance_of, m.name)] = labels.get(m.chance_of, m.chance_of)
        for (name, chance), label in pairs.items():
            mine = [r for r in rows if name in r.recovery and chance in r.recovery]
            if not mine:
                continue
            table = Table(
                ["auditor", "attack", "backdoored", label, "chance", f"{label} / chance"], []
            )
            points = []
            for r in mine:
                score, level = r.recovery[name], r.recovery[chance]
                points.append(Point(r.auditor, r.attack, level, score))
                table.rows.append(
                    [
                        _text(r.auditor),
                        _text(r.attack),
                        _num(r.n_backdoored, str(r.n_backdoored)),
                        _num(score, digits=3),
                        _num(level, digits=3),
                        _num(r.recovery.get(over_chance(name)), digits=2),
                    ]
                )
            title = f"{label} against chance, family {family}"
            svg = scatter_svg(
                points,
                title,
                x_label=f"chance {label}",
                y_label=label,
                diagonal=f"{label} = chance",
            )
            plots.append(ChancePlot(title, svg, table))
    return plots


# ----------------------------------------------------------------------------- triggers


def _raw_trigger(data: str) -> Any:
    """The ``trigger`` field of a stored finding or secret (JSON), or None."""
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj.get("trigger") if isinstance(obj, dict) else None


def _describe(raw: dict[str, Any]) -> str:
    """Words for a trigger that is not an image mask, from the violation kind that knows it
    (a built-in, or a plugin's already loaded for the store's rows: reading a store imports
    no plugin, whose code could rewrite it); other kinds (a warping field, a signature, a
    kind this version does not know) are named but not drawn."""
    for name in registry.loaded("violation"):
        words = kind_of(name).describe_trigger(raw)
        if words is not None:
            return words
    return f"{raw.get('kind')} trigger, not drawable"


def _drawing(data: str, who: str, organism: str) -> Drawing:
    """Images of one stored trigger, or a note saying why there are none."""
    if who == "true" and data == UNREVEALED:
        return Drawing(None, "not revealed yet: the game has pairs left to play")
    raw = _raw_trigger(data)
    if raw is None:
        return Drawing(None, "no trigger returned" if who == "found" else "no planted trigger")
    if not isinstance(raw, dict):
        return Drawing(None, f"unreadable trigger: a {type(raw).__name__}, not a mapping")
    try:
        for name in registry.loaded("violation"):
            picture = kind_of(name).picture(raw)
            if picture is not None:
                break
        else:
            return Drawing(None, one_line(_describe(raw), 120))
    except (KeyError, TypeError, ValueError) as exc:
        return Drawing(None, one_line(f"unreadable trigger: {exc}", 120))
    images = [
        Image(f"{who} {caption} of {organism}", png_data_uri(array))
        for caption, array in picture.images
    ]
    return Drawing(images, "", picture.size)


def _round_robin(rows: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` rows taking (family, attack) groups in turn, so every attack is shown."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["family"], r["attack"])].append(r)
    picked: list[dict[str, Any]] = []
    for group in zip_longest(*(groups[g] for g in sorted(groups))):
        picked.extend(r for r in group if r is not None)
    return picked[:limit]


def _gallery(rows: Sequence[dict[str, Any]], anchors: dict[str, str]) -> Gallery:
    auditors = sorted({r["auditor"] for r in rows})
    kinds = [_kind(v) for v in sorted({r["violation"] for r in rows})]
    labels = {m.name: m.label for kind in kinds if kind for m in kind.metrics}
    drawing = [a for a in auditors if any(_raw_trigger(r["finding_json"]) is not None
                                          for r in rows if r["auditor"] == a)]  # fmt: skip
    by_organism: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if r["backdoored"]:
            by_organism[r["organism_id"]][r["auditor"]] = r
    firsts = sorted(
        (next(iter(audits.values())) for audits in by_organism.values()),
        key=lambda r: (r["family"], r["attack"], r["organism_id"]),
    )
    picked = _round_robin(firsts, GALLERY_LIMIT) if drawing else []
    items = []
    for first in sorted(picked, key=lambda r: (r["family"], r["attack"], r["organism_id"])):
        org = first["organism_id"]
        found = []
        for auditor in drawing:
            if auditor not in by_organism[org]:
                continue
            r = by_organism[org][auditor]
            caption = " · ".join(
                [
                    *(f"{labels.get(m, m)} {fmt(v, 2)}" for m, v in r["recovery"].items()),
                    f"ASR {fmt(r['witness_asr'], 2)}",
                    f"target {target(r['predicted_target'])}",
                ]
            )
            found.append(
                Reconstruction(auditor, _drawing(r["finding_json"], "found", org), caption)
            )
        items.append(
            GalleryItem(
                organism_id=org,
                anchor=anchors[org],
                caption=(
                    f"{first['family']}, {first['attack']}, target {target(first['true_target'])}"
                ),
                true=_drawing(first["secret_json"], "true", org),
                found=found,
            )
        )
    silent = [a for a in auditors if a not in drawing]
    return Gallery(items, len(by_organism), drawing, silent)


# ----------------------------------------------------------------------------- drill-down


def _audit(r: dict[str, Any]) -> Audit:
    try:
        evidence = json.loads(r["finding_json"]).get("evidence") or {}
    except (ValueError, AttributeError):
        evidence = {}
    return Audit(
        auditor=r["auditor"],
        dynamic=bool(r["dynamic"]),
        p_violation=float(r["p_violation"]),
        flagged=bool(r["flagged"]),
        right=bool(r["flagged"]) == bool(r["backdoored"]),
        predicted_target=r["predicted_target"],
        witness_asr=r["witness_asr"],
        recovery=r["recovery"],
        seconds=float(r["seconds"]),
        error=r["error"],
        evidence=evidence_summary(evidence) if isinstance(evidence, dict) else DASH,
    )


def _organisms(
    rows: Sequence[dict[str, Any]], key: str, natural: set[tuple[str, str]]
) -> list[OrganismEntry]:
    """Backdoored organisms first (by family, attack, id), then clean ones; ``natural``: the
    (family, organism) pairs proved natural violations (``leaderboard.natural_violations``)."""
    by_organism: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_organism[r["organism_id"]].append(r)
    firsts = sorted(
        (audits[0] for audits in by_organism.values()),
        key=lambda r: (r["family"], not r["backdoored"], r["attack"], r["organism_id"]),
    )
    return [
        OrganismEntry(
            anchor=f"{key}-o{i}",
            organism_id=first["organism_id"],
            family=first["family"],
            attack=first["attack"],
            backdoored=bool(first["backdoored"]),
            true_target=first["true_target"],
            audits=[
                _audit(r)
                for r in sorted(
                    by_organism[first["organism_id"]], key=lambda r: (r["dynamic"], r["auditor"])
                )
            ],
            natural=(first["family"], first["organism_id"]) in natural,
        )
        for i, first in enumerate(firsts)
    ]


# ----------------------------------------------------------------------------- the rest


NATURAL_NOTE = (
    "Clean organisms (no attack planted) that an auditor's witness proved, by the spec's own "
    "check, to violate the spec: natural violations. Here the spec and the planting part "
    "ways. Detection scores the planting, so a flag on these organisms counts as a false "
    "alarm although the model does violate the spec: the detection numbers of this game "
    "answer whether a backdoor was planted, not whether the spec holds. A spec that clean "
    "models keep removes the difference."
)


def _naturals(
    rows: Sequence[dict[str, Any]], scores: Sequence[Score], anchors: dict[str, str]
) -> Table | None:
    """The witnesses that proved natural violations: one row per (organism, auditor);
    ``scores`` are ``rows`` as scores, in the same order."""
    proved = [r for r, s in zip(rows, scores, strict=True) if s.natural_violation]
    if not proved:
        return None
    body = []
    for r in proved:
        # An image mask is drawn in the gallery, not described: here its size and target.
        drawn = _drawing(r["finding_json"], "found", r["organism_id"])
        witness = one_line(drawn.note, 160)
        if drawn.images is not None:
            witness = f"a mask of L1 {fmt(drawn.l1, 1)} onto label {target(r['predicted_target'])}"
        body.append(
            [
                _text(r["organism_id"], href=anchors[r["organism_id"]]),
                _text(r["family"]),
                _text(r["auditor"]),
                _num(r["witness_asr"], digits=2),
                _text(witness),
            ]
        )
    return Table(["organism", "family", "auditor", "witness ASR", "witness"], body)


def _errors(rows: Sequence[dict[str, Any]], anchors: dict[str, str]) -> tuple[Table | None, str]:
    failed = [r for r in rows if r["error"] is not None]
    if not failed:
        return None, ""
    table = Table(
        ["auditor", "organism", "error"],
        [
            [
                _text(r["auditor"]),
                _text(r["organism_id"], href=anchors[r["organism_id"]]),
                _text(one_line(r["error"])),
            ]
            for r in failed[:MAX_ERRORS_SHOWN]
        ],
        css="errors",
    )
    note = (
        f"{len(failed)} audit(s) failed; a failed audit is scored as the worst answer: "
        "missed on a backdoored organism, a false alarm on a clean one."
    )
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


def _provenance(rows: Sequence[dict[str, Any]], game: dict[str, Any] | None) -> Table:
    created = sorted(str(r["created_at"]) for r in rows)
    pairs = [
        ("package version(s)", _values(rows, "package_version")),
        ("git revision(s)", _values(rows, "git_revision")),
        ("seed(s)", _seeds(rows)),
        ("results written", f"{created[0]} to {created[-1]}"),
        ("game created", str(game["created_at"]) if game else DASH),
    ]
    return Table(["", ""], [[_text(k), _text(v)] for k, v in pairs], css="provenance")


def _sealing(scores: Sequence[Score]) -> str:
    """Whether the audits ran sealed (``auditgame.run.sandbox``), said in the summary."""
    unsealed = sum(not s.sealed for s in scores)
    if not unsealed:
        return "Sealed: every auditor ran in its sandbox, blind to the key, zoo and store."
    return (
        f"UNSEALED: {unsealed} of {len(scores)} audits ran without a sandbox; they hold for "
        "trusted auditors only."
    )


def _section(
    index: int, game_id: str, rows: list[dict[str, Any]], game: dict[str, Any] | None
) -> GameSection:
    key = f"g{index}"
    scores = _scores(rows)
    board = leaderboard(scores)
    families = {s.family for s in scores}
    with_family = len(families) > 1
    organisms = _organisms(rows, key, natural_violations(scores))
    anchors = {o.organism_id: o.anchor for o in organisms}
    n_bad = sum(o.backdoored for o in organisms)
    summary = (
        f"{len(organisms)} organisms ({n_bad} backdoored, {len(organisms) - n_bad} clean) "
        f"in {len(families)} family(ies): {_values(rows, 'family')}; "
        f"attacks: {', '.join(sorted({s.attack for s in scores if s.backdoored})) or DASH}; "
        f"{len({s.auditor for s in scores})} auditor(s); {len(rows)} scored audits. "
        + _sealing(scores)
    )
    errors, errors_note = _errors(rows, anchors)
    links = (f"{key}-organisms", f"{key}-errors")
    static = [r for r in board if not r.dynamic]
    dynamic = [r for r in board if r.dynamic]
    agents = {r.auditor for r in static if r.auditor.startswith(AGENT_PREFIX)}
    spending = _agent_spending(rows) if agents else None
    static_title = (
        "static auditors"
        if not agents
        else "agents"
        if agents == {r.auditor for r in static}
        else "static auditors and agents"
    )
    return GameSection(
        game_id=game_id,
        key=key,
        summary=summary,
        static=_leader_table(static, with_family, *links, spending) if static else None,
        dynamic=_leader_table(dynamic, with_family, *links) if dynamic else None,
        rocs=_family_rocs(scores, board),
        auditor_rocs=_auditor_rocs(scores, board),
        gallery=_gallery(rows, anchors),
        organisms=organisms,
        errors=errors,
        errors_note=errors_note,
        provenance=_provenance(rows, game),
        description=(
            json.dumps(game["description"], indent=2, sort_keys=True, default=str) if game else None
        ),
        kinds=_kind_sections(scores),
        chance=chance_plots(board),
        static_title=static_title,
        naturals=_naturals(rows, scores, anchors),
    )


def _game_list(store: Store) -> str:
    ids = sorted({r["game_id"] for r in store.rows()})
    return ", ".join(ids) if ids else "none"


def sections(store: Store, game_id: str | None) -> list[GameSection]:
    """One section per game (only ``game_id`` when given), oldest first.

    Games with rows but no recorded description come after those with one.

    Raises:
        ValueError: If the store holds no results (for ``game_id``, when given).
    """
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
    return [_section(i, g, by_game[g], games.get(g)) for i, g in enumerate(order)]
