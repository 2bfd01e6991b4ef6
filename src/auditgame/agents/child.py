"""The agent's side of the boundary: ``python -m auditgame.agents.child`` inside the sandbox.

It holds one subject at a time and answers tool calls on it, over the same wire as an
auditor's child (``run.child.serve``: one JSON request per line on stdin, one JSON reply per
line on the original stdout). The agent never reaches this process directly: its calls come
through the referee (``auditgame.agents.session``), which counts them against the budget.
The sandbox sees what an auditor's does — the staged organism and the data of its access
level — so no tool can answer with anything else.

Requests (``op``):
    ``hello``: {}: reply {info: {}} once torch and the tools are imported.
    ``open``: {task, access, reference, seed}: load the subject staged under ``/in/<task>``.
    ``tool``: {task, name, args, tokens_left}: reply {result, usage} (``Tools.call``); a refused
        call is an ``ok: false`` reply whose error's first line is ``ToolError: <why>``.
"""

from __future__ import annotations

from typing import Any

from auditgame import registry
from auditgame.access import Access
from auditgame.agents.tools import Tools, tools_class
from auditgame.families.base import family_named
from auditgame.run.child import inputs, load_subject, main


class ToolServer:
    def __init__(self) -> None:
        self.tools: Tools | None = None

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "hello":
            registry.load_builtins("family")
            return {"info": {}}
        if op == "open":
            folder = inputs() / str(request["task"])
            subject = load_subject(folder, Access(int(request["access"])), request["reference"])
            family = family_named(subject.card.family)
            if family is None:
                raise RuntimeError(f"no registered family {subject.card.family!r}")
            self.tools = tools_class(family)(subject, int(request["seed"]))
            return {}
        if op == "tool":
            if self.tools is None:
                raise RuntimeError("no subject is open")
            result, usage = self.tools.call(
                str(request["name"]), dict(request["args"]), int(request["tokens_left"])
            )
            return {"result": result, "usage": usage.to_dict()}
        raise RuntimeError(f"unknown request {op!r}")


if __name__ == "__main__":
    main(ToolServer().handle)
