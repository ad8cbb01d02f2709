"""Engines, sessions and schema migrations for the catalog (SQLite in WAL mode or PostgreSQL)."""

from __future__ import annotations

import logging
from collections import namedtuple
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Select, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

#: What a read-only lookup of plain columns takes: an ORM session, or a bare connection, which
#: runs the same statement about four times faster (no ORM execution layer; measured 0.10 vs
#: 0.41 ms for the principal and instance lookups of one frame request, SQLite).
Reader = Session | Connection

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL for concurrent readers, FULL sync so a committed row survives power loss.

    The driver's own transaction handling is switched off so that :func:`_sqlite_begin` can
    start write transactions with ``BEGIN IMMEDIATE`` (no lock-upgrade deadlocks).
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # PS3.4 §C.2.2.2: wildcard matching is case-sensitive (PostgreSQL's LIKE already is);
    # person names are matched case-insensitively by lower-casing both sides.
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    """Writers take the write lock up front; readers use a deferred (snapshot) transaction;
    connections marked ``sqlite_statement_reads`` (:func:`statement_reader`) none: each of
    their statements reads its own snapshot, and a ``BEGIN`` would cost as much as the query."""
    options = connection.get_execution_options()
    if options.get("sqlite_statement_reads", False):
        return
    connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN")


def create_catalog_engine(url: str, *, pool_size: int = 10, **options: Any) -> Engine:
    """Create the engine for ``url`` with the settings each dialect needs.

    SQLite files get their parent directory created, WAL mode and a busy timeout; PostgreSQL
    gets a pre-pinged pool.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **options
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, **options
    )


def statement_reader(engine: Engine) -> Engine:
    """``engine`` for lookups whose every statement stands alone (a :data:`Reader`): on SQLite
    without a surrounding transaction (autocommit reads, one snapshot per statement); on
    PostgreSQL unchanged."""
    return engine.execution_options(sqlite_statement_reads=True)


def alembic_config(engine: Engine) -> Config:
    """An Alembic configuration bound to ``engine`` (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent; safe to run at every start)."""
    command.upgrade(alembic_config(engine), revision)


def session_factory(engine: Engine, *, writer: bool = False) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (values are handed to adapters).

    ``writer=True`` sessions take SQLite's write lock when they begin (``BEGIN IMMEDIATE``);
    on PostgreSQL the option has no effect.
    """
    bind = engine.execution_options(sqlite_immediate=True) if writer else engine
    return sessionmaker(bind, expire_on_commit=False)


class DirectLookup:
    """A SELECT of plain columns (strings and integers: nothing to convert on the way in or
    out), compiled once per dialect and run on the DBAPI cursor of a bare :data:`Reader`
    connection, as SQLAlchemy would run it but without its execution layer (events, compiled
    cache key, result processing). For the two lookups of every image request (the caller and
    the instance): the principal lookup takes 3 µs this way and 24 µs through
    ``Connection.execute`` (SQLite). With an ORM session it is simply executed there.

    Errors are SQLAlchemy's (:class:`sqlalchemy.exc.DBAPIError` and its subclasses, as
    ``execute`` raises them), and a connection found disconnected is invalidated.
    """

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        self._row = namedtuple("_row", list(statement.selected_columns.keys()))  # type: ignore[misc]
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def all(self, reader: Reader, parameters: Mapping[str, Any]) -> list[Any]:
        """Every row for ``parameters`` (the statement's bound parameter names)."""
        if not isinstance(reader, Connection):
            return list(reader.execute(self.statement, dict(parameters)))
        dialect = reader.dialect
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            form = self.statement.compile(dialect=dialect)
            order = tuple(form.positiontup) if form.positiontup is not None else None
            compiled = self._compiled[dialect.name] = (form.string, order)
        sql, order = compiled
        values: Any = tuple(parameters[n] for n in order) if order is not None else parameters
        dbapi_connection = reader.connection.dbapi_connection
        cursor = dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql, values)
            return [self._row(*row) for row in cursor.fetchall()]
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, cursor):
                reader.invalidate(exc)
            raise DBAPIError.instance(sql, values, exc, dialect.loaded_dbapi.Error) from exc
        finally:
            cursor.close()
