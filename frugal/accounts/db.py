"""The database underneath the accounts store: engines for SQLite and PostgreSQL, the counter upsert, migrations."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session

from frugal.accounts.models import Base
from frugal.errors import FrugalError

BACKENDS = ("sqlite", "postgresql")
READ_ONLY = "frugal_read_only"  # an execution option: this connection only reads (SQLite: no write lock at BEGIN)
_FIX_URL = "Set database_url in configs/serve.yaml (or FRUGAL_DATABASE_URL) to sqlite:///PATH or postgresql://USER:PASS@HOST/DB."


def parse_url(url: str, error: type[FrugalError]) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise error(f"The accounts database URL {url!r} is not a database URL.", _FIX_URL) from None
    if parsed.get_backend_name() not in BACKENDS:
        raise error(f"The accounts database {shown(parsed)} is {parsed.get_backend_name()}; only SQLite and PostgreSQL are supported.",
                    _FIX_URL)  # fmt: skip
    return parsed


def shown(url: URL) -> str:
    """The URL for messages: never the password."""
    return url.render_as_string(hide_password=True)


def make_engine(url: URL, error: type[FrugalError]) -> Engine:
    if url.get_backend_name() == "postgresql":
        try:
            return create_engine(url, pool_pre_ping=True)  # a restarted PostgreSQL must not cost a request a stale connection
        except ImportError:
            raise error("The PostgreSQL driver psycopg2 is not installed.", 'pip install -c requirements/lock.txt -e ".[team]"') from None
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})  # a writer waits up to 30 s for the lock instead of failing
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite otherwise opens its own DEFERRED transaction at the first write; `_sqlite_begin` decides instead.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA foreign_keys = ON")
    # WAL: readers (key checks) never wait for the writer, and a commit appends instead of rewriting a journal.
    # synchronous=NORMAL keeps every commit across a killed process (it is the OS that holds the WAL), not across power loss.
    _wal(dbapi_connection)
    dbapi_connection.execute("PRAGMA synchronous = NORMAL")


def _wal(dbapi_connection: Any, patience_s: float = 30.0) -> None:
    """Switch the file to WAL once (the mode is kept in the file). The switch needs the file to itself and SQLite answers
    "locked" at once, without waiting, while another process is switching it too: so wait here, as for any lock."""
    deadline = time.monotonic() + patience_s
    while dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0].lower() not in ("wal", "memory"):
        try:
            dbapi_connection.execute("PRAGMA journal_mode = WAL")  # a file system without WAL keeps the old mode, no error
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_begin(connection: Connection) -> None:
    # IMMEDIATE takes the write lock at BEGIN, so a read-check-write (admit) is one step against every other
    # thread and process, and a second writer waits for the lock rather than failing when it upgrades a read lock.
    # A read-only session (a key check, a report) takes no lock: in WAL it reads the last commit while writers go on.
    connection.exec_driver_sql("BEGIN" if connection.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


def increment(session: Session, model: type[Base], keys: dict[str, Any], **amounts: int | float) -> None:
    """Add to a counter row, creating it at zero if missing: one INSERT ... ON CONFLICT DO UPDATE, so concurrent adds all count."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(model).values(**keys, **amounts)
    columns = model.__table__.c
    session.execute(statement.on_conflict_do_update(index_elements=list(keys), set_={k: columns[k] + v for k, v in amounts.items()}))


def migrate(engine: Engine, url: URL, error: type[FrugalError]) -> None:
    """alembic upgrade head, in one transaction that also serialises concurrent callers (see migrations/env.py)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "frugal.accounts:migrations")  # shipped in the package: no alembic.ini
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        detail = " ".join(str(exc.orig).split())  # psycopg2's messages span lines; the CLI prints one
        raise error(f"Cannot open the accounts database {shown(url)}: {detail}",
                    f"Check that the database is up and reachable. {_FIX_URL}") from None  # fmt: skip
