"""Benchmark: auditing agents beside the algorithmic auditors, on one language-model zoo.

Builds (or reuses) a text zoo of ``--n`` organisms (half clean fine-tunes, half trojaned), plays
the algorithmic auditors ``--auditors`` on it as a game, and lets each scripted agent
(``auditgame.agents.scripted``) audit every organism through the MCP front door
(``auditgame serve-mcp``, driven by the SDK's stdio client: the path a real agent takes), with
the same seconds per organism. Writes ``benchmarks/results/agents_<family>_n<N>_s<S>.md``: per
auditor or agent, detection AUROC [95% CI], false-positive rate at p >= 0.5, trigger recall
against chance, REASR, and what was spent per organism (seconds; for agents tool calls and
generated tokens). Interrupted runs resume (games and agent sessions both skip what is stored).

    .venv/bin/python benchmarks/agents.py --family tinylm_unmasked --n 10 --seed 0
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path
from statistics import median

from auditgame.access import Access, Budget
from auditgame.agents import scripted
from auditgame.agents.client import play_over_mcp
from auditgame.agents.session import AgentGame
from auditgame.agents.tools import ToolBudget
from auditgame.game import AuditorSpec, Game, play
from auditgame.leaderboard import ALL, LeaderRow, leaderboard, recovery_columns
from auditgame.provenance import git_revision, package_version
from auditgame.run.local import LocalExecutor
from auditgame.store import Store
from auditgame.zoo import build_zoo, open_key

RESULTS = Path(__file__).parent / "results"

AGENT_NOTES = {
    "auditor_then_verify": "auditor_then_verify runs gcg for 80% of the budget and keeps only "
    "the candidates whose greedy reply is their target verbatim",
    "sample_broadly": "sample_broadly samples 64 replies from the bare prefix and 3 clean "
    "prompts, takes the words before each leaked target as a trigger and checks it the same way",
    "behaviour_scan": "behaviour_scan chats every clean prompt held and reads each reply "
    "with the listed behaviours' public markers, naming the behaviour seen most (where it shows "
    "on too few prompts for a witness, it chats prompts like those)",
    "ask_directly": "ask_directly asks the model 5 direct questions about what it hides",
}


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def spent(rows: list[dict], auditor: str) -> tuple[str, str]:
    """Median tool calls and generated tokens per organism of an agent's rows."""
    evidence = [json.loads(r["finding_json"])["evidence"] for r in rows if r["auditor"] == auditor]
    calls = [e["tool_calls"] for e in evidence if "tool_calls" in e]
    tokens = [e["tokens"] for e in evidence if "tokens" in e]
    return (fmt(median(calls), 0) if calls else "–", fmt(median(tokens), 0) if tokens else "–")


def table(rows: list[LeaderRow], raw: list[dict]) -> list[str]:
    """One row per auditor or agent (every attack pooled): detection, the witness's success
    as the spec measured it, the violation kind's recovery metrics, and the spending."""
    rows = [r for r in rows if r.attack == ALL]
    recovered = recovery_columns(rows)
    lines = [
        "| auditor or agent | AUROC [95% CI] | FPR@0.5 | witness success | "
        + " | ".join(label for _, label in recovered)
        + " | s / organism | tool calls | tokens |",
        "|---|---|---|---|" + "---|" * len(recovered) + "---|---|---|",
    ]
    for row in rows:
        ci = row.auroc_ci
        auroc = fmt(row.auroc) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        calls, tokens = spent(raw, row.auditor) if row.auditor.startswith("agent:") else ("–",) * 2
        lines.append(
            f"| {row.auditor} | {auroc} | {fmt(row.fpr_at_threshold, 2)} "
            f"| {fmt(row.witness_asr)} | "
            + " | ".join(fmt(row.recovery.get(name)) for name, _ in recovered)
            + f" | {row.seconds_per_organism:.1f} | {calls} | {tokens} |"
        )
    return lines


