"""A throwaway PostgreSQL server: initdb and pg_ctl on a temporary folder, loopback, a free port, trust auth.

    with server() as url:              # postgresql://frugal@127.0.0.1:PORT (no database name)
        db = new_database(url)         # postgresql://frugal@127.0.0.1:PORT/t_1a2b3c4d5e6f, empty

Shared by tests/test_accounts.py (one server per test session) and benchmarks/serve.py (the PostgreSQL
accounts store beside SQLite), so both start it the same way. It lives in tools/, outside the layered
packages of .importlinter: nothing in frugal/, ml/, tasks/ or flows/ may depend on a test server.
Where PostgreSQL cannot run here, `server()` raises `Unavailable` with the reason (the tests skip, the
benchmark reports it), never a half-started server.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

USER = "frugal"


class Unavailable(RuntimeError):
    """PostgreSQL cannot be started on this machine; the message says why and how to fix it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindir() -> Path:
    """The newest installed PostgreSQL's bin folder (Debian keeps one per major version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4])) or [shutil.which("initdb")]
    if found[-1] is None:
        raise Unavailable("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH): apt-get install postgresql")
    return Path(found[-1]).parent


def _run_as(folder: Path) -> list[str]:
    """The command prefix that runs a tool as the postgres user when we are root, which PostgreSQL refuses to run as."""
    if os.geteuid() != 0:
        return []
    try:
        shutil.chown(folder, "postgres")
    except LookupError:
        raise Unavailable("running as root, and there is no `postgres` user to run PostgreSQL as") from None
    runuser = shutil.which("runuser") or next((p for p in ("/usr/sbin/runuser", "/sbin/runuser") if Path(p).exists()), None)
    if runuser is None:
        raise Unavailable("running as root, and there is no `runuser` to run PostgreSQL as the postgres user")
    return [runuser, "-u", "postgres", "--"]


def _tools(folder: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    bindir, prefix = _bindir(), _run_as(folder)
    return lambda tool, *args: subprocess.run([*prefix, bindir / tool, *map(str, args)], capture_output=True, text=True)


@contextmanager
def server() -> Iterator[str]:
    """A PostgreSQL server of our own until the block ends; yields its URL without a database name."""
    folder = Path(tempfile.mkdtemp(prefix="frugal-pg-"))  # a short path: the unix socket's must fit in 107 bytes
    data, port, log = folder / "data", free_port(), folder / "server.log"
    pg = None
    try:
        pg = _tools(folder)
        init = pg("initdb", "-D", data, "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync")
        if init.returncode != 0:
            raise Unavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"  # fsync off: throwaway data
        if pg("pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start").returncode != 0:
            raise Unavailable(f"PostgreSQL did not start: {log.read_text().strip()[-500:] if log.exists() else 'no log'}")
        yield f"postgresql://{USER}@127.0.0.1:{port}"
    finally:
        if pg is not None and (data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server_url: str) -> str:
    """Creates an empty database with a fresh name on the server; returns its URL."""
    from sqlalchemy import create_engine, text  # here, so that importing this module costs nothing

    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        engine = create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")  # CREATE DATABASE refuses a transaction
    except ImportError:
        raise Unavailable('the PostgreSQL driver psycopg2 is not installed: pip install -c requirements/lock.txt -e ".[team]"') from None
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return f"{server_url}/{name}"
