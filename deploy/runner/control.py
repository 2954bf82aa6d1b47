"""A client of a run dir's supervisord: its XML-RPC API (supervisord.org/api.html) on the unix
socket in the run dir, with the standard library's xmlrpc.client (no install needed to stop it)."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tempfile
import xmlrpc.client
from pathlib import Path
from typing import Any


def socket_path(run_dir: Path) -> Path:
    """The control socket: in the run dir, unless that path is too long for a unix socket."""
    path = run_dir / "supervisor.sock"
    if len(os.fsencode(path)) < 100:
        return path
    digest = hashlib.sha256(os.fsencode(run_dir.resolve())).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"saga-supervisor-{digest}.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path, self._timeout = path, timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixConnection(self._path, self._timeout)


def rpc(run_dir: Path, timeout: float = 60.0) -> Any | None:
    """A client of this run dir's supervisord (``.supervisor.getState()``...); None: none runs."""
    path = socket_path(run_dir)
    if not path.exists():
        return None
    proxy = xmlrpc.client.ServerProxy("http://localhost/RPC2",
                                      transport=_UnixTransport(str(path), timeout))
    try:
        proxy.supervisor.getState()
    except (OSError, xmlrpc.client.Error):
        return None
    return proxy
