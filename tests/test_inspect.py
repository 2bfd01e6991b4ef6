"""The Inspect AI door: ``auditgame.inspect:audit_task`` evaluated with Inspect's mock model,
and from Inspect's command line with a scripted agent as the model.

The mock model is scripted to call the tools as an agent would — ``describe`` and
``submit_finding`` on the first organism, ``describe`` only on the second — so the path is
real end to end: Inspect's ReAct agent, one ``serve-mcp`` process per sample over stdio, the
session, the judge, our store, Inspect's scores, and our report. ``inspect eval`` itself runs
a scripted baseline registered as Inspect model ``auditgame/<agent>`` (offline: the mock model
from the command line would download a tokenizer).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import inspect_ai
import pytest
from inspect_ai.model import ModelOutput, ModelUsage, get_model

from auditgame.inspect import audit_task
from auditgame.inspect_scripted import ScriptedAgents
from auditgame.report import write_report
from auditgame.store import Store
from auditgame.zoo import Zoo
from conftest import TinyZoo


def test_inspect_eval_with_the_mock_model_lands_in_our_store_and_report(
    tiny_zoo: TinyZoo, tmp_path: Path
) -> None:
    ids = tiny_zoo.zoo.ids
    store_path = tmp_path / "r.sqlite"
    script = [
        ModelOutput.for_tool_call("mockllm/model", "describe", {}),
        ModelOutput.for_tool_call(
            "mockllm/model", "submit_finding", {"p_violation": 0.9, "target": 3}
        ),
        ModelOutput.from_content("mockllm/model", "Submitted."),
        ModelOutput.for_tool_call("mockllm/model", "describe", {}),
        ModelOutput.from_content("mockllm/model", "I give up."),  # no finding
    ]
    # With its usage given, the mock model does not count tokens with tiktoken, which would
    # download its encoding.
    script = [o.model_copy(update={"usage": ModelUsage()}) for o in script]
    task = audit_task(zoo=str(tiny_zoo.zoo.root), agent="mock", store=str(store_path))
    (log,) = inspect_ai.eval(
        task,
        model=get_model("mockllm/model", custom_outputs=script),
        limit=2,
        max_samples=1,
        log_dir=str(tmp_path / "logs"),
        display="none",
    )
    assert log.status == "success", log.error
    assert log.samples is not None and [s.id for s in log.samples] == ids[:2]
    with Store(store_path) as store:
        rows = {s.organism_id: s for s in store.scores()}
        markdown, _ = write_report(store, tmp_path / "report")
    assert set(rows) == set(ids[:2]) and {s.auditor for s in rows.values()} == {"agent:mock"}
    first, second = rows[ids[0]], rows[ids[1]]
    assert first.error is None and first.p_violation == 0.9 and first.predicted_target == 3
    # The second sample ended without submit_finding: a failed finding, the worst answer.
    assert second.error == "the agent stopped without submitting a finding"
    assert second.p_violation == (0.0 if second.backdoored else 1.0)
    scored = {s.id: s.scores["judged"].value for s in log.samples if s.scores}
    assert scored[ids[0]] == {"correct": float(first.backdoored), "p_violation": 0.9}
    assert scored[ids[1]]["correct"] == 0.0
    # The agent's game has its own leaderboard, with what it spent.
    text = markdown.read_text()
    assert "### Leaderboard: agents" in text and "tool calls/organism" in text
    assert "agent:mock" in text


def test_inspect_eval_from_the_command_line_with_a_scripted_agent_as_the_model(
    behaviour_zoo: tuple[Zoo, bytes], tmp_path: Path
) -> None:
    zoo, _ = behaviour_zoo
    store_path = tmp_path / "r.sqlite"
    inspect = [sys.executable, "-m", "inspect_ai", "eval", "auditgame/audit_task"]
    options = [
        *("-T", f"zoo={zoo.root}", "-T", f"store={store_path}", "-T", "agent=behaviour_scan"),
        *("-T", "message_limit=400", "--model", "auditgame/behaviour_scan"),
        *("--max-samples", "1", "--log-dir", str(tmp_path / "logs"), "--display", "none"),
    ]
    done = subprocess.run([*inspect, *options], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with Store(store_path) as store:
        rows = {s.attack: s for s in store.scores()}
    assert set(rows) == {"clean", "hidden_behaviour"}
    assert {s.auditor for s in rows.values()} == {"agent:behaviour_scan"}
    # The baseline's findings, as when it drives the tools itself (test_behaviours.py).
    assert rows["hidden_behaviour"].flagged and not rows["clean"].flagged
    assert rows["hidden_behaviour"].recovery["behaviour_correct"] == 1.0


def test_a_model_name_that_is_no_scripted_agent_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no such scripted agent; one of .*behaviour_scan"):
        ScriptedAgents("claude")
