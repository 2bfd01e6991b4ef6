"""Drawing helpers for the report: ROC, line and scatter plots as inline SVG, images as PNG
data URIs.

Everything here returns text that can be pasted into one HTML file: no external resources, no
script. Every label is passed through ``html.escape``. SVG is written without an ``xmlns``
attribute, which inline SVG in HTML5 does not need (and which would put a URL in the file).
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np
import numpy.typing as npt

# Okabe–Ito colours, distinguishable with the common colour-vision deficiencies, plus Tol's
# wine for an eighth line.
PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#000000",
    "#882255",
)


@dataclass(frozen=True)
class Curve:
    """One ROC curve: its legend label, points, and whether to draw it dashed."""

    label: str
    fpr: Sequence[float]
    tpr: Sequence[float]
    dashed: bool = False


def _num(x: float) -> str:
    return f"{x:.1f}"


def roc_svg(curves: Sequence[Curve], title: str, *, size: int = 300) -> str:
    """An ROC plot: axes 0–1 with ticks, the chance diagonal, one polyline per curve, a legend.

    Args:
        curves: The curves, drawn in order with colours from :data:`PALETTE`.
        title: Plot title (escaped here).
        size: Side of the square plotting area in pixels.

    Returns:
        An ``<svg>`` element as a string.
    """
    left, top, bottom, gap = 52, 30, 44, 18
    # About 6.5 px per character at font-size 11; the legend grows to fit the longest label.
    longest = max((len(c.label) for c in curves), default=0)
    legend_w = max(200, math.ceil(6.5 * longest) + 40)
    row_h = 18
    legend_rows = len(curves) + 1  # + the diagonal
    width = left + size + gap + legend_w
    height = max(top + size + bottom, top + 10 + legend_rows * row_h)

    def px(f: float) -> str:
        return _num(left + f * size)

    def py(t: float) -> str:
        return _num(top + (1.0 - t) * size)

    out: list[str] = [
        f'<svg class="roc" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left + size / 2:.1f}" y="18" text-anchor="middle" font-size="13" '
        f'font-weight="bold">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="#fff" stroke="#333"/>',
    ]
    for i in range(6):
        v = i / 5
        label = f"{v:g}"
        # Grid lines, then tick marks and labels on both axes.
        out.append(
            f'<line x1="{px(v)}" y1="{top}" x2="{px(v)}" y2="{top + size}" stroke="#e5e5e5"/>'
            f'<line x1="{left}" y1="{py(v)}" x2="{left + size}" y2="{py(v)}" stroke="#e5e5e5"/>'
            f'<line x1="{px(v)}" y1="{top + size}" x2="{px(v)}" y2="{top + size + 5}" '
            f'stroke="#333"/>'
            f'<line x1="{left - 5}" y1="{py(v)}" x2="{left}" y2="{py(v)}" stroke="#333"/>'
            f'<text x="{px(v)}" y="{top + size + 17}" text-anchor="middle">{label}</text>'
            f'<text x="{left - 8}" y="{float(py(v)) + 4:.1f}" text-anchor="end">{label}</text>'
        )
    out.append(
        f'<text x="{left + size / 2:.1f}" y="{top + size + 36}" text-anchor="middle">'
        "false positive rate</text>"
        f'<text transform="translate(14 {top + size / 2:.1f}) rotate(-90)" '
        'text-anchor="middle">true positive rate</text>'
        f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(1)}" y2="{py(1)}" stroke="#999" '
        'stroke-dasharray="4 4"/>'
    )
    for i, curve in enumerate(curves):
        colour = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{px(f)},{py(t)}" for f, t in zip(curve.fpr, curve.tpr, strict=True))
        dash = ' stroke-dasharray="6 3"' if curve.dashed else ""
        out.append(
            f'<polyline class="curve" points="{points}" fill="none" stroke="{colour}" '
            f'stroke-width="2"{dash}/>'
        )
    lx = left + size + gap
    entries = [(PALETTE[i % len(PALETTE)], c.label, c.dashed, 2) for i, c in enumerate(curves)] + [
        ("#999", "chance (AUROC 0.5)", True, 1)
    ]
    for i, (colour, label, dashed, stroke) in enumerate(entries):
        y = top + 10 + i * row_h
        dash = ' stroke-dasharray="6 3"' if dashed else ""
        out.append(
            f'<line x1="{lx}" y1="{y}" x2="{lx + 24}" y2="{y}" stroke="{colour}" '
            f'stroke-width="{stroke}"{dash}/>'
            f'<text x="{lx + 30}" y="{y + 4}">{escape(label)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


@dataclass(frozen=True)
class Series:
    """One line of a line plot: its legend label and a y value per x category."""

    label: str
    ys: Sequence[float]
    dashed: bool = False


def line_svg(
    xs: Sequence[str], series: Sequence[Series], title: str, *, x_label: str, y_label: str
) -> str:
    """A line plot over categorical ``xs`` (equally spaced), y from 0 to 1, chance at 0.5.

    Made for AUROC against a size such as the input dimension, where the categories are
    powers of two and a linear axis would crowd the small ones.
    """
    left, top, bottom, gap, width_plot, height_plot = 52, 30, 44, 18, 360, 240
    longest = max((len(s.label) for s in series), default=0)
    legend_w = max(200, math.ceil(6.5 * longest) + 40)
    width = left + width_plot + gap + legend_w
    height = max(top + height_plot + bottom, top + 10 + (len(series) + 1) * 18)
    step = width_plot / max(len(xs) - 1, 1)

    def px(i: int) -> str:
        return _num(left + i * step)

    def py(v: float) -> str:
        return _num(top + (1.0 - v) * height_plot)

    out = [
        f'<svg class="lines" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left + width_plot / 2:.1f}" y="18" text-anchor="middle" font-size="13" '
        f'font-weight="bold">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{width_plot}" height="{height_plot}" fill="#fff" '
        'stroke="#333"/>',
    ]
    for i in range(6):
        v = i / 5
        out.append(
            f'<line x1="{left}" y1="{py(v)}" x2="{left + width_plot}" y2="{py(v)}" '
            f'stroke="#e5e5e5"/><text x="{left - 8}" y="{float(py(v)) + 4:.1f}" '
            f'text-anchor="end">{v:g}</text>'
        )
    for i, x in enumerate(xs):
        out.append(
            f'<line x1="{px(i)}" y1="{top + height_plot}" x2="{px(i)}" '
            f'y2="{top + height_plot + 5}" stroke="#333"/><text x="{px(i)}" '
            f'y="{top + height_plot + 17}" text-anchor="middle">{escape(x)}</text>'
        )
    out.append(
        f'<text x="{left + width_plot / 2:.1f}" y="{top + height_plot + 36}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text transform="translate(14 {top + height_plot / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
        f'<line x1="{left}" y1="{py(0.5)}" x2="{left + width_plot}" y2="{py(0.5)}" '
        'stroke="#999" stroke-dasharray="4 4"/>'
    )
    lx = left + width_plot + gap
    for i, line in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="6 3"' if line.dashed else ""
        points = " ".join(f"{px(j)},{py(v)}" for j, v in enumerate(line.ys))
        y = top + 10 + i * 18
        out.append(
            f'<polyline class="series" points="{points}" fill="none" stroke="{colour}" '
            f'stroke-width="2"{dash}/>'
            + "".join(
                f'<circle cx="{px(j)}" cy="{py(v)}" r="2.5" fill="{colour}"/>'
                for j, v in enumerate(line.ys)
            )
            + f'<line x1="{lx}" y1="{y}" x2="{lx + 24}" y2="{y}" stroke="{colour}" '
            f'stroke-width="2"{dash}/><text x="{lx + 30}" y="{y + 4}">{escape(line.label)}</text>'
        )
    y = top + 10 + len(series) * 18
    out.append(
        f'<line x1="{lx}" y1="{y}" x2="{lx + 24}" y2="{y}" stroke="#999" '
        f'stroke-dasharray="4 4"/><text x="{lx + 30}" y="{y + 4}">chance (0.5)</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


@dataclass(frozen=True)
class Point:
    """One point of a scatter plot: its colour group, its marker group, and where it lies."""

    colour: str
    marker: str
    x: float
    y: float


MARKERS = ("circle", "square", "triangle", "diamond")


def _marker(shape: str, x: float, y: float, colour: str) -> str:
    r = 4.5
    if shape == "circle":
        return f'<circle cx="{_num(x)}" cy="{_num(y)}" r="{r}" fill="{colour}"/>'
    corners = {
        "square": [(-r, -r), (r, -r), (r, r), (-r, r)],
        "triangle": [(0, -r - 1), (r + 1, r), (-r - 1, r)],
        "diamond": [(0, -r - 1), (r + 1, 0), (0, r + 1), (-r - 1, 0)],
    }[shape]
    points = " ".join(f"{_num(x + dx)},{_num(y + dy)}" for dx, dy in corners)
    return f'<polygon points="{points}" fill="{colour}"/>'


def scatter_svg(
    points: Sequence[Point],
    title: str,
    *,
    x_label: str,
    y_label: str,
    diagonal: str,
    size: int = 300,
) -> str:
    """A scatter plot of values in [0, 1] on equal axes from 0 to the largest value rounded up
    to a fifth (at least 0.2), with the diagonal ``y = x`` labelled ``diagonal``: a colour per
    ``colour`` group and a marker shape per ``marker`` group (shapes repeat after four), both
    in the legend. Made for a score against its chance level, where the diagonal is chance."""
    largest = max([0.2, *(p.x for p in points), *(p.y for p in points)])
    top_value = min(1.0, math.ceil(largest * 5 - 1e-9) / 5)
    left, top, bottom, gap = 52, 30, 44, 18
    colours = list(dict.fromkeys(p.colour for p in points))
    markers = list(dict.fromkeys(p.marker for p in points))
    longest = max((len(t) for t in [*colours, *markers, diagonal]), default=0)
    legend_w = max(200, math.ceil(6.5 * longest) + 40)
    rows = len(colours) + len(markers) + 1
    width = left + size + gap + legend_w
    height = max(top + size + bottom, top + 10 + rows * 18)

    def px(v: float) -> float:
        return left + v / top_value * size

    def py(v: float) -> float:
        return top + (1.0 - v / top_value) * size

    out = [
        f'<svg class="scatter" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left + size / 2:.1f}" y="18" text-anchor="middle" font-size="13" '
        f'font-weight="bold">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="#fff" stroke="#333"/>',
    ]
    for i in range(5):
        v = top_value * i / 4
        label = f"{v:.2f}".rstrip("0").rstrip(".") if v else "0"
        out.append(
            f'<line x1="{_num(px(v))}" y1="{top}" x2="{_num(px(v))}" y2="{top + size}" '
            f'stroke="#e5e5e5"/><line x1="{left}" y1="{_num(py(v))}" x2="{left + size}" '
            f'y2="{_num(py(v))}" stroke="#e5e5e5"/>'
            f'<text x="{_num(px(v))}" y="{top + size + 17}" text-anchor="middle">{label}</text>'
            f'<text x="{left - 8}" y="{_num(py(v) + 4)}" text-anchor="end">{label}</text>'
        )
    out.append(
        f'<text x="{left + size / 2:.1f}" y="{top + size + 36}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text transform="translate(14 {top + size / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
        f'<line x1="{_num(px(0))}" y1="{_num(py(0))}" x2="{_num(px(top_value))}" '
        f'y2="{_num(py(top_value))}" stroke="#999" stroke-dasharray="4 4"/>'
    )
    for p in points:
        colour = PALETTE[colours.index(p.colour) % len(PALETTE)]
        shape = MARKERS[markers.index(p.marker) % len(MARKERS)]
        out.append(
            f'<g class="point"><title>{escape(f"{p.colour}, {p.marker}: ({p.x:.3f}, {p.y:.3f})")}'
            f"</title>{_marker(shape, px(p.x), py(p.y), colour)}</g>"
        )
    lx = left + size + gap
    y = top + 10
    for i, name in enumerate(colours):
        out.append(
            f"{_marker('circle', lx + 12, y, PALETTE[i % len(PALETTE)])}"
            f'<text x="{lx + 30}" y="{y + 4}">{escape(name)}</text>'
        )
        y += 18
    for i, name in enumerate(markers):
        out.append(
            f"{_marker(MARKERS[i % len(MARKERS)], lx + 12, y, '#555')}"
            f'<text x="{lx + 30}" y="{y + 4}">{escape(name)}</text>'
        )
        y += 18
    out.append(
        f'<line x1="{lx}" y1="{y}" x2="{lx + 24}" y2="{y}" stroke="#999" '
        f'stroke-dasharray="4 4"/><text x="{lx + 30}" y="{y + 4}">{escape(diagonal)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + tag
        + data
        + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    )


def png_bytes(image: npt.ArrayLike) -> bytes:
    """Encode an 8-bit image as PNG: ``(H, W)`` grayscale or ``(H, W, 3)`` RGB, values 0–255."""
    img = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if img.ndim == 2:
        colour_type = 0
    elif img.ndim == 3 and img.shape[2] == 3:
        colour_type = 2
    else:
        raise ValueError(f"a PNG image must be (H, W) or (H, W, 3); got shape {img.shape}")
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"a PNG image must not be empty; got shape {img.shape}")
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))  # filter 0 on every row
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def to_pixels(values: npt.ArrayLike, *, min_side: int = 64) -> npt.NDArray[np.uint8]:
    """Turn an array in [0, 1] into upscaled 8-bit pixels.

    ``(H, W)`` gives grayscale; ``(C, H, W)`` gives grayscale for one channel, RGB for three,
    and the channel mean otherwise. Each pixel is repeated so the short side reaches
    ``min_side``, so the image stays crisp even where CSS scaling would blur it. The scale is
    absolute (0 is black, 1 is white), never stretched per image, so faint triggers look faint.
    """
    a = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a.mean(0)
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (C, H, W); got shape {np.shape(values)}")
    scale = max(1, math.ceil(min_side / max(1, min(a.shape[0], a.shape[1]))))
    a = np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
    return np.asarray(np.rint(np.clip(a, 0.0, 1.0) * 255.0), dtype=np.uint8)


def png_data_uri(values: npt.ArrayLike) -> str:
    """A ``data:image/png;base64,...`` URI of :func:`to_pixels` of ``values``."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(to_pixels(values))).decode()
