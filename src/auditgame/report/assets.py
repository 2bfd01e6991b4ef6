"""The report page's style sheet and its one small script, inlined into ``report.html``.

The script only enhances the page: it sorts tables when a column header is clicked (numbers
by value from ``data-v``, missing values last, with ``aria-sort`` on the sorted header),
filters the per-organism drill-down, and opens an organism's ``<details>`` when a link leads
to it. Without script the page still shows everything; the filter controls stay hidden. The
page's Content-Security-Policy allows exactly this script (by hash) and nothing else.
"""

from __future__ import annotations

import base64
import hashlib

CSS = """
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0;
        --soft: #f6f8fa; --accent: #0969da; --right: #1a7f37; --right-bg: #dafbe1;
        --wrong: #cf222e; --wrong-bg: #ffebe9; --err: #6e7781; --err-bg: #eaeef2; }
* { box-sizing: border-box; }
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0 auto; max-width: 1280px; padding: 1.5em 1.5em 4em; }
header h1 { margin: 0 0 .2em; font-size: 1.7em; }
.meta { color: var(--muted); margin: 0 0 1em; }
h2 { font-size: 1.35em; margin: 2.2em 0 .4em; padding-bottom: .25em;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 1.1em; margin: 1.8em 0 .4em; }
h4 { font-size: 1em; margin: .4em 0; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
nav.jump { display: flex; flex-wrap: wrap; gap: .3em .5em; margin: .6em 0 1em; }
nav.jump a { background: var(--soft); border: 1px solid var(--line); border-radius: 999px;
             padding: .1em .75em; font-size: 13px; }
.summary { font-size: 15px; }
.note { color: var(--muted); font-size: 13px; max-width: 70em; margin: .2em 0 .6em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; margin: .4em 0 1em; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 9px; text-align: left;
         vertical-align: top; }
thead th { background: var(--soft); border-bottom: 2px solid var(--line); white-space: nowrap;
           position: sticky; top: 0; }
tbody tr:hover { background: #f0f6ff; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.leaderboard td { white-space: nowrap; }
table.leaderboard th, table.leaderboard td { padding: 4px 7px; }
table.leaderboard thead th { white-space: normal; vertical-align: bottom; min-width: 5em; }
tr.pool td { font-weight: 600; background: #fbfbfc; }
th button { font: inherit; font-weight: 600; color: inherit; background: none; border: 0;
            padding: 0; cursor: pointer; }
th button::after { content: " ↕"; color: #aab2bb; font-weight: 400; }
th[aria-sort="ascending"] button::after { content: " ▲"; color: var(--accent); }
th[aria-sort="descending"] button::after { content: " ▼"; color: var(--accent); }
th button:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }
table.errors td:last-child, td.error { font-family: ui-monospace, monospace; font-size: 12px;
                                       word-break: break-word; color: var(--wrong); }
td.evidence { font-size: 12px; color: var(--muted); min-width: 18em; max-width: 40em; }
table.provenance td:first-child { font-weight: 600; white-space: nowrap; }
.rocs { display: flex; flex-wrap: wrap; gap: 1em 2em; align-items: flex-start; }
.rocs figure { margin: 0; }
svg.roc { max-width: 100%; height: auto; display: block; }
details.more > summary, details.organism > summary { cursor: pointer; }
details.more > summary { color: var(--accent); margin: .5em 0; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr));
           gap: .8em; }
figure.trigger { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: .5em .7em;
                 background: #fff; box-shadow: 0 1px 2px rgba(31, 35, 40, .06); }
figure.trigger figcaption { font-size: 13px; margin-bottom: .3em; }
figure.trigger figcaption a { font-weight: 600; font-family: ui-monospace, monospace; }
figure.trigger figcaption span { color: var(--muted); display: block; }
figure.trigger table { margin: 0; font-size: 12px; }
figure.trigger th, figure.trigger td { border: 0; padding: 2px 4px; vertical-align: middle; }
figure.trigger thead th { background: none; font-weight: 400; color: var(--muted);
                          font-size: 11px; position: static; }
figure.trigger tbody tr:hover { background: none; }
figure.trigger tr.true td { border-bottom: 1px dashed var(--line); padding-bottom: 5px; }
figure.trigger img { width: 56px; height: 56px; image-rendering: pixelated; display: block;
                     border: 1px solid #8c959f; background: #000; }
figure.trigger .empty { width: 116px; min-height: 56px; border: 1px dashed #afb8c1;
                        border-radius: 4px; font-size: 11px; color: var(--muted); padding: 3px;
                        display: flex; align-items: center; justify-content: center;
                        text-align: center; }
figure.trigger td.who b { display: block; word-break: break-word; }
figure.trigger td.who { color: var(--muted); }
.controls { display: flex; flex-wrap: wrap; gap: .6em 1.2em; align-items: center;
            margin: .4em 0 .8em; }
.controls[hidden] { display: none; }
.controls input[type=search] { width: 28em; max-width: 100%; padding: .35em .6em; font: inherit;
                               border: 1px solid var(--line); border-radius: 6px; }
.count { color: var(--muted); font-size: 13px; }
details.organism { border: 1px solid var(--line); border-radius: 6px; margin: .3em 0;
                   background: #fff; }
details.organism[open] { box-shadow: 0 1px 3px rgba(31, 35, 40, .1); }
details.organism > summary { padding: .35em .7em; display: flex; flex-wrap: wrap;
                             gap: .3em .6em; align-items: center; }
details.organism > summary::marker { color: var(--muted); }
details.organism > .scroll { padding: 0 .7em .3em; }
details.organism:target { outline: 2px solid var(--accent); }
.oid { font-family: ui-monospace, monospace; font-weight: 600; }
.tag { font-size: 12px; border-radius: 4px; padding: 0 .45em; border: 1px solid var(--line); }
.tag.backdoored { background: #fff8c5; border-color: #d4a72c; }
.tag.clean { background: var(--soft); }
.tag.family { color: var(--muted); }
.chips { display: flex; flex-wrap: wrap; gap: .3em; margin-left: auto; }
.chip, .verdict { font-size: 12px; border-radius: 999px; padding: 0 .55em; white-space: nowrap; }
.right { background: var(--right-bg); color: var(--right); }
.wrong { background: var(--wrong-bg); color: var(--wrong); }
.error { background: var(--err-bg); color: var(--err); }
td.error { background: none; }
pre { background: var(--soft); padding: .7em; overflow-x: auto; font-size: 12px;
      border-radius: 6px; }
"""

