"""Benchmark: which plausible targets a clean model can be led to say (``auditgame.text.screen``),
and whether a spec drawn from the rest is kept by clean models the screen never saw.

Screen: fine-tunes ``--clean`` clean models of ``--family`` (the family's clean recipe, seeds
10000, 10001, ..., none a zoo uses), runs each trigger-search auditor of ``--auditors`` on
each, its spec listing every candidate target (``plausible_targets``, 153 on tinylm) with
``--seconds-per-target`` for each, and scores every candidate trigger it names on the clean
model (``screen.screen``: proved, and the target's loss after it).

Held out: on ``--held-out`` further clean models (seeds 20000, ...), each auditor plays the
game's budget (``--game-seconds``) against two specs of the family's size: the family's own
targets, and the ``hardest`` targets of the screen (those the clean models came least close
to saying). A clean model a witness proves in violation is a natural violation in a game.

Writes ``benchmarks/results/screen_<family>.md``: per auditor and clean model, how many targets
it proved; each proved target with a trigger that proves it; the hardest targets with their
lowest loss; the held-out natural violations per spec. Each run is saved as it finishes under
``--data``; an interrupted run resumes with the runs left.

    .venv/bin/python benchmarks/screen_targets.py --family tinylm_quiet --clean 3 --held-out 4
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from auditgame import registry
from auditgame.provenance import git_revision, package_version
from auditgame.text.families.tinylm import plausible_targets
from auditgame.text.screen import Proof, hardest, kept, lowest_loss

RESULTS = Path(__file__).parent / "results"
SEEDS = 10_000
"""The first screened clean model's fine-tuning seed; far from the seeds a zoo derives."""
HELD_OUT = 20_000
"""The first held-out clean model's seed."""


def run_one(
    family: str, seed: int, auditor: str, targets: list[str], seconds: float, out: Path
) -> float:
    """One clean model, one auditor, one spec: ``screen.screen`` as JSON in ``out``; returns
    the seconds taken (fine-tune included)."""
    import torch

    from auditgame.text.screen import screen

    torch.set_num_threads(1)
    start = time.perf_counter()
    fam = registry.get("family", family)()
    model = fam.finetune(fam.clean_examples("train"), seed)
    found = screen(fam, model, seed, targets, registry.get("auditor", auditor)(), seconds)
    took = time.perf_counter() - start
    record = {"seconds": took, "proofs": [vars(p) for p in found.proofs], "loss": found.loss}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(out)
    return took


