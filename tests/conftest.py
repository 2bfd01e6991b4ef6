"""Shared fixtures: one tiny digits zoo built once per test session.

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
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> TinyZoo:
    root = tmp_path_factory.mktemp("zoo") / "digits-4"
    zoo = build_zoo("digits", 4, 0, root, workers=1)
    key = open_key(zoo, None)
    tiny = TinyZoo(zoo, key, default_key_path(root))
    assert [tiny.secret(i).attack for i in zoo.ids] == ["badnets", None, None, "blend"]
    return tiny
