"""Drive an agent over MCP: the SDK's own stdio client in front of ``auditgame serve-mcp``.

What a real agent's host does, for the scripted agents (``auditgame.agents.scripted``): start
the server as a subprocess, call its tools, read tool errors as refusals. It is how the tests
and ``benchmarks/agents.py`` prove that the MCP door gives an agent exactly what the session
gives in-process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from auditgame.agents.tools import ToolError

# Passed to the server besides what the SDK passes (HOME, PATH, ...): where the base models
# are cached, and the kernels and thread settings the referee runs under.
PASSED_ENV = ("AUDITGAME_CACHE", "ATEN_CPU_CAPABILITY", "OMP_WAIT_POLICY", "AUDITGAME_UNSEALED")


def serve_command(zoo: Path, options: Sequence[str] = ()) -> tuple[str, list[str]]:
    """The executable and arguments that serve ``zoo`` with this Python's ``auditgame``."""
    return sys.executable, ["-m", "auditgame", "serve-mcp", str(zoo), *options]


def play_over_mcp(
    zoo: Path, agent: Callable[[Callable[[str, dict[str, Any]], Any]], Any], options: Sequence[str]
) -> list[Any]:
    """Serve ``zoo`` (``serve-mcp`` with ``options``) and let ``agent`` audit every organism
    still open through the MCP client; each organism's ``submit_finding`` answer."""
    import anyio
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    command, args = serve_command(zoo, options)
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    server = StdioServerParameters(command=command, args=args, env=env)

    async def main() -> list[Any]:
        async with Client(server) as client:

            def call(name: str, arguments: dict[str, Any]) -> Any:
                result = anyio.from_thread.run(client.call_tool, name, arguments)
                text = "".join(getattr(block, "text", "") for block in result.content)
                if result.is_error:
                    raise ToolError(text)
                return json.loads(text)

            def audit_all() -> list[Any]:
                answers = []
                while call("describe", {})["organism"] is not None:
                    answers.append(agent(call))
                return answers

            return await anyio.to_thread.run_sync(audit_all)

    return anyio.run(main)
