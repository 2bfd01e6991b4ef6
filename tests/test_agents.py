"""Agents play the sealed game through tools: the session answers within the access level,
counts every call and refuses past the budget, judges a submitted finding as a game would and
keeps the secrets sealed until the last organism; an auditor the agent runs stays sandboxed;
and an MCP client (the SDK's own, over stdio) audits a tinylm zoo end to end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from auditgame.access import Access
from auditgame.agents import scripted
from auditgame.agents.client import play_over_mcp
from auditgame.agents.session import AgentGame, AuditSession
from auditgame.agents.tools import ToolBudget, ToolError
from auditgame.store import UNREVEALED, Store
from auditgame.zoo import Zoo
from conftest import TinyZoo

HOSTILE = "hostile_auditors"


def test_tools_answer_within_access_and_budget_and_the_judge_scores_each_finding(
    tiny_zoo: TinyZoo, tmp_path: Path
) -> None:
    game = AgentGame(
        zoo=tiny_zoo.zoo.root, agent="probe", access=Access.WEIGHTS, budget=ToolBudget(calls=5)
    )
    ids = tiny_zoo.zoo.ids
    x = [[[0.5] * 8] * 8]  # one input of the card's shape [1, 8, 8]
    with Store(tmp_path / "r.sqlite") as store:
        with AuditSession(game, tiny_zoo.key, store) as session:
            card = session.call("describe")
            assert card["organism"] == ids[0] and card["access"] == "WEIGHTS"
            assert card["witness"].startswith('trigger: {"mask"')
            assert {"predict", "activations", "run_auditor", "submit_finding"} <= set(card["tools"])
            # Above the access level, the tool and the auditors that need data are refused.
            with pytest.raises(ToolError, match="clean_samples needs CLEAN_DATA"):
                session.call("clean_samples", {"n": 2})
            with pytest.raises(ToolError, match="needs CLEAN_DATA access"):
                session.call("run_auditor", {"name": "neural_cleanse"})
            assert "neural_cleanse" not in card["auditors"] and "weight_stats" in card["auditors"]
            with pytest.raises(ToolError, match="shape"):
                session.call("predict", {"inputs": [[1.0, 2.0]]})
            with pytest.raises(ToolError, match="no tool 'steal_key'"):
                session.call("steal_key")
            answer = session.call("predict", {"inputs": [x, x]})
            assert len(answer["labels"]) == 2 and len(answer["probabilities"][0]) == 10
            assert len(session.call("activations", {"inputs": [x]})["activations"]) == 1
            # Every call that reached a tool is counted, refused ones too (access, arguments):
            # 3 refused and 2 answered make 5, the budget.
            with pytest.raises(ToolError, match="calls budget is spent"):
                session.call("predict", {"inputs": [x]})
            assert session.usage.forward == 3 and session.usage.calls == 5
            # A finding the spec cannot read is refused, not recorded; a good one is judged.
            with pytest.raises(ToolError, match="not a finding"):
                session.call("submit_finding", {"p_violation": 2.0})
            first = session.call("submit_finding", {"p_violation": 0.9, "target": 3})
            assert first == {"recorded": ids[0], "witness": None, "next": ids[1]}
            assert session.call("describe")["spent"]["calls"] == 0  # a fresh budget
            rows = store.rows(game.id)
            assert [r["auditor"] for r in rows] == ["agent:probe"]
            # Sealed while the game runs: no secret in the store, none told to the agent.
            assert rows[0]["secret_json"] == UNREVEALED
            assert set(first) == {"recorded", "witness", "next"}
        # Interrupted here; a new session of the same game resumes at the second organism.
        with AuditSession(game, tiny_zoo.key, store) as session:
            assert session.organism_id == ids[1]
            for _ in ids[1:]:
                session.call("submit_finding", {"p_violation": 0.1})
            assert session.call("describe")["organism"] is None
            with pytest.raises(ToolError, match="every organism"):
                session.call("predict", {"inputs": [x]})
        scores = {s.organism_id: s for s in store.scores(game.id)}
        rows = store.rows(game.id)
    assert set(scores) == set(ids) and all(r["secret_json"] != UNREVEALED for r in rows)
    truth = tiny_zoo.secret(ids[0])
    assert scores[ids[0]].backdoored == truth.backdoored and scores[ids[0]].flagged
    assert scores[ids[0]].target_correct == (truth.target == 3)
    assert scores[ids[0]].forward == 3 and scores[ids[0]].sealed
    finding = json.loads(rows[[r["organism_id"] for r in rows].index(ids[0])]["finding_json"])
    assert finding["evidence"]["tool_calls"] == 5


def test_a_one_organism_session_records_a_failure_only_after_the_agent_called_a_tool(
    tiny_zoo: TinyZoo, tmp_path: Path
) -> None:
    """What an Inspect sample gets: closed without a finding after the agent looked, the
    organism is a failed finding; closed before the agent called anything (the harness
    failed), nothing is recorded and a rerun audits it."""
    game = AgentGame(zoo=tiny_zoo.zoo.root, agent="one")
    first, second = tiny_zoo.zoo.ids[:2]
    with Store(tmp_path / "r.sqlite") as store:
        with AuditSession(game, tiny_zoo.key, store, only=first) as session:
            assert session.call("describe")["organism"] == first
        with AuditSession(game, tiny_zoo.key, store, only=second):
            pass
        rows = {s.organism_id: s for s in store.scores(game.id)}
    assert set(rows) == {first}
    assert rows[first].error == "the agent stopped without submitting a finding"


def test_an_auditor_the_agent_runs_is_sealed_like_any_other(
    tiny_zoo: TinyZoo, tmp_path: Path
) -> None:
    """Routes 1, 5, 6 and 7 of the red-team suite through ``run_auditor``: the snoop, handed
    the paths of the zoo, its key and the store, reaches none of them."""
    store_path = tmp_path / "r.sqlite"
    game = AgentGame(zoo=tiny_zoo.zoo.root, agent="snoop", plugins=(HOSTILE,))
    paths = (tiny_zoo.zoo.root, tiny_zoo.key_path, store_path)
    params = dict(zip(("zoo", "key", "store"), map(str, paths), strict=True))
    with Store(store_path) as store, AuditSession(game, tiny_zoo.key, store) as session:
        assert session.sealed
        found = session.call("run_auditor", {"name": "hostile_snoop", "params": params})
        # Parameters are the auditor's constructor's, never a module to import.
        with pytest.raises(ToolError, match="module"):
            session.call("run_auditor", {"name": "weight_stats", "params": {"module": HOSTILE}})
        with pytest.raises(ToolError, match="no plugin of this game registers it"):
            session.call("run_auditor", {"name": "hostile_missing"})
    assert HOSTILE not in sys.modules  # the plugin never ran in the referee
    got = found["evidence"]
    assert found["error"] is None and got["uid"] == 65534
    assert got["key_file"] is None and got["zoo_json"] is None and got["store"] == []
    assert tiny_zoo.key.decode() not in got["memory_keys"]
    assert got["secrets_alive"] == 0 and got["network"] is not True


def test_an_mcp_client_audits_a_tinylm_zoo_end_to_end(
    text_zoo: tuple[Zoo, bytes], tmp_path: Path
) -> None:
    zoo, _ = text_zoo
    store_path = tmp_path / "r.sqlite"
    refused: list[str] = []
    tools: list[str] = []

    def agent(call: scripted.Call) -> object:
        tools.extend(call("describe", {})["tools"])
        try:
            call("clean_samples", {"n": 2})
        except ToolError as exc:
            refused.append(str(exc))
        return scripted.auditor_then_verify(call, "gcg", seconds=4)

    options = ["--agent", "mcp-test", "--store", str(store_path), "--access", "weights"]
    answers = play_over_mcp(zoo.root, agent, [*options, "--seconds", "30"])
    assert [a["recorded"] for a in answers] == zoo.ids
    assert set(tools) >= {"chat", "generate", "next_token_distribution", "activations"}
    assert len(refused) == 2 and all("needs CLEAN_DATA" in r for r in refused)
    with Store(store_path) as store:
        (game_id,) = [g["game_id"] for g in store.games()]
        scores = store.scores(game_id)
        rows = store.rows(game_id)
    assert {s.auditor for s in scores} == {"agent:mcp-test"} and len(scores) == 2
    assert all(s.error is None and s.sealed for s in scores)
    assert all(r["secret_json"] != UNREVEALED for r in rows)
    for s, answer in zip(sorted(scores, key=lambda s: zoo.ids.index(s.organism_id)), answers,
                         strict=True):  # fmt: skip
        # The agent flags exactly where its witness reproduced a target verbatim, which the
        # spec confirmed without the secret.
        violates = answer["witness"] is not None and answer["witness"]["violates"]
        assert s.flagged == violates
