"""Benchmark: the digits auditing game at a larger population than the demo.

Builds (or reuses) a zoo, plays every default auditor, and writes
``benchmarks/results/digits_game_nN_sS.md`` with the leaderboard, Neural Cleanse's false-positive
rate on clean organisms with its Wilson interval, and the distribution of its anomaly index on
clean vs backdoored organisms (the calibration question: how close do clean models come to
the paper's threshold of 2 on a 10-class, 8x8 task?).

    .venv/bin/python benchmarks/digits_game.py --n 60 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from auditgame import metrics
from auditgame.access import Budget
from auditgame.game import AuditorSpec, Game, play
from auditgame.leaderboard import leaderboard
from auditgame.provenance import git_revision, package_version
from auditgame.run.local import LocalExecutor
from auditgame.store import Store
from auditgame.zoo import Zoo, build_zoo, open_key

AUDITORS = ["neural_cleanse", "weight_stats", "mahalanobis"]
RESULTS = Path(__file__).parent / "results"


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", type=Path, default=Path("auditgame-data/bench"))
    args = parser.parse_args()

    root = args.data / f"digits-n{args.n}-s{args.seed}"
    start = time.perf_counter()
    zoo = (
        Zoo(root)
        if (root / "zoo.json").is_file()
        else build_zoo("digits", args.n, args.seed, root, workers=args.workers)
    )
    build_seconds = time.perf_counter() - start
    key = open_key(zoo, None)
    game = Game(zoo=root, auditors=[AuditorSpec(name=a) for a in AUDITORS], budget=Budget())
    start = time.perf_counter()
    with Store(args.data / "results.sqlite") as store:
        game_id = play(game, key, store, LocalExecutor(args.workers))
        play_seconds = time.perf_counter() - start
        scores = store.scores(game_id)
        rows = store.rows(game_id)

    lines = [
        "# Digits auditing game",
        "",
        f"`benchmarks/digits_game.py --n {args.n} --seed {args.seed}`; auditgame "
        f"{package_version()}, git {git_revision()}; {args.workers} workers. Zoo build "
        f"{build_seconds:.0f} s (0 if reused), play {play_seconds:.0f} s (0 if resumed).",
        "",
        f"{len(zoo.ids)} organisms, {len(zoo.manifest.dropped)} dropped plantings.",
        "",
        "| auditor | dynamic | attack | n (bd/clean) | AUROC [95% CI] | TPR@5%FPR | FPR@0.5 "
        "| CE | Brier | target acc | witness ASR | mask IoU | s/org |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in leaderboard(scores):
        ci = f" [{r.auroc_ci[0]:.2f}, {r.auroc_ci[1]:.2f}]" if r.auroc_ci else ""
        lines.append(
            f"| {r.auditor} | {'yes' if r.dynamic else 'no'} | {r.attack} | "
            f"{r.n} ({r.n_backdoored}/{r.n_clean}) | {fmt(r.auroc)}{ci} | {fmt(r.tpr_at_5fpr, 2)} "
            f"| {fmt(r.fpr_at_threshold, 2)} | {fmt(r.cross_entropy)} | {fmt(r.brier)} | "
            f"{fmt(r.target_acc, 2)} | {fmt(r.witness_asr, 2)} | "
            f"{fmt(r.recovery.get('mask_iou'), 2)} | "
            f"{r.seconds_per_organism:.1f} |"
        )

    nc = [r for r in rows if r["auditor"] == "neural_cleanse"]
    index = {
        kind: sorted(
            json.loads(r["finding_json"])["evidence"]["flagged_index"]
            for r in nc
            if (r["attack"] == "clean") == (kind == "clean")
        )
        for kind in ("clean", "backdoored")
    }
    clean_flags = sum(1 for r in nc if r["attack"] == "clean" and r["flagged"])
    n_clean = len(index["clean"])
    low, high = metrics.binomial_interval(clean_flags, n_clean)
    lines += [
        "",
        "## Neural Cleanse calibration",
        "",
        f"False positives at the default threshold (anomaly index 2): {clean_flags}/{n_clean} "
        f"clean organisms, Wilson 95% interval [{low:.3f}, {high:.3f}].",
        "",
        "| organisms | anomaly index: min | median | max |",
        "|---|---|---|---|",
    ]
    for kind, values in index.items():
        lines.append(
            f"| {kind} ({len(values)}) | {min(values):.2f} | {float(np.median(values)):.2f} "
            f"| {max(values):.2f} |"
        )
    lines += ["", "Anomaly indices, sorted:", ""]
    lines += [
        f"- {kind}: {', '.join(f'{v:.2f}' for v in values)}" for kind, values in index.items()
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"digits_game_n{args.n}_s{args.seed}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
