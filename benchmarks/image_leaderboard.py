"""Benchmark: the image leaderboard — every image auditor against every image attack.

For each family (``digits``, ``mnist``) builds (or reuses) a zoo of ``--n`` organisms, half
clean and the other half shared among the attacks, plays every auditor that examines the
family (static and dynamic, fitted ones fitted first on their own shadow zoos), and writes

- ``benchmarks/results/image_leaderboard_<family>_n<N>_s<S>.md``: what each attack planted
  (median held-out ASR and clean accuracy, with the clean organisms' for comparison); the
  best static AUROC per attack; one row per auditor and attack with AUROC [95% bootstrap
  CI], TPR at 5% FPR, false-positive rate at the default threshold, cross-entropy, target
  accuracy, witness ASR, mask IoU and seconds per organism; then each auditor's clean
  false-positive rate with its Wilson interval;
- ``benchmarks/results/image_leaderboard_<family>_n<N>_s<S>/report.html``: the HTML report.

Interrupted runs resume: the zoo build and the game both pick up where they stopped.

    .venv/bin/python benchmarks/image_leaderboard.py --family digits mnist --n 100 --seed 11
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from auditgame import metrics, registry
from auditgame.access import Budget
from auditgame.game import AuditorSpec, Game, play
from auditgame.leaderboard import LeaderRow, leaderboard
from auditgame.provenance import git_revision, package_version
from auditgame.report import write_report
from auditgame.run.local import LocalExecutor
from auditgame.secret import Secret
from auditgame.store import Store
from auditgame.zoo import build_zoo, open_key

ATTACKS = ("badnets", "blend", "warp", "all_to_all", "weight_surgery", "adaptive", "badnets_multi")
RESULTS = Path(__file__).parent / "results"
SECONDS = 120.0
"""Each auditor's budget unless ``--seconds`` says otherwise."""


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def image_auditors(family: str) -> list[str]:
    """Every registered auditor that examines ``family``, static ones first."""
    names = [a for a in registry.names("auditor") if registry.get("auditor", a).supports(family)]
    return sorted(names, key=lambda a: (registry.get("auditor", a).is_dynamic(), a))


