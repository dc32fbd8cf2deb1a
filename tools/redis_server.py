"""A throwaway Redis server: redis-server on a temporary folder, loopback, a free port, nothing saved.

    with server() as url:              # redis://127.0.0.1:PORT/0
        ...

For tests/test_locks.py (the shared step locks, tasks/plumbing/redis_locks.py). It lives in tools/, beside
postgres.py and outside the layered packages: nothing in frugal/, ml/, tasks/ or flows/ may depend on a test
server. Where Redis cannot run here, `server()` raises `Unavailable` with the reason (the tests skip), never
a half-started server. (Named redis_server, not redis: a script run from tools/ would shadow redis-py.)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Unavailable(RuntimeError):
    """Redis cannot be started on this machine; the message says why and how to fix it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def server(start_timeout_s: float = 10.0) -> Iterator[str]:
    """A Redis server of our own until the block ends; yields its URL (database 0)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise Unavailable("Redis is not installed (no redis-server on PATH): apt-get install redis-server")
    folder, port = Path(tempfile.mkdtemp(prefix="frugal-redis-")), free_port()
    log = folder / "server.log"
    # No RDB snapshots, no append-only file: throwaway data, and nothing written beside the tests' files.
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*args, "--logfile", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"redis-server did not start: {log.read_text().strip()[-500:] if log.exists() else 'no log'}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
