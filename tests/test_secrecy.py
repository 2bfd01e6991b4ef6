"""The sealed secret never reaches an auditor.

A snooping auditor, run through the real game path in a worker process, inspects everything
it can: every object alive in its process, everything reachable from its subject, and every
file under the zoo folder (whose location we hand it, the worst case: its sandbox shows it no
such folder). Then we check, holding the key, that none of it carries the secrets: no
``Secret`` object, no salt, no key, no plaintext, and no card or file size that tells
backdoored from clean. The routes a hostile auditor would take on purpose are tried in
``tests/test_arena_security.py``.
"""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path

import numpy as np

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.game import AuditorSpec, Game, play
from auditgame.registry import auditor
from auditgame.run.local import LocalExecutor
from auditgame.secret import Secret
from auditgame.store import Store
from auditgame.subject import Subject
from auditgame.testing import reachable_strings

HEX32 = re.compile(rb"[0-9a-f]{32}")
KEYLIKE = re.compile(rb"[A-Za-z0-9_\-]{43}=")


@auditor("snoop")
class Snoop(Auditor):
    """Reports everything it could get its hands on; never a real verdict."""

    access = Access.DYNAMIC

    def __init__(self, *, zoo_root: str = "") -> None:
        self.zoo_root = zoo_root

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        live = gc.get_objects()
        secrets_alive = sum(isinstance(o, Secret) for o in live)
        reachable: list[str] = []
        reachable_strings(subject, set(), reachable)
        for obj in live:
            values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
            reachable.extend(v for v in values if isinstance(v, str))
        blob = "\n".join(reachable).encode(errors="replace")
        files = {}
        for path in sorted(Path(self.zoo_root).rglob("*")):
            if path.is_file():
                data = path.read_bytes()
                files[str(path.relative_to(self.zoo_root))] = {
                    "size": len(data),
                    "hex32": sorted({m.decode() for m in HEX32.findall(data)}),
                    "keylike": sorted({m.decode() for m in KEYLIKE.findall(data)}),
                }
        return Verdict(
            p_violation=0.5,
            evidence={
                "secrets_alive": secrets_alive,
                "memory_hex32": sorted({m.decode() for m in HEX32.findall(blob)}),
                "memory_keylike": sorted({m.decode() for m in KEYLIKE.findall(blob)}),
                "subject_fields": sorted(vars(subject)),
                "files": files,
            },
        )


def test_an_auditor_learns_nothing_about_the_secret(tiny_zoo, tmp_path: Path) -> None:
    game = Game(
        zoo=tiny_zoo.zoo.root,
        auditors=[AuditorSpec(name="snoop", params={"zoo_root": str(tiny_zoo.zoo.root)})],
        budget=Budget(n_clean=20, n_traffic=20),
    )
    with Store(tmp_path / "r.sqlite") as store:
        game_id = play(game, tiny_zoo.key, store, LocalExecutor(workers=2))
        rows = store.rows(game_id)
    assert len(rows) == 4
    key = tiny_zoo.key.decode()
    secrets = {oid: tiny_zoo.secret(oid) for oid in tiny_zoo.zoo.ids}
    for row in rows:
        evidence = json.loads(row["finding_json"])["evidence"]
        assert evidence["secrets_alive"] == 0
        assert evidence["subject_fields"] == [
            "access",
            "card",
            "clean",
            "features",
            "interface",
            "model",
            "passes",
            "reference",
            "started",
            "traffic",
        ]
        for secret in secrets.values():
            assert secret.salt not in evidence["memory_hex32"]
        assert key not in evidence["memory_keylike"]
        files = evidence["files"]
        for name, info in files.items():
            assert key not in info["keylike"], name
            for secret in secrets.values():
                assert secret.salt not in info["hex32"], name
        assert files == {}  # the sandbox has no zoo folder
    sealed = [p.stat().st_size for p in (tiny_zoo.zoo.root / "sealed").iterdir()]
    assert len(sealed) == 4 and len(set(sealed)) == 1  # and its sealed files' sizes tell nothing


def test_cards_of_clean_and_backdoored_organisms_differ_only_in_hashes(tiny_zoo) -> None:
    cards = {
        oid: tiny_zoo.zoo.organism(oid).card.model_dump(mode="json") for oid in tiny_zoo.zoo.ids
    }
    clean = [c for oid, c in cards.items() if not tiny_zoo.secret(oid).backdoored]
    bad = [c for oid, c in cards.items() if tiny_zoo.secret(oid).backdoored]
    for a in clean:
        for b in bad:
            differing = {k for k in a if a[k] != b[k]}
            assert differing == {"weights_sha256", "secret_commitment"}
