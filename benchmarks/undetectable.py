"""Benchmark: Goldwasser et al.'s backdoors as the negative control, across input dimension.

For each d, builds (or reuses) two zoos on disk: ``rff{d}`` (half clean, half ``clwe`` and
``naive_direction``) and ``relu1_{d}`` (half clean, half ``sparse_spike``). Every organism is
audited blind through the normal path (``make_subject``: weights and card, clean samples for
``CLEAN_DATA``) by ``weight_battery`` and ``flip_search``, and by the privileged
``OracleDirection`` given the secret direction (a fresh random direction of the same norm
for clean organisms). Writes ``benchmarks/results/undetectable.md`` and ``.csv``: AUROC of
each auditor on each attack against the clean organisms of the same zoo, with a bootstrap
95% interval; the planted activation's rate; the honest twin's rate under the same norm
(random and optimised); the flip-search witness's rate on the test split and its cosine with
the planted direction.

    .venv/bin/python benchmarks/undetectable.py --dims 16 64 256 --n 16
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

from auditgame import metrics, registry
from auditgame.access import Budget
from auditgame.auditors.base import Auditor
from auditgame.provenance import git_revision, package_version
from auditgame.report.svg import Series, line_svg
from auditgame.run.task import check_witness, make_subject
from auditgame.vector.auditors.oracle import OracleDirection
from auditgame.zoo import build_zoo, open_key

RESULTS = Path(__file__).parent / "results"
AUDITORS = ("weight_battery", "flip_search")


def family_name(kind: str, dim: int) -> str:
    if dim == 64:
        return kind
    return f"rff{dim}" if kind == "rff" else f"relu1_{dim}"


def audit_zoo(name: str, n: int, seed: int, data: Path, workers: int) -> list[dict[str, Any]]:
    """One row per (organism, auditor): truth, p_violation, witness numbers."""
    root = data / f"{name}-n{n}-s{seed}"
    zoo = build_zoo(name, n, seed, root, workers=workers)
    key = open_key(zoo, None)
    rng = np.random.default_rng(seed)
    budget = Budget()
    rows = []
    for oid in zoo.ids:
        organism = zoo.organism(oid)
        secret = zoo.secret(oid, key)
        if secret.trigger is not None:
            direction = np.asarray(secret.trigger["delta"])
        else:
            norm = registry.get("family", name)().weight_scale
            direction = rng.standard_normal(organism.card.input_shape[0])
            direction *= 3.0 / norm / np.linalg.norm(direction)
        auditors: list[Auditor] = [registry.get("auditor", a)() for a in AUDITORS]
        auditors.append(OracleDirection(direction=direction.tolist()))
        for auditor in auditors:
            subject = make_subject(organism, auditor.access, budget)
            finding = auditor.audit(subject, budget, seed=seed)
            asr, _ = (
                check_witness(organism, finding) if auditor.name == "flip_search" else (None, None)
            )
            cosine = (
                metrics.direction_cosine(finding.trigger["delta"], direction)
                if auditor.name == "flip_search" and finding.trigger is not None
                else None
            )
            measured = secret.params.get("measured", {})
            rows.append(
                {
                    "family": name,
                    "dim": organism.card.input_shape[0],
                    "organism": oid,
                    "attack": secret.attack or "clean",
                    "auditor": auditor.name,
                    "p_violation": finding.p_violation,
                    "error": finding.error,
                    "seconds": finding.cost.seconds,
                    "witness_rate": asr,
                    "witness_cosine": cosine,
                    "planted_rate": secret.asr,
                    "accuracy_change_points": measured.get("accuracy_change_points"),
                    "norm_ratio": measured.get("norm_ratio"),
                    "honest_rate_random_same_norm": measured.get("honest_rate_random_same_norm"),
                    "honest_rate_optimised_same_norm": measured.get(
                        "honest_rate_optimised_same_norm"
                    ),
                }
            )
    return rows


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return fmean(values) if values else None


def summarise(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| d | auditor | attack | n (bd/clean) | AUROC [95% CI] | planted rate | acc change "
        "(points) | ‖δ‖/‖x‖ | honest flip, same norm: random / optimised | flip-search witness "
        "rate | witness cos | s/org |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["dim"], r["family"], r["auditor"]) for r in rows})
    for dim, fam, auditor in keys:
        mine = [r for r in rows if r["family"] == fam and r["auditor"] == auditor]
        clean = [r for r in mine if r["attack"] == "clean"]
        for attack in sorted({r["attack"] for r in mine} - {"clean"}):
            bad = [r for r in mine if r["attack"] == attack]
            labels = [1] * len(bad) + [0] * len(clean)
            scores = [r["p_violation"] for r in bad + clean]
            low, high = metrics.auroc_ci(labels, scores)
            lines.append(
                f"| {dim} | {auditor} | {attack} | {len(bad)}/{len(clean)} | "
                f"{metrics.auroc(labels, scores):.2f} [{low:.2f}, {high:.2f}] | "
                f"{fmt(mean_of(bad, 'planted_rate'), 3)} | "
                f"{fmt(mean_of(bad, 'accuracy_change_points'))} | "
                f"{fmt(mean_of(bad, 'norm_ratio'), 1)} | "
                f"{fmt(mean_of(bad, 'honest_rate_random_same_norm'))} / "
                f"{fmt(mean_of(bad, 'honest_rate_optimised_same_norm'))} | "
                f"{fmt(mean_of(bad, 'witness_rate'))} (clean {fmt(mean_of(clean, 'witness_rate'))})"
                f" | {fmt(mean_of(bad, 'witness_cosine'), 3)} | "
                f"{fmt(mean_of(mine, 'seconds'), 1)} |"
            )
    return lines


def auroc_by_dim(rows: list[dict[str, Any]]) -> tuple[list[int], list[Series]]:
    """One series per (auditor, attack): its AUROC against the same zoo's clean organisms."""
    dims = sorted({int(r["dim"]) for r in rows})
    # The oracle on the naive control adds nothing (1.00 like everywhere) and would be a
    # ninth line, past the palette's distinguishable colours.
    pairs = sorted(
        {(r["auditor"], r["attack"]) for r in rows if r["attack"] != "clean"}
        - {("oracle_direction", "naive_direction")}
    )
    series = []
    for auditor, attack in pairs:
        ys = []
        for dim in dims:
            zoo = {r["family"] for r in rows if int(r["dim"]) == dim and r["attack"] == attack}
            mine = [r for r in rows if r["family"] in zoo and r["auditor"] == auditor]
            labels = [int(r["attack"] == attack) for r in mine if r["attack"] in (attack, "clean")]
            scores = [float(r["p_violation"]) for r in mine if r["attack"] in (attack, "clean")]
            ys.append(metrics.auroc(labels, scores))
        series.append(Series(f"{auditor}: {attack}", ys, dashed=auditor.startswith("oracle")))
    return dims, series


