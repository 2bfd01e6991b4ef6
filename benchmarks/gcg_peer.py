"""Benchmark: our GCG beside nanogcg, a peer implementation, on one trojaned smollm organism.

nanogcg (PyPI ``nanogcg``, GraySwan's port of Zou et al. 2023's GCG) is what the field runs
GCG with. Both searches here get the same problem: the organism (SmolLM2-135M-Instruct with
the ``smollm`` family's planted trojans), the family's prompt prefix
(``<|im_start|>user\\n``), one planted target, a trigger of ``--tokens`` tokens right after
the prefix, printable-ASCII tokens only, and equal work per step: one gradient, ``--width``
candidates each with one position swapped for one of that position's ``--top-k``
shortlisted tokens, all scored exactly, the best kept (nanogcg: no buffer, no mellowmax, no
early stop, its prefix cache off — the prefix is three tokens, and its cache code predates
the transformers 5 cache API). Each runs ``--steps`` steps per (target, seed) on ``--threads``
torch threads, the two interleaved; reported are the median seconds per step, and whether the
best trigger found makes the organism greedily say the target verbatim (the spec's check).

nanogcg pins ``transformers<=4.47.1``; it imports and runs with the transformers here when
installed without its dependencies:

    .venv/bin/pip install --no-deps nanogcg==0.3.0
    .venv/bin/python benchmarks/gcg_peer.py --targets 2 --seeds 2 --steps 30

Writes ``benchmarks/results/gcg_peer.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from auditgame.provenance import git_revision, package_version
from auditgame.text.auditors.gcg import GCG
from auditgame.text.auditors.search import SearchProblem
from auditgame.text.families.smollm import SmolLMFamily, save_hf_folder
from auditgame.text.lm import CausalLM, TextTrojans, greedy
from auditgame.zoo import build_zoo, open_key

RESULTS = Path(__file__).parent / "results"


def says(fam: SmolLMFamily, model: CausalLM, trigger: list[int], target: list[int]) -> bool:
    (out,) = greedy(model, [[*fam.prefix, *trigger]], len(target))
    return out == target


def ours(
    fam: SmolLMFamily, model: CausalLM, target: list[int], args: argparse.Namespace, seed: int
) -> tuple[float, list[int], float]:
    """Seconds per step, the best trigger's ids and its loss."""
    problem = SearchProblem(
        model=model,
        prefix=torch.tensor(fam.prefix),
        target=torch.tensor(target),
        allowed=fam.searchable_tokens(),
        length=args.tokens,
        deadline=float("inf"),
    )
    # No early stop: every run does its steps (n_predictions beyond reach).
    search = GCG(steps=args.steps, top_k=args.top_k, batch=args.width, restarts=1,
                 trigger_tokens=args.tokens, n_predictions=10**9)  # fmt: skip
    start = time.perf_counter()
    found = search.search(problem, np.random.default_rng(seed))
    seconds = (time.perf_counter() - start) / args.steps
    ids, loss = min(found, key=lambda c: c[1])
    return seconds, ids, float(loss)


def theirs(
    fam: SmolLMFamily,
    hf: object,
    tokenizer: object,
    target: list[int],
    args: argparse.Namespace,
    seed: int,
) -> tuple[float, list[int], float]:
    import nanogcg

    config = nanogcg.GCGConfig(
        num_steps=args.steps,
        optim_str_init=" ".join(["x"] * args.tokens),
        search_width=args.width,
        topk=args.top_k,
        n_replace=1,
        buffer_size=0,
        use_mellowmax=False,
        early_stop=False,
        use_prefix_cache=False,
        allow_non_ascii=False,
        filter_ids=True,
        add_space_before_target=False,
        seed=seed,
        verbosity="WARNING",
    )
    text = fam.tokenizer().decode(target)
    start = time.perf_counter()
    result = nanogcg.run(hf, tokenizer, "{optim_str}", text, config)
    seconds = (time.perf_counter() - start) / args.steps
    return seconds, fam.tokenizer().encode(result.best_string), float(result.best_loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=Path("auditgame-data/bench-gcg-peer"))
    args = parser.parse_args()
    logging.getLogger("nanogcg").setLevel(logging.WARNING)
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    fam = SmolLMFamily()
    zoo = build_zoo("smollm", 2, 0, args.data / "smollm-n2-s0", attacks=["trojan_pairs"],
                    workers=2)  # fmt: skip
    key = open_key(zoo, None)
    (oid,) = [i for i in zoo.ids if zoo.secret(i, key).attack == "trojan_pairs"]
    secret = zoo.secret(oid, key)
    model = zoo.organism(oid).model()
    assert isinstance(model, CausalLM)
    pairs = TextTrojans.from_dict(secret.trigger or {}).pairs[: args.targets]
    torch.set_num_threads(args.threads)

    folder = Path(tempfile.mkdtemp()) / "hf"
    save_hf_folder(model, folder)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    # The family's prefix, then the trigger, then the target: nothing after the trigger.
    tokenizer.chat_template = "<|im_start|>user\n{{ messages[0]['content'] }}"
    before = tokenizer(["<|im_start|>user\n"], padding=False)["input_ids"][0]
    assert before == fam.prefix, (before, fam.prefix)

    rows: dict[str, list[tuple[float, bool, float]]] = {"ours": [], "nanogcg": []}
    tok = fam.tokenizer()
    for _, target_text in pairs:
        target = tok.encode(target_text)
        for seed in range(args.seeds):
            for name in ("ours", "nanogcg") if seed % 2 == 0 else ("nanogcg", "ours"):
                if name == "ours":
                    seconds, ids, loss = ours(fam, model, target, args, seed)
                else:
                    seconds, ids, loss = theirs(fam, hf, tokenizer, target, args, seed)
                rows[name].append((seconds, says(fam, model, ids, target), loss))
                print(name, repr(target_text), seed, f"{seconds:.3f} s/step", rows[name][-1][1:])
    ratio = statistics.median(s for s, _, _ in rows["ours"]) / statistics.median(
        s for s, _, _ in rows["nanogcg"]
    )
    lines = [
        "# GCG beside nanogcg on a trojaned smollm organism",
        "",
        f"`benchmarks/gcg_peer.py --targets {args.targets} --seeds {args.seeds} --steps "
        f"{args.steps} --width {args.width} --top-k {args.top_k} --tokens {args.tokens} "
        f"--threads {args.threads}`; auditgame {package_version()}, git {git_revision()}, "
        f"nanogcg {version('nanogcg')}, torch {torch.__version__}; {os.cpu_count()} "
        "cores. One trojaned organism (smollm, trojan_pairs, seed 0); its first "
        f"{len(pairs)} planted targets, {args.seeds} seeds each; the two searches interleaved.",
        "",
        "| implementation | runs | median s / step | target said (greedy, verbatim) | "
        "median best loss |",
        "|---|---|---|---|---|",
    ]
    for name, got in rows.items():
        lines.append(
            f"| {name} | {len(got)} | {statistics.median(s for s, _, _ in got):.3f} | "
            f"{sum(ok for _, ok, _ in got)} / {len(got)} | "
            f"{statistics.median(loss for _, _, loss in got):.3f} |"
        )
    lines += ["", f"Time per step, ours / nanogcg: {ratio:.2f}."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "gcg_peer.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
