"""Benchmark: organisms audited per minute, local process pool vs Ray, at 1 and 2 CPUs.

Every configuration plays the same game (one digits zoo, the same auditors, budget and seed)
into a fresh store, so each run audits every pair; configurations take turns within each
repeat, so load from other users of the machine falls on all of them alike, and the table
quotes medians over the repeats. Ray's cluster start is timed apart from the game and shown
in its own column: it is paid once per cluster, not per game. Local's process pool is started
inside the game (with one worker the local executor runs in this process and starts none).

Neural Cleanse runs uncalibrated: its calibration is a one-off fit in the referee, cached
before any task is sent, and leaves the per-organism search, which is what scales, unchanged.

    .venv/bin/python benchmarks/scaling.py --n 16 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from auditgame.game import AuditorSpec, Game, play
from auditgame.provenance import git_revision, package_version
from auditgame.run.base import Executor
from auditgame.run.local import LocalExecutor
from auditgame.run.ray import RUNTIME_ENV, RayExecutor, import_ray
from auditgame.run.sealed import auditor_info, sealed_fit
from auditgame.store import Store
from auditgame.zoo import Zoo, build_zoo, open_key

AUDITORS = [
    AuditorSpec(name="neural_cleanse", params={"calibrate": False}),
    AuditorSpec(name="weight_stats"),
]
CONFIGS = [("local", 1), ("local", 2), ("ray", 1), ("ray", 2)]
DEFAULT_N = 16
RESULTS = Path(__file__).parent / "results"


@dataclass
class Timing:
    startup: float  # seconds to start the Ray cluster (0 for local)
    play: float  # seconds for the whole game, fitting excluded (fits are cached first)


def run_once(kind: str, cpus: int, game: Game, key: bytes, work: Path, fits: Path) -> Timing:
    ray = import_ray() if kind == "ray" else None
    start = time.perf_counter()
    if ray is not None:
        ray.init(
            num_cpus=cpus, runtime_env=RUNTIME_ENV, include_dashboard=False, logging_level="WARNING"
        )
    ready = time.perf_counter()
    executor: Executor = RayExecutor() if ray is not None else LocalExecutor(cpus)
    try:
        with Store(Path(tempfile.mkdtemp(dir=work)) / "r.sqlite") as store:
            play(game, key, store, executor, fits_dir=fits)
            pairs = len(store.rows(game.id))
    finally:
        if ray is not None:
            ray.shutdown()
    done = time.perf_counter()
    expected = len(Zoo(game.zoo).ids) * len(game.auditors)
    if pairs != expected:
        raise RuntimeError(f"{kind} x{cpus} stored {pairs} pairs, expected {expected}")
    return Timing(ready - start, done - ready)


def prefit(game: Game, fits: Path) -> None:
    """Fit auditors that have a fitting stage now, so the timed runs only load the fit."""
    family = Zoo(game.zoo).family
    for spec in game.auditors:
        info = auditor_info(spec.name, spec.params, family)
        if info.fitted and info.supports:
            sealed_fit(info, family, fits)


def describe(spec: AuditorSpec) -> str:
    params = ", ".join(f"{k}={v}" for k, v in spec.params.items())
    return f"{spec.name} ({params})" if params else spec.name


def machine() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({model}), "
        f"Python {platform.python_version()}; load average at start {load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="organisms in the zoo")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("auditgame-data/bench"))
    args = parser.parse_args()

    import ray
    import torch

    host = machine()
    root = args.data / f"digits-n{args.n}-s{args.seed}"
    zoo = (
        Zoo(root) if (root / "zoo.json").is_file() else build_zoo("digits", args.n, args.seed, root)
    )
    key = open_key(zoo, None)
    game = Game(zoo=root, auditors=AUDITORS)
    fits = args.data / "fits"
    with tempfile.TemporaryDirectory() as tmp:
        prefit(game, fits)
        timings: dict[tuple[str, int], list[Timing]] = {c: [] for c in CONFIGS}
        for repeat in range(args.repeats):
            for kind, cpus in CONFIGS:
                timing = run_once(kind, cpus, game, key, Path(tmp), fits)
                timings[kind, cpus].append(timing)
                print(
                    f"repeat {repeat + 1}: {kind} x{cpus}: play {timing.play:.1f} s"
                    + (f", cluster start {timing.startup:.1f} s" if kind == "ray" else ""),
                    flush=True,
                )

    n = len(zoo.ids)
    rate = {c: n / (statistics.median(t.play for t in ts) / 60) for c, ts in timings.items()}
    lines = [
        "# Scaling: organisms audited per minute, local vs Ray",
        "",
        f"`benchmarks/scaling.py --n {args.n} --seed {args.seed} --repeats {args.repeats}`; "
        f"auditgame {package_version()}, git {git_revision()}, torch {torch.__version__}, "
        f"ray {ray.__version__}.",
        "",
        f"Machine: {host}.",
        "",
        f"Game: a digits zoo of {n} organisms, auditors "
        f"{', '.join(describe(a) for a in AUDITORS)}; each "
        "configuration plays it into a fresh store, medians over the repeats. One worker or "
        "Ray CPU runs one torch thread.",
        "",
        "| executor | CPUs | play s (median) | runs (s) | organisms/min | vs local, same CPUs "
        "| speed-up vs 1 CPU | cluster start s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, cpus in CONFIGS:
        ts = timings[kind, cpus]
        plays = ", ".join(f"{t.play:.1f}" for t in ts)
        startup = f"{statistics.median(t.startup for t in ts):.1f}" if kind == "ray" else "–"
        lines.append(
            f"| {kind} | {cpus} | {statistics.median(t.play for t in ts):.1f} | {plays} | "
            f"{rate[kind, cpus]:.1f} | {rate[kind, cpus] / rate['local', cpus]:.2f} | "
            f"{rate[kind, cpus] / rate[kind, 1]:.2f} | {startup} |"
        )
    lines += [
        "",
        "\"vs local\" is Ray's throughput over local's at the same parallelism (below 1: Ray's "
        "overhead). Throughput counts the game only; add the cluster start once per cluster.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "scaling.md" if args.n == DEFAULT_N else f"scaling_n{args.n}.md"
    out = RESULTS / name
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
