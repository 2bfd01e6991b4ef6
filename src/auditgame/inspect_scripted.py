"""The scripted agents as an Inspect model: ``inspect eval … --model auditgame/<agent>``.

The baseline agents (``auditgame.agents.scripted``) are functions that call tools one at a
time. Inspect drives a *model*: at every turn it sends the conversation so far and takes back
a tool call or a final answer. This adapter plays one through the other without keeping state:
each turn it runs the agent again from the start against the tool results already in the
conversation (the agents are deterministic given what their tools answered), and the first
call not yet answered is the turn's tool call; when the agent returns, the turn is a plain
answer and Inspect's ReAct agent stops. So the whole Inspect path — the task, one MCP server
per sample, the judge, the store, the report — runs from the command line with no model to
pay for and nothing to download, and what an LLM agent scores can be set beside the
baselines run the same way.

Outputs carry their (zero) usage and the token count is estimated from characters, so Inspect
never reaches for tiktoken's encoding, which it would download (docs/agents.md).
"""

from __future__ import annotations

import json
from typing import Any

from inspect_ai.model import (
    ChatMessage,
    ChatMessageAssistant,
    ChatMessageTool,
    GenerateConfig,
    ModelAPI,
    ModelOutput,
    ModelUsage,
    modelapi,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from auditgame.agents import scripted
from auditgame.agents.tools import ToolError


class _Pending(Exception):
    """The agent asked for a tool call the conversation has not answered yet."""

    def __init__(self, tool: str, args: dict[str, Any]) -> None:
        super().__init__(tool)
        self.tool = tool
        self.call_args = args


def answered(messages: list[ChatMessage]) -> list[tuple[str, str | None, str | None]]:
    """The tool calls of the conversation in order, each as (tool, its text result, its
    error message)."""
    results = {m.tool_call_id: m for m in messages if isinstance(m, ChatMessageTool)}
    out: list[tuple[str, str | None, str | None]] = []
    for message in messages:
        if isinstance(message, ChatMessageAssistant):
            for tool_call in message.tool_calls or []:
                result = results.get(tool_call.id)
                if result is None:
                    continue
                error = result.error.message if result.error is not None else None
                out.append((tool_call.function, result.text, error))
    return out


def next_turn(agent: str, messages: list[ChatMessage]) -> tuple[str, dict[str, Any]] | None:
    """The tool call the scripted ``agent`` makes next after ``messages``, or None when it has
    finished (it submitted its finding, or gave up)."""
    replay = iter(answered(messages))

    def call(tool: str, args: dict[str, Any] | None = None) -> Any:
        args = dict(args or {})
        recorded = next(replay, None)
        if recorded is None:
            raise _Pending(tool, args)
        name, text, error = recorded
        if name != tool:
            raise RuntimeError(
                f"the conversation answered {name!r} where scripted agent {agent!r} calls "
                f"{tool!r}: it was not written by this agent"
            )
        if error is not None:
            raise ToolError(error)
        try:
            return json.loads(text or "null")
        except json.JSONDecodeError:
            return text

    try:
        scripted.AGENTS[agent](call)
    except _Pending as pending:
        return pending.tool, pending.call_args
    return None


@modelapi(name="auditgame")
class ScriptedAgents(ModelAPI):
    """``--model auditgame/<agent>``, one of ``auditgame.agents.scripted.AGENTS``."""

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = GenerateConfig(),  # noqa: B008 (Inspect's signature)
        **model_args: Any,
    ) -> None:
        super().__init__(model_name, base_url, api_key, [], config)
        if model_name not in scripted.AGENTS:
            raise ValueError(
                f"auditgame/{model_name}: no such scripted agent; one of "
                f"{', '.join(sorted(scripted.AGENTS))}"
            )

    async def generate(
        self,
        input: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> ModelOutput:
        model = f"auditgame/{self.model_name}"
        turn = next_turn(self.model_name, input)
        if turn is None:
            output = ModelOutput.from_content(model, "Finding submitted.")
        else:
            output = ModelOutput.for_tool_call(model, turn[0], turn[1])
        return output.model_copy(update={"usage": ModelUsage()})

    async def count_text_tokens(self, text: str) -> int:
        """About four characters a token: an estimate that needs no tokenizer download."""
        return max(1, len(text) // 4)