SCRIPT = """
(() => {
  "use strict";
  const sortKey = (row, i) => {
    const cell = row.cells[i];
    if (!cell) return null;
    if (cell.hasAttribute("data-v")) {
      const v = cell.getAttribute("data-v");
      return v === "" ? null : Number(v);
    }
    return cell.textContent.trim();
  };
  const sortBy = (table, th) => {
    const i = th.cellIndex;
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    for (const other of th.parentElement.cells) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort((r, s) => {
      const a = sortKey(r, i), b = sortKey(s, i);
      if (a === null || b === null) return (a === null) - (b === null);
      const order = typeof a === "number" && typeof b === "number"
        ? a - b : String(a).localeCompare(String(b), undefined, {numeric: true});
      return ascending ? order : -order;
    });
    body.append(...rows);
  };
  for (const table of document.querySelectorAll("table.sortable")) {
    for (const th of table.tHead.rows[0].cells) {
      const button = th.querySelector("button");
      if (button) button.addEventListener("click", () => sortBy(table, th));
    }
  }

  const applyFilter = (box) => {
    const terms = box.querySelector("input[type=search]").value.toLowerCase()
      .split(/\\s+/).filter(Boolean);
    const onlyWrong = box.querySelector("input[type=checkbox]").checked;
    const all = box.querySelectorAll("details.organism");
    let shown = 0;
    for (const d of all) {
      const text = d.getAttribute("data-text");
      const show = terms.every((t) => text.includes(t))
        && (!onlyWrong || d.hasAttribute("data-misjudged"));
      d.hidden = !show;
      shown += show ? 1 : 0;
    }
    box.querySelector(".count").textContent = `${shown} of ${all.length} shown`;
  };
  for (const box of document.querySelectorAll("div.organisms")) {
    for (const input of box.querySelectorAll(".controls input")) {
      input.addEventListener("input", () => applyFilter(box));
    }
    box.querySelector(".controls").hidden = false;
  }
  for (const link of document.querySelectorAll("a[data-filter]")) {
    link.addEventListener("click", () => {
      const box = document.getElementById(link.getAttribute("href").slice(1));
      box.querySelector("input[type=search]").value = link.getAttribute("data-filter");
      box.querySelector("input[type=checkbox]").checked = false;
      applyFilter(box);
    });
  }

  const reveal = (id) => {
    const target = id && document.getElementById(id);
    if (target && target.tagName === "DETAILS") {
      target.hidden = false;
      target.open = true;
    }
  };
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[href^='#']");
    if (link) reveal(link.getAttribute("href").slice(1));
  });
  window.addEventListener("hashchange", () => reveal(location.hash.slice(1)));
  reveal(location.hash.slice(1));
})();
"""


def _hash(source: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()


# Nothing may be fetched; images are data URIs; only the script above may run.
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src '{_hash(SCRIPT)}'; base-uri 'none'; form-action 'none'"
)