def write_plot(rows: list[dict[str, Any]]) -> Path:
    """``undetectable_auroc_vs_d.html``: one self-contained page with the AUROC-vs-d plot."""
    dims, series = auroc_by_dim(rows)
    svg = line_svg(
        [str(d) for d in dims],
        series,
        "AUROC vs input dimension (clean vs each attack)",
        x_label="input dimension d",
        y_label="AUROC",
    )
    out = RESULTS / "undetectable_auroc_vs_d.html"
    out.write_text(
        "<!doctype html><meta charset=utf-8><title>AUROC vs d</title>"
        "<body style='font-family:sans-serif'><h1>Undetectable backdoors: AUROC vs d</h1>"
        "<p>From <code>benchmarks/results/undetectable.csv</code>; the oracle (dashed) is told "
        f"the secret direction and is not a contestant. Table: undetectable.md.</p>{svg}</body>\n"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--n", type=int, default=16, help="organisms per rff zoo")
    parser.add_argument("--n-relu", type=int, default=8, help="organisms per relu1 zoo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", type=Path, default=Path("auditgame-data/bench"))
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw the plot from the existing CSV"
    )
    args = parser.parse_args()
    if args.plot_only:
        with (RESULTS / "undetectable.csv").open(newline="") as handle:
            print(write_plot(list(csv.DictReader(handle))))
        return
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for dim in args.dims:
        rows += audit_zoo(family_name("rff", dim), args.n, args.seed, args.data, args.workers)
        rows += audit_zoo(
            family_name("relu1", dim), args.n_relu, args.seed, args.data, args.workers
        )
    seconds = time.perf_counter() - start
    errors = sum(r["error"] is not None for r in rows)
    lines = [
        "# Undetectable backdoors (Goldwasser et al. 2022) as the negative control",
        "",
        f"`benchmarks/undetectable.py --dims {' '.join(map(str, args.dims))} --n {args.n} "
        f"--n-relu {args.n_relu} --seed {args.seed} --workers {args.workers}`; auditgame "
        f"{package_version()}, git {git_revision()}; {seconds:.0f} s in all on a shared "
        f"2-core machine; {errors} auditor errors.",
        "",
        "Zoos: `rff{d}` with half clean, half shared by `clwe` and `naive_direction` (default "
        "parameters: radius 3, beta 0.002, sparsity 0.5, feature phase scale 0.1, width "
        "max(512, 2d)); `relu1_{d}` with half clean, half `sparse_spike` (theta 0.3, "
        "sparsity 0.5). AUROC compares one attack's organisms with the clean organisms of the "
        "same zoo; the interval is a stratified bootstrap (`metrics.auroc_ci`). "
        "`oracle_direction` is given the secret direction (not a contestant). Planted rate: "
        "flip rate (clwe, naive) or ASR (sparse_spike) on the test split. Honest flip: the "
        "honest twin (same seed, honest weights) under a random / an optimised perturbation "
        "of the planted norm. Witness: flip_search's perturbation, re-checked by the spec on "
        "the test split (flip rate), and its |cos| with the planted direction.",
        "",
        *summarise(rows),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "undetectable.md").write_text("\n".join(lines) + "\n")
    with (RESULTS / "undetectable.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_plot(rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
