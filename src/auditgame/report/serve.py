"""Serve a written report over HTTP on the loopback interface, for ``auditgame report --serve``.

The page works from ``file://`` too; serving helps when the report lives on a remote machine
(forward the port over SSH) or a browser restricts local files. Only 127.0.0.1 is bound, so
nothing is exposed to the network.
"""

from __future__ import annotations

from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


class _Handler(SimpleHTTPRequestHandler):
    """Serves files from one folder, without a log line per request."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def report_server(folder: Path, port: int = 0) -> ThreadingHTTPServer:
    """A server for ``folder`` on 127.0.0.1:``port`` (0: a free port), not yet serving.

    Call ``serve_forever()`` (``shutdown()`` from another thread stops it), then
    ``server_close()``.

    Raises:
        FileNotFoundError: If ``folder`` does not exist.
        OSError: If the port cannot be bound (in use, or privileged).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder to serve")
    return ThreadingHTTPServer((HOST, port), partial(_Handler, directory=str(folder)))


def report_url(server: ThreadingHTTPServer) -> str:
    """The URL of ``report.html`` on ``server``."""
    return f"http://{HOST}:{server.server_address[1]}/report.html"