def table(rows: list[LeaderRow]) -> list[str]:
    lines = [
        "| auditor | dynamic | attack | n (bd/clean) | AUROC [95% CI] | TPR@5%FPR | FPR@0.5 "
        "| CE | target acc | witness ASR | mask IoU | s/org | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = f" [{r.auroc_ci[0]:.2f}, {r.auroc_ci[1]:.2f}]" if r.auroc_ci else ""
        lines.append(
            f"| {r.auditor} | {'yes' if r.dynamic else 'no'} | {r.attack} | "
            f"{r.n} ({r.n_backdoored}/{r.n_clean}) | {fmt(r.auroc)}{ci} | {fmt(r.tpr_at_5fpr, 2)} "
            f"| {fmt(r.fpr_at_threshold, 2)} | {fmt(r.cross_entropy)} | {fmt(r.target_acc, 2)} "
            f"| {fmt(r.witness_asr, 2)} | {fmt(r.recovery.get('mask_iou'), 2)} "
            f"| {r.seconds_per_organism:.2f} "
            f"| {r.errors} |"
        )
    return lines


def planted(secrets: list[Secret]) -> list[str]:
    """What each attack planted: medians over its organisms of the held-out ASR and clean
    accuracy, beside the clean organisms' accuracy."""
    lines = [
        "## What was planted",
        "",
        "| attack | organisms | median ASR | median clean accuracy |",
        "|---|---|---|---|",
    ]
    by_attack: dict[str, list[Secret]] = {}
    for secret in secrets:
        by_attack.setdefault(secret.attack or "clean", []).append(secret)
    for name, group in sorted(by_attack.items()):
        asr = [s.asr for s in group if s.asr is not None]
        accuracy = [s.clean_accuracy for s in group if s.clean_accuracy is not None]
        lines.append(
            f"| {name} | {len(group)} | {fmt(float(np.median(asr)) if asr else None)} "
            f"| {fmt(float(np.median(accuracy)) if accuracy else None, 4)} |"
        )
    return lines


def best_static(rows: list[LeaderRow]) -> list[str]:
    """Per attack, the static auditor with the highest AUROC (the issue's headline)."""
    lines = [
        "## Best static AUROC per attack",
        "",
        "| attack | auditor | AUROC [95% CI] |",
        "|---|---|---|",
    ]
    for attack in sorted({r.attack for r in rows}):
        static = [r for r in rows if r.attack == attack and not r.dynamic and r.auroc is not None]
        if not static:
            continue
        best = max(static, key=lambda r: r.auroc or 0.0)
        ci = f" [{best.auroc_ci[0]:.2f}, {best.auroc_ci[1]:.2f}]" if best.auroc_ci else ""
        lines.append(f"| {attack} | {best.auditor} | {fmt(best.auroc)}{ci} |")
    return lines


def run_family(family: str, args: argparse.Namespace) -> Path:
    # A run on other attacks builds another zoo, and one on fewer auditors writes another
    # table: neither may reuse or overwrite the full run's.
    attacks = "" if list(args.attacks) == list(ATTACKS) else "-" + "-".join(args.attacks)
    # No attack: an all-clean zoo, for the false-positive rates alone.
    attacks = "-clean" if not args.attacks else attacks
    chosen = "" if args.auditors is None else "_" + "-".join(args.auditors)
    tag = f"{family}{attacks}_n{args.n}_s{args.seed}{chosen}"
    root = args.data / f"{family}{attacks}-n{args.n}-s{args.seed}"
    command = f"--family {family} --n {args.n} --seed {args.seed}"
    command += f" --attacks {' '.join(args.attacks)}".rstrip() if attacks else ""
    command += f" --auditors {' '.join(args.auditors)}" if chosen else ""
    command += f" --seconds {args.seconds:g}" if args.seconds != SECONDS else ""
    start = time.perf_counter()
    zoo = build_zoo(family, args.n, args.seed, root, attacks=args.attacks, workers=args.workers)
    build_seconds = time.perf_counter() - start
    auditors = args.auditors or image_auditors(family)
    game = Game(
        zoo=root,
        auditors=[AuditorSpec(name=a) for a in auditors],
        budget=Budget(seconds=args.seconds),
        seed=args.seed,
    )
    start = time.perf_counter()
    with Store(args.data / "results.sqlite") as store:
        game_id = play(game, open_key(zoo, None), store, LocalExecutor(args.workers))
        play_seconds = time.perf_counter() - start
        scores = store.scores(game_id)
        key = open_key(zoo, None)
        secrets = [zoo.secret(oid, key) for oid in zoo.ids]
        if any(secret.backdoored for secret in secrets):
            write_report(store, RESULTS / f"image_leaderboard_{tag}", game_id)

    rows = leaderboard(scores)
    lines = [
        f"# Image leaderboard: {family}",
        "",
        f"`benchmarks/image_leaderboard.py {command}`; "
        f"auditgame {package_version()}, git {git_revision()}; {args.workers} workers on "
        f"{os.cpu_count()} cores. Zoo build {build_seconds:.0f} s (less if resumed), fits and "
        f"play {play_seconds:.0f} s (less if resumed); game {game_id}.",
        "",
        f"{len(zoo.ids)} organisms ({len(zoo.manifest.dropped)} plantings dropped below their "
        "floor); each attack's row compares its backdoored organisms with all clean ones. "
        "Dynamic baselines see run-time traffic (10% triggered; decoy triggers on clean "
        "organisms) and are ranked apart.",
        "",
        *planted(secrets),
        "",
        *best_static(rows),
        "",
        "## Every auditor",
        "",
        *table(rows),
        "",
        "## False positives on clean organisms at the default threshold (p >= 0.5)",
        "",
        "| auditor | flagged / clean | rate | Wilson 95% |",
        "|---|---|---|---|",
    ]
    for auditor in auditors:
        clean = [s for s in scores if s.auditor == auditor and not s.backdoored]
        flagged = sum(s.flagged for s in clean)
        low, high = metrics.binomial_interval(flagged, len(clean))
        rate = flagged / len(clean) if clean else float("nan")
        lines.append(
            f"| {auditor} | {flagged}/{len(clean)} | {rate:.3f} | [{low:.3f}, {high:.3f}] |"
        )
    dropped = [f"{d.role} (index {d.index}): {d.reason}" for d in zoo.manifest.dropped]
    if dropped:
        lines += ["", "Dropped plantings:", "", *(f"- {d}" for d in dropped)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"image_leaderboard_{tag}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", nargs="+", default=["digits", "mnist"])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--attacks", nargs="*", default=list(ATTACKS), help="none: an all-clean zoo (FPR only)"
    )
    parser.add_argument("--auditors", nargs="+", default=None, help="default: every one")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="each auditor's budget")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", type=Path, default=Path("auditgame-data/bench-image"))
    args = parser.parse_args()
    for family in args.family:
        run_family(family, args)


if __name__ == "__main__":
    main()
