"""Serve a written report over HTTP on the loopback interface, for ``auditgame report --serve``.

The page works from ``file://`` too; serving helps when the report lives on a remote machine
(forward the port over SSH) or a browser restricts local files. Only 127.0.0.1 is bound, so
nothing is exposed to the network. Only the report's own files are served (``REPORT_FILES``,
regular files, never through a symbolic link): no listing, nothing else in the folder, which
may well hold a zoo, its key or the store.
"""

from __future__ import annotations

import os
import stat
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HOST = "127.0.0.1"
REPORT_FILES = {
    "report.html": "text/html; charset=utf-8",
    "report.md": "text/markdown; charset=utf-8",
}


class _Handler(BaseHTTPRequestHandler):
    """Serves ``REPORT_FILES`` from one folder, 404 for anything else, no log line."""

    def __init__(self, *args: Any, directory: str, **kwargs: Any) -> None:
        self.folder = Path(directory)
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        name = urlsplit(self.path).path.lstrip("/") or "report.html"
        data = self._read(name) if name in REPORT_FILES else None
        if data is None:
            self.send_error(404, "only the report is served here")
            return
        self.send_response(200)
        self.send_header("Content-Type", REPORT_FILES[name])
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _read(self, name: str) -> bytes | None:
        """The file's bytes if it is a regular file reached without a symbolic link."""
        try:
            fd = os.open(self.folder / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            return handle.read()

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
