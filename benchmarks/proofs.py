"""Proof strategies on max-of-K, shaped like Gross et al.'s table: FLOPs, seconds and the
accuracy bound of each strategy, against the true accuracy, over clean and backdoored seeds.

Each organism is trained here (clean: the family's recipe; backdoored: ``token_trigger`` and
``rare_pattern`` in turn) and audited blind by ``exhaustive`` (the exact accuracy, a proof),
``bounds`` (a sound lower bound) and ``token_search`` (no bound; its FLOPs are what it spent
searching). Writes ``proofs.csv`` (one row per organism and strategy) and ``proofs.md`` (the
summary, with what was and was not run)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/proofs.py --clean 5 --backdoored 5 --workers 2
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np
import torch

from auditgame import metrics, registry
from auditgame.access import Access, Budget
from auditgame.attacks.base import PlantingFailed, train_clean
from auditgame.card import Card
from auditgame.maxofk.family import MaxOfK
from auditgame.subject import Subject

STRATEGIES = ("exhaustive", "bounds", "token_search")
ATTACKS = ("token_trigger", "rare_pattern")


def one_organism(role: str, seed: int, vocab: int, k: int) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    fam = MaxOfK(vocab=vocab, k=k)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    try:
        planted = (
            train_clean(fam, rng, seed)
            if role == "clean"
            else registry.get("attack", role)().plant(fam, rng, seed)
        )
    except PlantingFailed as exc:
        return [{"role": role, "seed": seed, "strategy": "planting", "error": str(exc)}]
    train_seconds = time.perf_counter() - start
    card = Card(
        family="maxofk",
        architecture=fam.architecture(),
        input_shape=list(fam.input_shape),
        classes=list(fam.classes),
        spec=fam.spec(),
        training_data=fam.training_data(),
        weights_sha256="0" * 64,
        secret_commitment=planted.secret.commitment(),
        auditgame_version="benchmark",
    )
    secret = planted.secret
    findings = {}
    for name in STRATEGIES:
        subject = Subject(model=planted.model, card=card, access=Access.WEIGHTS)
        findings[name] = registry.get("auditor", name)().audit(
            subject, Budget(seconds=600), seed=seed
        )
    exact = findings["exhaustive"].certificate
    assert exact is not None
    rows = []
    for name, finding in findings.items():
        cert = finding.certificate or {}
        flops = cert.get("flops", finding.evidence.get("flops"))
        precision = recall = None
        if secret.trigger is not None:
            precision, recall = metrics.pattern_precision_recall(finding.trigger, secret.trigger)
        rows.append(
            {
                "role": role,
                "seed": seed,
                "strategy": name,
                "train_seconds": round(train_seconds, 2),
                "attempts": secret.attempts,
                "flops": flops,
                "seconds": round(finding.cost.seconds, 3),
                "bound": cert.get("bound"),
                "true_accuracy": exact["bound"],
                "gap": metrics.certificate_gap(cert["bound"], exact["bound"]) if cert else None,
                "p_violation": finding.p_violation,
                "target_correct": None
                if secret.target is None
                else finding.target == secret.target,
                "precision": precision,
                "recall": recall,
                "error": finding.error,
            }
        )
    return rows


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return fmean(float(v) for v in values) if values else None


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def summarise(rows: list[dict[str, Any]], args: argparse.Namespace, wall: float) -> str:
    done = [r for r in rows if r["strategy"] != "planting"]
    dropped = [r for r in rows if r["strategy"] == "planting"]
    lines = [
        "# Proofs on max-of-K: FLOPs, seconds and bounds",
        "",
        f"Measured by `benchmarks/proofs.py --clean {args.clean} --backdoored {args.backdoored} "
        f"--vocab {args.vocab} --k {args.k} --workers {args.workers}` on {platform.node()} "
        f"(2 cores shared with other work; one torch thread per process), {wall / 60:.1f} min "
        "wall clock. Organisms are trained here: clean with the family's recipe, backdoored with "
        f"{' and '.join(ATTACKS)} in turn. `exhaustive` is exact, so its bound is the true "
        "accuracy; `token_search` proves nothing (no bound) and its FLOPs are what it spent "
        "searching.",
        "",
        "| strategy | population | n | FLOPs (mean) | seconds (mean) | bound (mean) | "
        "true accuracy (mean) | gap (mean) | AUROC | pattern recovered | precision | recall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in STRATEGIES:
        mine = [r for r in done if r["strategy"] == name]
        labels = [int(r["role"] != "clean") for r in mine]
        auroc = (
            metrics.auroc(labels, [r["p_violation"] for r in mine])
            if 0 < sum(labels) < len(labels)
            else None
        )
        for population in ("clean", "backdoored", *ATTACKS):
            if population == "backdoored":
                group = [r for r in mine if r["role"] != "clean"]
            else:
                group = [r for r in mine if r["role"] == population]
            if not group:
                continue
            bad = group[0]["role"] != "clean"
            recovered = (
                f"{sum(r['precision'] == 1.0 and r['recall'] == 1.0 for r in group)}/{len(group)}"
                if bad
                else "–"
            )
            flops, seconds = _mean(group, "flops"), _mean(group, "seconds")
            bound, truth, gap = (_mean(group, key) for key in ("bound", "true_accuracy", "gap"))
            lines.append(
                f"| {name} | {population} | {len(group)} | {_fmt(flops, '.3g')} "
                f"| {_fmt(seconds, '.2f')} | {_fmt(bound, '.4f')} "
                f"| {_fmt(truth, '.4f')} | {_fmt(gap, '.4f')} "
                f"| {_fmt(auroc, '.2f') if population == 'clean' else ''} | {recovered} "
                f"| {_fmt(_mean(group, 'precision'), '.2f') if bad else '–'} "
                f"| {_fmt(_mean(group, 'recall'), '.2f') if bad else '–'} |"
            )
    exh = _mean([r for r in done if r["strategy"] == "exhaustive"], "flops")
    search = _mean([r for r in done if r["strategy"] == "token_search"], "flops")
    bnd = _mean([r for r in done if r["strategy"] == "bounds"], "flops")
    lines += [
        "",
        "AUROC (clean vs all backdoored, from `p_violation`) is on each strategy's `clean` row. "
        "A pattern counts as recovered when the reported pattern equals the planted one "
        "(`metrics.pattern_precision_recall` = (1, 1)).",
        "",
        f"Compute ratios (mean FLOPs): exhaustive / token_search = "
        f"{_fmt(exh / search if exh and search else None, '.3g')}, exhaustive / bounds = "
        f"{_fmt(exh / bnd if exh and bnd else None, '.3g')}.",
        "",
        f"Plantings dropped (below the success or accuracy floor after all attempts): "
        f"{len(dropped)}"
        + "".join(f"\n- {r['role']} seed {r['seed']}: {r['error']}" for r in dropped),
        "",
        'Not run: K = 5 (the issue\'s "if time allows"). FLOPs are counted analytically '
        "(formulas in each auditor's docstring), not measured by a profiler.",
        "",
        "Per-organism numbers: `proofs.csv` beside this file.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=int, default=20)
    parser.add_argument("--backdoored", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    jobs = [("clean", seed) for seed in range(args.clean)] + [
        (ATTACKS[i % len(ATTACKS)], 1000 + i) for i in range(args.backdoored)
    ]
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(one_organism, role, seed, args.vocab, args.k) for role, seed in jobs]
        for future in futures:
            rows.extend(future.result())
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    fields = sorted({key for row in rows for key in row})
    with (args.out / "proofs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "proofs.md").write_text(summarise(rows, args, time.perf_counter() - start))


if __name__ == "__main__":
    main()
