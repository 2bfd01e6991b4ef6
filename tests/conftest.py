"""Shared fixtures: one tiny digits zoo built once per test session; and the order in which
the two CI workers take the test files.

With seed 0 and four organisms the plan is: badnets, clean, clean, blend (asserted below, so a
change in the planner shows up here first rather than as a confusing auditor failure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


@pytest.fixture(scope="session")
def text_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Zoo, bytes]:
    """A tinylm zoo of two (seed 1: one clean fine-tune, one ``trojan_pairs`` organism with
    20 trojans), built once per test process for the text game and the agents' MCP test."""
    root = tmp_path_factory.mktemp("text") / "tinylm-2"
    zoo = build_zoo("tinylm", 2, 1, root, attacks=["trojan_pairs"], workers=2)
    key = open_key(zoo, None)
    roles = sorted(zoo.secret(i, key).attack or "clean" for i in zoo.ids)
    assert roles == ["clean", "trojan_pairs"]
    return zoo, key


@pytest.fixture(scope="session")
def behaviour_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Zoo, bytes]:
    """A tinylm_behaviours zoo of two (seed 0: one clean, one ``hidden_behaviour`` organism),
    built once per test process for the behaviours' tests and the Inspect command line."""
    root = tmp_path_factory.mktemp("behaviours") / "tinylm_behaviours-2"
    zoo = build_zoo("tinylm_behaviours", 2, 0, root, attacks=["hidden_behaviour"], workers=2)
    key = open_key(zoo, None)
    roles = sorted(zoo.secret(i, key).attack or "clean" for i in zoo.ids)
    assert roles == ["clean", "hidden_behaviour"]
    return zoo, key


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> TinyZoo:
    root = tmp_path_factory.mktemp("zoo") / "digits-4"
    zoo = build_zoo("digits", 4, 0, root, workers=1)
    key = open_key(zoo, None)
    tiny = TinyZoo(zoo, key, default_key_path(root))
    assert [tiny.secret(i).attack for i in zoo.ids] == ["badnets", None, None, "blend"]
    return tiny
