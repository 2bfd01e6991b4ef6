"""Auditing agents: tools over a subject (``tools``), the referee's session that counts and
judges (``session``), and front doors for agents (``serve``: MCP; ``scripted``: agents that
need no model)."""