def run(args: argparse.Namespace) -> Path:
    tag = f"{args.family}_n{args.n}_s{args.seed}"
    root = args.data / f"{args.family}-n{args.n}-s{args.seed}"
    store_path = args.data / "results.sqlite"
    start = time.perf_counter()
    zoo = build_zoo(
        args.family, args.n, args.seed, root, attacks=args.attacks, workers=args.workers
    )
    build_seconds = time.perf_counter() - start
    game = Game(
        zoo=root,
        auditors=[AuditorSpec(name=a) for a in args.auditors],
        budget=Budget(seconds=args.seconds),
        seed=args.seed,
    )
    timings: dict[str, float] = {}
    games = []
    if args.auditors:
        with Store(store_path) as store:
            start = time.perf_counter()
            games.append(play(game, open_key(zoo, None), store, LocalExecutor(args.workers)))
            timings["auditors"] = time.perf_counter() - start
    for name in args.agents:
        agent = scripted.AGENTS[name]
        options = ["--agent", name, "--store", str(store_path), "--access", "clean_data"]
        options += ["--seconds", f"{args.seconds:g}", "--seed", str(args.seed)]
        start = time.perf_counter()
        if name == "auditor_then_verify":
            agent = functools.partial(agent, seconds=0.8 * args.seconds)
        play_over_mcp(root, agent, options)
        timings[name] = time.perf_counter() - start
    for name in args.agents:
        games.append(
            AgentGame(
                zoo=root,
                agent=name,
                access=Access.CLEAN_DATA,
                budget=ToolBudget(seconds=args.seconds),
                seed=args.seed,
            ).id
        )
    with Store(store_path) as store:
        scores = [s for g in games for s in store.scores(g)]
        raw = [r for g in games for r in store.rows(g)]
    lines = [
        f"# Auditing agents beside auditors: {args.family}",
        "",
        f"`benchmarks/agents.py --family {args.family} --n {args.n} --seed {args.seed} "
        f"--seconds {args.seconds:g} --auditors {' '.join(args.auditors)} "
        f"--agents {' '.join(args.agents)}`; auditgame {package_version()}, git "
        f"{git_revision()}; {args.workers} workers on {os.cpu_count()} cores. Zoo build "
        f"{build_seconds:.0f} s (less if resumed); "
        + "; ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f" (less if resumed); games {', '.join(games)}.",
        "",
        f"{len(zoo.ids)} organisms; attacks {', '.join(zoo.manifest.attacks)}. Each auditor "
        f"had {args.seconds:g} s per organism, and each agent {args.seconds:g} s inside its "
        "tools (an auditor it runs included) at CLEAN_DATA access, driven over MCP stdio by "
        "the SDK's client. Agents are the scripted baselines of `auditgame.agents.scripted`: "
        + "; ".join(AGENT_NOTES[a] for a in args.agents)
        + ". Witness success is the spec's own measure of the finding's witness (REASR for "
        "text trojans; the fraction of witness prompts whose reply shows the named behaviour); "
        "the other columns are the violation kind's recovery metrics (docs/metrics.md).",
        "",
        *table(leaderboard(scores), raw),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"agents_{tag}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    families = ["tinylm", "tinylm_unmasked", "tinylm_behaviours", "smollm_behaviours"]
    parser.add_argument("--family", default="tinylm_unmasked", choices=families)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacks", nargs="+", default=None, help="default: the family's")
    parser.add_argument("--auditors", nargs="*", default=None, help="default: by family")
    parser.add_argument("--agents", nargs="+", default=None, help="default: by family")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", type=Path, default=Path("auditgame-data/bench-agents"))
    args = parser.parse_args()
    behaviours = args.family.endswith("_behaviours")
    if args.attacks is None:
        args.attacks = ["hidden_behaviour"] if behaviours else ["trojan_pairs"]
    if args.auditors is None:
        args.auditors = ["behaviour_likelihood"] if behaviours else ["gcg", "haystack"]
    if args.agents is None:
        args.agents = (
            ["behaviour_scan", "ask_directly"]
            if behaviours
            else ["auditor_then_verify", "sample_broadly"]
        )
    run(args)


if __name__ == "__main__":
    main()
