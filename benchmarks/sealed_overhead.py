"""Benchmark: what sealing a game costs, per organism, side by side with running unsealed.

Three ways to play the same game (one digits zoo, one auditor, the same budget and seed, two
worker processes, a fresh store each time):

- ``before``: the code before sandboxes (``--before REV``, default 3e4d79b), checked out into
  a temporary worktree: auditors ran inside the pool's worker processes;
- ``unsealed``: this code with ``AUDITGAME_UNSEALED=1``: each auditor in a plain child
  process per worker, JSON over a pipe;
- ``sealed``: this code with bubblewrap: the same child inside a sandbox.

Each game runs in a fresh Python process (as ``auditgame play`` would), modes take turns
within each repeat so load from other users falls on all alike, and the table quotes the
median wall-clock seconds per organism of the whole ``play`` call, and the overhead of
``sealed`` against ``before`` and ``unsealed``. Neural Cleanse runs uncalibrated, as in
``benchmarks/scaling.py``: its calibration is a one-off fit, not a per-organism cost.

    .venv/bin/python benchmarks/sealed_overhead.py --n 24 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
AUDITORS = {"neural_cleanse": {"calibrate": False}, "weight_stats": {}}
MODES = ("before", "unsealed", "sealed")


def play_one(zoo: Path, auditor: str, store: Path, workers: int) -> None:
    """Play one game and print its wall time and the rows' sealed flags as JSON."""
    from auditgame.game import AuditorSpec, Game, play
    from auditgame.run.local import LocalExecutor
    from auditgame.store import Store
    from auditgame.zoo import Zoo, open_key

    opened = Zoo(zoo)
    key = open_key(opened, None)
    game = Game(zoo=zoo, auditors=[AuditorSpec(name=auditor, params=AUDITORS[auditor])])
    start = time.perf_counter()
    with Store(store) as results:
        game_id = play(game, key, results, LocalExecutor(workers))
        seconds = time.perf_counter() - start
        rows = results.rows(game_id)
    audit = statistics.median(r["seconds"] for r in rows)
    sealed = sorted({r.get("sealed", 0) for r in rows})
    errors = sum(r["error"] is not None for r in rows)
    print(json.dumps({"seconds": seconds, "audit": audit, "sealed": sealed, "errors": errors}))


def timed(mode: str, zoo: Path, auditor: str, work: Path, before: Path, workers: int) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("AUDITGAME_UNSEALED", None)
    if mode == "before":
        env["PYTHONPATH"] = str(before / "src")
    if mode == "unsealed":
        env["AUDITGAME_UNSEALED"] = "1"
    store = Path(tempfile.mkdtemp(dir=work)) / "r.sqlite"
    args = [sys.executable, __file__, "--play", str(zoo), auditor, str(store), str(workers)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {auditor} failed:\n{done.stderr[-3000:]}")
    result: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--before", default="3e4d79b")
    parser.add_argument("--play", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.play:
        zoo, auditor, store, workers = args.play
        play_one(Path(zoo), auditor, Path(store), int(workers))
        return

    from auditgame.provenance import git_revision
    from auditgame.run import sandbox
    from auditgame.zoo import build_zoo

    if not sandbox.sealed():
        raise SystemExit("bubblewrap is not available: nothing sealed to measure")
    work = Path(tempfile.mkdtemp(prefix="sealed-overhead-"))
    before = work / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before),
                    args.before], check=True, capture_output=True)  # fmt: skip
    try:
        zoo = work / "zoo"
        build_zoo("digits", args.n, 0, zoo, workers=args.workers)
        times: dict[tuple[str, str], list[dict]] = {}
        for repeat in range(args.repeats):
            for auditor in AUDITORS:
                for mode in MODES:
                    result = timed(mode, zoo, auditor, work, before, args.workers)
                    times.setdefault((auditor, mode), []).append(result)
                    print(repeat, auditor, mode, result, flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],
                       check=False, capture_output=True)  # fmt: skip
    write_table(times, args, git_revision())


def write_table(times: dict, args: argparse.Namespace, revision: str) -> None:
    def per_org(auditor: str, mode: str) -> float:
        return statistics.median(r["seconds"] for r in times[(auditor, mode)]) / args.n

    lines = [
        "# Sealed games: overhead per organism",
        "",
        f"`benchmarks/sealed_overhead.py --n {args.n} --repeats {args.repeats} --workers "
        f"{args.workers}` at {revision}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; `before` = {args.before}. Wall-clock seconds of the whole "
        "`play` call divided by the organisms (median over repeats), a digits zoo, seed 0.",
        "",
        "| auditor | before s/org | unsealed s/org | sealed s/org | sealed − before | "
        "sealed / before | sealed − unsealed | median audit s (sealed) | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for auditor in AUDITORS:
        b, u, s = (per_org(auditor, m) for m in MODES)
        audit = statistics.median(r["audit"] for r in times[(auditor, "sealed")])
        errors = sum(r["errors"] for m in MODES for r in times[(auditor, m)])
        lines.append(
            f"| {auditor} | {b:.3f} | {u:.3f} | {s:.3f} | {s - b:+.3f} | {s / b:.2f} | "
            f"{s - u:+.3f} | {audit:.3f} | {errors} |"
        )
    lines += ["", "Every run, in order (seconds of the whole game):", ""]
    for (auditor, mode), runs in times.items():
        lines.append(f"- {auditor} {mode}: " + ", ".join(f"{r['seconds']:.1f}" for r in runs))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "sealed_overhead.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
