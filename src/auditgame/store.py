"""Results in SQLite: one row per (game, organism, auditor), written as each pair finishes.

Each row is committed on its own, so a run killed at any moment loses at most the pairs still
running; the primary key makes a re-run skip what is there and forbids duplicates. Rows carry
the package version, the git revision and the seed, so every reported number can say what
produced it. Rows also keep the full finding and, once the game's last pair is judged
(``reveal``), the unsealed secret, which is what the report draws true-vs-reconstructed
triggers from: while a game runs, its rows hold no secret, so an earlier row tells nothing
about a later organism.
Only the referee writes here; a sandboxed auditor has no path to the file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditgame.finding import Finding
from auditgame.provenance import git_revision, package_version
from auditgame.score import Score
from auditgame.secret import Secret

SCHEMA = """
CREATE TABLE IF NOT EXISTS games (
    game_id TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    game_id TEXT NOT NULL,
    organism_id TEXT NOT NULL,
    auditor TEXT NOT NULL,
    family TEXT NOT NULL,
    attack TEXT NOT NULL,
    backdoored INTEGER NOT NULL,
    dynamic INTEGER NOT NULL,
    reference INTEGER NOT NULL DEFAULT 0,
    p_violation REAL NOT NULL,
    flagged INTEGER NOT NULL,
    predicted_target INTEGER,
    true_target INTEGER,
    target_correct INTEGER,
    witness_asr REAL,
    witness_in_threat_model INTEGER,
    witness_violates INTEGER,
    seconds REAL NOT NULL,
    forward INTEGER NOT NULL,
    backward INTEGER NOT NULL,
    error TEXT,
    sealed INTEGER NOT NULL DEFAULT 0,
    seed INTEGER NOT NULL,
    finding_json TEXT NOT NULL,
    secret_json TEXT NOT NULL,
    package_version TEXT NOT NULL,
    git_revision TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (game_id, organism_id, auditor)
);
CREATE TABLE IF NOT EXISTS recovery (
    game_id TEXT NOT NULL,
    organism_id TEXT NOT NULL,
    auditor TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (game_id, organism_id, auditor, metric)
);
"""

SCORE_COLUMNS = [f for f in Score.model_fields if f != "recovery"]

# Columns added after the first release, with their SQL types: a store written before them is
# brought up to date when opened, so old results stay readable.
ADDED_COLUMNS = {
    "reference": "INTEGER NOT NULL DEFAULT 0",
    # Rows written before sandboxes were never sealed.
    "sealed": "INTEGER NOT NULL DEFAULT 0",
    "violation": "TEXT NOT NULL DEFAULT ''",
    # Rows written before it say nothing of whether the witness proved a violation.
    "witness_violates": "INTEGER",
}
# Recovery metrics that rows written before the ``recovery`` table kept in columns of their
# own, moved into it when such a store is opened: ``trigger_recall`` was a cipher's key
# agreement where the finding was a cipher witness. (Those rows' ``witness_asr`` stays as it
# was written: for text trojans, TDC's REASR over the planted targets.)
OLD_RECOVERY = {
    "mask_iou": "'mask_iou'",
    "trigger_recall": (
        "CASE WHEN json_extract(finding_json, '$.trigger.kind') = 'cipher_witness' "
        "THEN 'key_agreement' ELSE 'trigger_recall' END"
    ),
}
# ``secret_json`` of a row whose game has not been revealed yet.
UNREVEALED = ""


class Store:
    """A results database at ``path`` (created on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        have = {r["name"] for r in self._db.execute("PRAGMA table_info(scores)")}
        with self._tx() as db:
            for name, sql_type in ADDED_COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE scores ADD COLUMN {name} {sql_type}")
            for column, metric in OLD_RECOVERY.items():
                if column in have:
                    db.execute(
                        f"INSERT OR IGNORE INTO recovery SELECT game_id, organism_id, auditor, "
                        f"{metric}, {column} FROM scores WHERE {column} IS NOT NULL"
                    )
                    db.execute(f"UPDATE scores SET {column} = NULL WHERE {column} IS NOT NULL")
            # A failed finding is scored as the worst answer (``score.score``); rows written
            # before that rule scored it 0.5.
            db.execute(
                "UPDATE scores SET p_violation = 1 - backdoored, flagged = 1 - backdoored "
                "WHERE error IS NOT NULL AND p_violation != 1 - backdoored"
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._db:
            yield self._db

    def add_game(self, game_id: str, description: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO games VALUES (?, ?, ?)",
                (game_id, json.dumps(description, sort_keys=True), _now()),
            )

    def finished(self, game_id: str) -> set[tuple[str, str]]:
        rows = self._db.execute(
            "SELECT organism_id, auditor FROM scores WHERE game_id = ?", (game_id,)
        )
        return {(r["organism_id"], r["auditor"]) for r in rows}

    def add(self, game_id: str, score: Score, finding: Finding, seed: int) -> None:
        """Insert one row, without its secret; a pair already stored is left as it is."""
        values = score.model_dump(exclude={"recovery"})
        row = {
            "game_id": game_id,
            **values,
            "seed": seed,
            "finding_json": finding.model_dump_json(),
            "secret_json": UNREVEALED,
            "package_version": package_version(),
            "git_revision": git_revision(),
            "created_at": _now(),
        }
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._tx() as db:
            added = db.execute(
                f"INSERT OR IGNORE INTO scores ({columns}) VALUES ({marks})", list(row.values())
            ).rowcount
            if added:
                db.executemany(
                    "INSERT INTO recovery VALUES (?, ?, ?, ?, ?)",
                    [
                        (game_id, score.organism_id, score.auditor, metric, value)
                        for metric, value in score.recovery.items()
                    ],
                )

    def reveal(self, game_id: str, secrets: dict[str, Secret]) -> int:
        """Write each organism's secret into the game's rows; returns the rows updated."""
        with self._tx() as db:
            return sum(
                db.execute(
                    "UPDATE scores SET secret_json = ? WHERE game_id = ? AND organism_id = ?",
                    (secret.model_dump_json(), game_id, oid),
                ).rowcount
                for oid, secret in secrets.items()
            )

    def games(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM games ORDER BY rowid")
        return [{**dict(r), "description": json.loads(r["description"])} for r in rows]

    def rows(self, game_id: str | None = None) -> list[dict[str, Any]]:
        """All score rows (of one game, when given), as dicts in a stable order, each with
        its ``recovery`` metrics as a dict."""
        where, args = ("", ()) if game_id is None else (" WHERE game_id = ?", (game_id,))
        recovery: dict[tuple[str, str, str], dict[str, float]] = {}
        for r in self._db.execute(f"SELECT * FROM recovery{where}", args):
            pair = (r["game_id"], r["organism_id"], r["auditor"])
            recovery.setdefault(pair, {})[r["metric"]] = r["value"]
        query = f"SELECT * FROM scores{where} ORDER BY game_id, auditor, organism_id"
        return [
            {
                **dict(r),
                "recovery": recovery.get((r["game_id"], r["organism_id"], r["auditor"]), {}),
            }
            for r in self._db.execute(query, args)
        ]

    def scores(self, game_id: str | None = None) -> list[Score]:
        return [
            Score.model_validate({k: r[k] for k in [*SCORE_COLUMNS, "recovery"]})
            for r in self.rows(game_id)
        ]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
