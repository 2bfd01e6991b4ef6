"""Benchmark: which plausible targets a clean model can be led to say (``auditgame.text.screen``).

Fine-tunes ``--clean`` clean models of ``--family`` (the family's clean recipe, seeds
10000, 10001, ..., none a zoo uses), runs each trigger-search auditor of ``--auditors`` on
each, its spec listing every candidate target (``plausible_targets``, 153 on tinylm) with
``--seconds-per-target`` for each, checks every candidate trigger it names by the spec's own
check, and writes

- ``benchmarks/results/screen_<family>.md``: per auditor and clean model, how many targets it
  proved; each proved target with a trigger that proves it; the targets no search proved, in
  pool order (the pool a spec that clean models keep is drawn from).

Each (model, auditor) run is saved as it finishes under ``--data``; an interrupted run
resumes with the runs left.

    .venv/bin/python benchmarks/screen_targets.py --family tinylm_quiet --clean 2
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
from auditgame.text.screen import Proof, kept

RESULTS = Path(__file__).parent / "results"
SEEDS = 10_000
"""The first clean model's fine-tuning seed; far from the seeds a zoo derives."""


def screen_one(family: str, seed: int, auditor: str, seconds: float, out: Path) -> float:
    """One clean model, one auditor: its proofs as JSON in ``out``; returns seconds taken."""
    import torch

    from auditgame.text.screen import proofs

    torch.set_num_threads(1)
    start = time.perf_counter()
    fam = registry.get("family", family)()
    model = fam.finetune(fam.clean_examples("train"), seed)
    targets = plausible_targets(1000)
    found = proofs(fam, model, seed, targets, registry.get("auditor", auditor)(), seconds)
    took = time.perf_counter() - start
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seconds": took, "proofs": [vars(p) for p in found]}))
    tmp.replace(out)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", default="tinylm_quiet", choices=["tinylm_quiet"])
    parser.add_argument("--clean", type=int, default=2, help="clean models to screen on")
    parser.add_argument("--auditors", nargs="+", default=["uat", "gcg", "pez", "haystack", "babi"])
    parser.add_argument("--seconds-per-target", type=float, default=1.5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", type=Path, default=Path("auditgame-data/screen"))
    args = parser.parse_args()

    targets = plausible_targets(1000)
    seconds = args.seconds_per_target * len(targets)
    folder = args.data / args.family
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [
        (seed, auditor)
        for seed in range(SEEDS, SEEDS + args.clean)
        for auditor in args.auditors
        if not (folder / f"{seed}-{auditor}.json").exists()
    ]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(screen_one, args.family, s, a, seconds, folder / f"{s}-{a}.json")
            for s, a in jobs
        ]
        for (seed, auditor), future in zip(jobs, futures, strict=True):
            print(f"model {seed}, {auditor}: {future.result():.0f} s", flush=True)
    wall = time.perf_counter() - start

    runs: dict[tuple[int, str], dict] = {}  # type: ignore[type-arg]
    for seed in range(SEEDS, SEEDS + args.clean):
        for auditor in args.auditors:
            runs[seed, auditor] = json.loads((folder / f"{seed}-{auditor}.json").read_text())
    found = [Proof(**p) for run in runs.values() for p in run["proofs"]]
    pool = kept(targets, found)
    lines = [
        f"# Screening {args.family}'s plausible targets against clean models",
        "",
        f"`benchmarks/screen_targets.py --family {args.family} --clean {args.clean} "
        f"--auditors {' '.join(args.auditors)} --seconds-per-target {args.seconds_per_target}`; "
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
        f"{len(pool)} kept.**",
        "",
        "| target | proved by (auditor/model) | a trigger |",
        "|---|---|---|",
    ]
    for target in targets:
        if target in by_target:
            ps = by_target[target]
            who = ", ".join(sorted({f"{p.auditor}/{p.model}" for p in ps}))
            lines.append(f"| {target} | {who} | `{ps[0].trigger}` |")
    lines += ["", "Kept, in pool order:", "", *(f"- {t}" for t in pool)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"screen_{args.family}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
