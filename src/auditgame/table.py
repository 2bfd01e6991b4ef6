"""A table of cells, as the report renders it (sortable in HTML, plain in Markdown).

Kept apart from the report so that a violation kind (``auditgame.violation``) can build its
own report section without importing the report."""

from __future__ import annotations

import math
from dataclasses import dataclass

DASH = "–"


@dataclass(frozen=True)
class Cell:
    """One table cell.

    Attributes:
        text: what is shown.
        numeric: whether the column sorts by ``value`` rather than by ``text``.
        value: the number to sort by; None for a missing number (sorted last).
        href: an anchor in the page (without ``#``) that the cell links to.
        filter: text the link puts in the organism filter box (None: the link sets none).
    """

    text: str
    numeric: bool = False
    value: float | None = None
    href: str = ""
    filter: str | None = None


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    css: str = ""


def missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x: float | None, digits: int = 3) -> str:
    return DASH if x is None or missing(x) else f"{x:.{digits}f}"


def auroc_text(auroc: float | None, ci: tuple[float, float] | None) -> str:
    """An AUROC as the report shows it: three digits, with its 95% interval when known."""
    if auroc is None or missing(auroc):
        return DASH
    if ci is None:
        return f"{auroc:.3f}"
    return f"{auroc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def text(value: str, href: str = "", terms: str | None = None) -> Cell:
    """A text cell, linking to ``href`` and filtering the organisms by ``terms`` if given."""
    return Cell(value, href=href, filter=terms)


def num(x: float | None, shown: str | None = None, digits: int = 3) -> Cell:
    """A numeric cell showing ``x`` to ``digits`` places (or ``shown``), sorted by ``x``."""
    value = None if x is None or missing(x) else float(x)
    return Cell(fmt(x, digits) if shown is None else shown, numeric=True, value=value)
