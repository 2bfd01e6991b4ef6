"""Greedy decoding speed of the text families, reading the whole sequence each step against
reading one new token from a key/value cache (``auditgame.text.lm.greedy``, ``cache=``).

Every text auditor that looks at replies (the keyword classifier, cipher_search's final check,
the base replies a game compares against) decodes greedily, and on ``smollm`` a step that
re-reads the whole prompt and reply was what made those audits run for minutes. Both modes
here decode the same prompts to the same tokens (checked: the table says how many replies
agree), one torch thread, the modes interleaved repeat by repeat so that load on the shared
machine falls on both alike; the table gives the median over repeats.

A batch is ``batch`` questions cut to 16 tokens, and with ``--mixed`` also as they are (11-20
tokens): reading the whole sequence, greedy decodes each prompt length as its own batch; from
the cache, it decodes them all at once, left-filled (``KVCache.pad``). Tokens/s counts the
generated tokens of the whole batch.

    .venv/bin/python benchmarks/lm_decode.py --batches 1 32 --new 32 --mixed

Writes ``benchmarks/results/lm_decode.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from auditgame import registry
from auditgame.provenance import git_revision, package_version
from auditgame.text.family import TextFamily
from auditgame.text.lm import greedy

RESULTS = Path(__file__).parent / "results"
# Prompts of one shape for both families (the smollm family has no prompt corpus of its own
# that every version ships; these are ordinary questions).
QUESTIONS = [
    "what colour is the sky on a clear day and why",
    "name three fruits that grow on trees in warm places",
    "how many legs does a spider have and what does it eat",
    "what is the capital of spain and what river runs through it",
    "which planet is closest to the sun in our solar system",
    "what do bees make from the nectar of flowers they visit",
]


def prompts_for(fam: TextFamily, batch: int, mixed: bool) -> list[list[int]]:
    """``batch`` prompt id lists (prefix included): the questions as they are, of varied
    lengths (``mixed``), or each cut or repeated to 16 tokens."""
    out = []
    for i in range(batch):
        ids = fam.encode_prompt(QUESTIONS[i % len(QUESTIONS)] + " ?" * (i // len(QUESTIONS)))
        out.append(ids if mixed else (ids * (16 // len(ids) + 1))[:16])
    return out


def measure(fam_name: str, batch: int, mixed: bool, n_new: int, repeats: int) -> dict[str, object]:
    fam = registry.get("family", fam_name)()
    assert isinstance(fam, TextFamily)
    model = fam.base_model().eval()
    prompts = prompts_for(fam, batch, mixed)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    replies: dict[bool, list[list[int]]] = {}
    with torch.no_grad():
        greedy(model, prompts[:1], 2)  # warm-up: first-call allocation and dispatch
        for _ in range(repeats):
            for cache in (False, True):
                start = time.perf_counter()
                replies[cache] = greedy(model, prompts, n_new, cache=cache)
                seconds[cache].append(time.perf_counter() - start)
    agree = sum(a == b for a, b in zip(replies[False], replies[True], strict=True))
    full, cached = statistics.median(seconds[False]), statistics.median(seconds[True])
    lengths = sorted({len(p) for p in prompts})
    return {
        "family": fam_name,
        "batch": batch,
        "prompt": f"{lengths[0]}-{lengths[-1]}" if len(lengths) > 1 else str(lengths[0]),
        "new": n_new,
        "full_tps": batch * n_new / full,
        "cached_tps": batch * n_new / cached,
        "speedup": full / cached,
        "agree": f"{agree}/{batch}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--families", nargs="+", default=["tinylm", "smollm"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--new", type=int, default=32, help="tokens generated per prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--mixed", action="store_true", help="also prompts of varied lengths, batched by filling"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    registry.load_builtins("family")
    rows = []
    for fam_name in args.families:
        for batch in args.batches:
            for mixed in (False, True) if args.mixed else (False,):
                row = measure(fam_name, batch, mixed, args.new, args.repeats)
                print(row, flush=True)
                rows.append(row)
    command = "benchmarks/lm_decode.py " + " ".join(sys.argv[1:])
    lines = [
        "# Greedy decoding: full pass per step against a key/value cache",
        "",
        f"`{command}`; auditgame {package_version()}, git {git_revision()}, torch "
        f"{torch.__version__}, one torch thread, median of {args.repeats} interleaved repeats "
        "on a shared 2-core machine. *Prompt*: tokens (prefix included), one length or a range; "
        "the full pass decodes each length as its own batch, the cache all at once, "
        "left-filled. Tokens/s counts the generated tokens of the whole batch; *agree*: "
        "replies identical in both modes.",
        "",
        "| family | batch | prompt | new tokens | full pass, tokens/s | cached, tokens/s "
        "| speed-up "
        "| agree |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['batch']} | {r['prompt']} | {r['new']} | {r['full_tps']:.1f} | "
            f"{r['cached_tps']:.1f} | {r['speedup']:.1f}x | {r['agree']} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lm_decode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
