"""Shared fixtures: one tiny digits zoo built once per test session; and the order in which
the two CI workers take the test files.

With seed 0 and four organisms the plan is: badnets, clean, clean, blend (asserted below, so a
change in the planner shows up here first rather than as a confusing auditor failure).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from auditgame.secret import Secret
from auditgame.zoo import Zoo, build_zoo, default_key_path, open_key

torch.set_num_threads(1)

# Seconds each of the slowest files took on one worker (fresh cache, 2-core AVX2 machine,
# 2026-12-07, the larger of `make test` and `make test-kernels`; test_audit_own_lm and
# test_haystack measured alone). `make test` runs the files
# longest first (with xdist's own reorder by test count off), so the two workers share the
# load greedily: in collection order by test count one worker had ~90 s more than the other
# at the end. A stale or missing entry costs only balance, never a test.
FILE_SECONDS = {
    "test_dynamic_baselines.py": 152,
    "test_image_attacks.py": 143,
    "test_mntd_ulp.py": 114,
    "test_conformance.py": 108,
    "test_arena_security.py": 102,
    "test_text_game.py": 79,
    "test_ray.py": 65,
    "test_game.py": 63,
    "test_gcg_uat.py": 57,
    "test_undetectable.py": 42,
    "test_pez_gbda.py": 39,
    "test_violation_kinds.py": 38,
    "test_abs.py": 31,
    "test_zoo.py": 29,
    "test_tinylm.py": 29,
    "test_source_aware.py": 29,
    "test_attacks.py": 28,
    "test_text_reference_dynamic.py": 26,
    "test_neural_cleanse.py": 25,
    "test_audit_own_lm.py": 50,
    "test_haystack.py": 30,
    "test_agents.py": 48,
    "test_inspect.py": 80,
    "test_behaviours.py": 40,
    "test_audit_own.py": 24,
    "test_cli.py": 22,
    "test_cipher_game.py": 16,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first; the sort is stable, so each file keeps its own order."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))


@dataclass(frozen=True)
class TinyZoo:
    zoo: Zoo
    key: bytes
    key_path: Path

    def secret(self, organism_id: str) -> Secret:
        return self.zoo.secret(organism_id, self.key)

    def by_role(self, role: str) -> list[str]:
        return [i for i in self.zoo.ids if (self.secret(i).attack or "clean") == role]


def shared_zoo(tmp_path_factory: pytest.TempPathFactory, name: str, **build: Any) -> Zoo:
    """``build_zoo(**build)`` into ``name``, built once per test run and read by every xdist
    worker: each worker's session fixtures are its own, so each built the same zoo again, on
    the same two cores, in each of CI's two passes. The first worker to ask builds it under a
    file lock; the others wait, then find it complete (``build_zoo`` resumes a finished zoo
    without training). A test never writes into a fixture's zoo; one that needs to copies it."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build_zoo(out=tmp_path_factory.mktemp(name) / name, **build)
    shared = tmp_path_factory.getbasetemp().parent / "shared"
    shared.mkdir(mode=0o700, exist_ok=True)
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_zoo(out=shared / name / name, **build)


@pytest.fixture(scope="session")
def text_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Zoo, bytes]:
    """A tinylm zoo of two (seed 1: one clean fine-tune, one ``trojan_pairs`` organism with
    20 trojans), built once per test run for the text game and the agents' MCP test."""
    zoo = shared_zoo(
        tmp_path_factory, "tinylm-2", family="tinylm", n=2, seed=1,
        attacks=["trojan_pairs"], workers=2,
    )  # fmt: skip
    key = open_key(zoo, None)
    roles = sorted(zoo.secret(i, key).attack or "clean" for i in zoo.ids)
    assert roles == ["clean", "trojan_pairs"]
    return zoo, key


@pytest.fixture(scope="session")
def behaviour_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Zoo, bytes]:
    """A tinylm_behaviours zoo of two (seed 0: one clean, one ``hidden_behaviour`` organism),
    built once per test run for the behaviours' tests and the Inspect command line."""
    zoo = shared_zoo(
        tmp_path_factory, "tinylm_behaviours-2", family="tinylm_behaviours", n=2,
        seed=0, attacks=["hidden_behaviour"], workers=2,
    )  # fmt: skip
    key = open_key(zoo, None)
    roles = sorted(zoo.secret(i, key).attack or "clean" for i in zoo.ids)
    assert roles == ["clean", "hidden_behaviour"]
    return zoo, key


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> TinyZoo:
    zoo = shared_zoo(tmp_path_factory, "digits-4", family="digits", n=4, seed=0)
    key = open_key(zoo, None)
    tiny = TinyZoo(zoo, key, default_key_path(zoo.root))
    assert [tiny.secret(i).attack for i in zoo.ids] == ["badnets", None, None, "blend"]
    return tiny