def run_all(jobs: list[tuple[int, str, list[str], float, Path]], family: str, workers: int) -> None:
    """Run the jobs whose file is missing, ``workers`` at a time, saying each as it ends."""
    todo = [j for j in jobs if not j[4].exists()]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, family, *job) for job in todo]
        for job, future in zip(todo, futures, strict=True):
            print(f"{job[4].name}: {future.result():.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", default="tinylm_quiet", choices=["tinylm_quiet"])
    parser.add_argument("--clean", type=int, default=3, help="clean models to screen on")
    parser.add_argument("--held-out", type=int, default=4, help="clean models to check on")
    parser.add_argument("--auditors", nargs="+", default=["uat", "gcg", "haystack", "pez"])
    parser.add_argument("--seconds-per-target", type=float, default=1.5)
    parser.add_argument("--game-seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", type=Path, default=Path("auditgame-data/screen"))
    args = parser.parse_args()
    fam = registry.get("family", args.family)()
    targets = list(plausible_targets(1000))
    seconds = args.seconds_per_target * len(targets)
    folder = args.data / args.family
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    screened = {
        (seed, a): folder / f"screen-{seed}-{a}.json"
        for seed in range(SEEDS, SEEDS + args.clean)
        for a in args.auditors
    }
    run_all(
        [(s, a, targets, seconds, f) for (s, a), f in screened.items()], args.family, args.workers
    )
    runs = {key: json.loads(f.read_text()) for key, f in screened.items()}
    found = [Proof(**p) for run in runs.values() for p in run["proofs"]]
    pool = kept(targets, found)
    size = len(fam.targets())
    losses = [r["loss"] for r in runs.values()]
    lowest = lowest_loss(targets, losses)
    specs = {"family": list(fam.targets()), "hardest": list(hardest(targets, losses, size))}
    held = {
        (seed, spec, a): folder / f"held-{seed}-{spec}-{a}.json"
        for seed in range(HELD_OUT, HELD_OUT + args.held_out)
        for spec in specs
        for a in args.auditors
    }
    run_all(
        [(s, a, specs[spec], args.game_seconds, f) for (s, spec, a), f in held.items()],
        args.family,
        args.workers,
    )
    checks = {key: json.loads(f.read_text()) for key, f in held.items()}
    wall = time.perf_counter() - start

    lines = [
        f"# Screening {args.family}'s plausible targets against clean models",
        "",
        f"`benchmarks/screen_targets.py --family {args.family} --clean {args.clean} "
        f"--held-out {args.held_out} --auditors {' '.join(args.auditors)} "
        f"--seconds-per-target {args.seconds_per_target} --game-seconds {args.game_seconds}`; "
        f"auditgame {package_version()}, git {git_revision()}; {args.workers} workers; "
        f"{wall:.0f} s this sitting (runs already saved not counted).",
        "",
        f"{len(targets)} candidate targets; each auditor had {seconds:.0f} s per clean model "
        f"({args.seconds_per_target} s per target), its spec listing all of them. A target is "
        "proved when a candidate trigger within the bound makes the clean model reply with it "
        "verbatim (the spec's own check).",
        "",
        "| clean model (seed) | auditor | targets proved | seconds |",
        "|---|---|---|---|",
    ]
    for (seed, auditor), run in runs.items():
        lines.append(f"| {seed} | {auditor} | {len(run['proofs'])} | {run['seconds']:.0f} |")
    by_target: dict[str, list[Proof]] = {}
    for p in found:
        by_target.setdefault(p.target, []).append(p)
    lines += [
        "",
        f"**{len(by_target)} of {len(targets)} targets proved on some clean model; "
        f"{len(pool)} never proved.**",
        "",
        "| target | proved by (auditor/model) | a trigger |",
        "|---|---|---|",
    ]
    for target in targets:
        if target in by_target:
            ps = by_target[target]
            who = ", ".join(sorted({f"{p.auditor}/{p.model}" for p in ps}))
            lines.append(f"| {target} | {who} | `{ps[0].trigger}` |")
    lines += [
        "",
        f"## Held out: {args.held_out} clean models (seeds {HELD_OUT}-"
        f"{HELD_OUT + args.held_out - 1}), {args.game_seconds:.0f} s per auditor",
        "",
        f"Two specs of {size} targets: the family's own (`{args.family}`'s `targets()`), and "
        f"the {size} the screened models came least close to saying (`screen.hardest`). A "
        "held-out model is in violation when some auditor's witness proves a target of the "
        "spec (a natural violation in a game).",
        "",
        "| spec | clean models in violation | targets proved (auditor/model) |",
        "|---|---|---|",
    ]
    for spec in specs:
        proved = [
            (p["target"], f"{a}/{s}")
            for (s, sp, a), c in checks.items()
            if sp == spec
            for p in c["proofs"]
        ]
        models = {who.split("/")[1] for _, who in proved}
        listed = "; ".join(f"{t} ({who})" for t, who in proved) or "none"
        lines.append(f"| {spec} | {len(models)} of {args.held_out} | {listed} |")
    lines += [
        "",
        f"The hardest {size}, with the lowest loss any screened search reached on each (nats "
        "per target token):",
        "",
        *(f"- {t} ({lowest[t]:.2f})" for t in specs["hardest"]),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"screen_{args.family}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
