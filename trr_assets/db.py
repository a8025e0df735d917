"""PostgreSQL: connections, the pool, named queries, migrations, row streams.

Every psycopg error that leaves this package is wrapped here (``wrap_errors``)
as a ``DatabaseError`` whose message names what was being done and never the
password. SQL lives in ``sql/``: ordered migrations, ``sql/optional/`` for
opt-in ones, and named queries in ``sql/queries/*.sql`` (``-- name: x``
blocks), read once on first use.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
import psycopg.conninfo
import structlog
from psycopg_pool import ConnectionPool, PoolTimeout

from trr_assets.config import DatabaseSettings
from trr_assets.errors import DatabaseError, MigrationError, UsageError, one_line
from trr_assets.keys import KeyRange
from trr_assets.records import RowInfo

log = structlog.get_logger()

APPLICATION_NAME = "trr-assets"
# pg_advisory_lock key held while migrating: a second `migrate` waits for the
# first and then finds nothing left to apply.
MIGRATE_LOCK_KEY = 0x7472725F6D6967  # "trr_mig"
NO_TRANSACTION_MARKER = "-- trr-assets: no-transaction"


@contextmanager
def wrap_errors(action: str) -> Iterator[None]:
    """Turn psycopg and pool errors into one-line ``DatabaseError``."""
    try:
        yield
    except psycopg.Error as exc:
        raise DatabaseError(f"database: {action}: {one_line(exc)}") from exc
    except Exception as exc:  # psycopg_pool.PoolTimeout and friends
        if type(exc).__module__.startswith("psycopg_pool"):
            raise DatabaseError(f"database: {action}: {one_line(exc)}") from exc
        raise


# --- connections ---------------------------------------------------------------


def _conninfo(url: str, **extra: Any) -> str:
    try:
        return psycopg.conninfo.make_conninfo(url, **extra)
    except psycopg.ProgrammingError as exc:
        raise DatabaseError(f"database: database.url is not a valid connection string ({one_line(exc)})") from exc


def connect(
    settings: DatabaseSettings, *, autocommit: bool = False, application_name: str = APPLICATION_NAME
) -> psycopg.Connection[Any]:
    """One connection, for a CLI command or a job's lifetime."""
    conninfo = _conninfo(
        settings.url,
        connect_timeout=max(1, round(settings.connect_timeout_seconds)),
        application_name=application_name,
    )
    with wrap_errors("cannot connect"):
        return psycopg.connect(conninfo, autocommit=autocommit)


def make_pool(
    settings: DatabaseSettings,
    *,
    name: str = APPLICATION_NAME,
    min_size: int | None = None,
    max_size: int | None = None,
    connect_workers: int = 3,
) -> ConnectionPool:
    """A closed pool: nothing connects until ``pool.open()`` (no I/O here).

    Connections are checked before use, so a restarted server costs one failed
    check, not an error in the caller. ``connect_workers`` threads open
    connections (see ``open_pool``).
    """
    conninfo = _conninfo(
        settings.url,
        connect_timeout=max(1, round(settings.connect_timeout_seconds)),
        application_name=name,
    )
    return ConnectionPool(
        conninfo,
        min_size=settings.pool_min_size if min_size is None else min_size,
        max_size=settings.pool_max_size if max_size is None else max_size,
        open=False,
        name=name,
        timeout=settings.connect_timeout_seconds,
        check=ConnectionPool.check_connection,
        reconnect_timeout=max(60.0, settings.connect_timeout_seconds),
        num_workers=max(1, connect_workers),
    )


def open_pool(pool: ConnectionPool, *, connections: int, timeout_seconds: float) -> None:
    """Open ``pool`` with one connection ready, and ``connections`` on their way.

    The first proves the database answers: if it does not, the error comes
    once, after one connection's retries (``DatabaseError`` after
    ``timeout_seconds``, the pool closed; psycopg_pool logs each attempt's
    error). The rest then open side by side in the background,
    ``connect_workers`` at a time, while the caller starts on the first.
    Left to itself, a pool grows one connection at a time as its clients
    wait, and against a distant server each costs round trips and a TLS
    handshake: the 8th shard of a pass would start 8 of them late.
    """
    try:
        pool.open(wait=True, timeout=timeout_seconds)
    except PoolTimeout as exc:  # its own message ("pool initialization incomplete") says less
        raise DatabaseError(
            f"database: cannot connect: no connection within {timeout_seconds:g} s (the log has each attempt's error)"
        ) from exc
    if connections > pool.min_size:
        pool.resize(min(connections, pool.max_size), pool.max_size)


# --- named queries -------------------------------------------------------------

_queries: dict[str, str] | None = None
_queries_lock = threading.Lock()
_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str, *, origin: str = "<string>") -> dict[str, str]:
    """``{name: sql}`` from ``-- name: x`` blocks."""
    found: dict[str, str] = {}
    parts = _NAME_LINE.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sql = body.strip()
        if name in found:
            raise ValueError(f"{origin}: query {name!r} is defined twice")
        found[name] = sql.rstrip(";").strip()
    return found


def query(name: str) -> str:
    """The SQL of the named query from ``sql/queries/*.sql`` (loaded once)."""
    global _queries
    if _queries is None:
        with _queries_lock:
            if _queries is None:
                loaded: dict[str, str] = {}
                folder = resources.files("trr_assets.sql").joinpath("queries")
                for entry in sorted(folder.iterdir(), key=lambda e: e.name):
                    if entry.name.endswith(".sql"):
                        for key, sql in parse_queries(entry.read_text("utf-8"), origin=entry.name).items():
                            if key in loaded:
                                raise ValueError(f"{entry.name}: query {key!r} is defined twice")
                            loaded[key] = sql
                _queries = loaded
    try:
        return _queries[name]
    except KeyError:
        raise KeyError(f"no named query {name!r} in sql/queries/") from None


# --- migrations ----------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    name: str  # "0004_show_assets" or "optional/org-read"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def in_transaction(self) -> bool:
        return not self.sql.lstrip().startswith(NO_TRANSACTION_MARKER)


def available_migrations() -> list[Migration]:
    """The numbered migrations in ``sql/``, in order."""
    folder = resources.files("trr_assets.sql")
    found = [
        Migration(entry.name[: -len(".sql")], entry.read_text("utf-8"))
        for entry in folder.iterdir()
        if re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", entry.name)
    ]
    return sorted(found, key=lambda m: m.name)


def optional_migrations() -> dict[str, Migration]:
    """``{feature: migration}`` for ``migrate --enable feature``."""
    folder = resources.files("trr_assets.sql").joinpath("optional")
    return {
        entry.name[: -len(".sql")]: Migration("optional/" + entry.name[: -len(".sql")], entry.read_text("utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    }


_MIGRATIONS_TABLE = """
create schema if not exists trr_assets;
create table if not exists trr_assets.schema_migrations (
  name text primary key,
  checksum text not null,
  applied_at timestamptz not null default now()
)
"""


def migrate(settings: DatabaseSettings, *, enable: Sequence[str] = ()) -> list[str]:
    """Apply pending migrations (and the named optional ones); return their names.

    A session-level advisory lock serializes concurrent runs: the second waits,
    then sees everything applied. Each file runs in its own transaction with
    its record, so a failure leaves no half-applied file behind; a file that
    starts with ``-- trr-assets: no-transaction`` (one statement, for
    ``CREATE INDEX CONCURRENTLY`` on a large table) runs outside one.
    """
    optional = optional_migrations()
    unknown = [name for name in enable if name not in optional]
    if unknown:
        choices = ", ".join(sorted(optional)) or "none"
        raise UsageError(f"migrate: unknown optional migration {unknown[0]!r} (known: {choices})")
    wanted = available_migrations() + [optional[name] for name in enable]
    applied_now: list[str] = []
    with connect(settings, autocommit=True, application_name="trr-assets migrate") as conn:
        with wrap_errors("migrate: cannot take the migration lock"):
            conn.execute("select pg_advisory_lock(%s)", (MIGRATE_LOCK_KEY,))
        try:
            with wrap_errors("migrate: cannot create trr_assets.schema_migrations"):
                with conn.transaction():
                    conn.execute(_MIGRATIONS_TABLE)
                done = _recorded(conn)
            for migration in wanted:
                if migration.name in done:
                    if done[migration.name] != migration.checksum:
                        log.warning("migration_changed_since_applied", migration=migration.name)
                    continue
                _apply(conn, migration)
                applied_now.append(migration.name)
                log.info("migration_applied", migration=migration.name)
                done = _recorded(conn)  # a migration may bring an older record up to date
        finally:
            if not conn.closed:
                with wrap_errors("migrate: cannot release the migration lock"):
                    conn.execute("select pg_advisory_unlock(%s)", (MIGRATE_LOCK_KEY,))
    return applied_now


def _recorded(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """{migration name: checksum} of the applied migrations."""
    return dict(conn.execute("select name, checksum from trr_assets.schema_migrations").fetchall())


def _apply(conn: psycopg.Connection[Any], migration: Migration) -> None:
    record = "insert into trr_assets.schema_migrations (name, checksum) values (%s, %s)"
    try:
        if migration.in_transaction:
            with conn.transaction():
                conn.execute(migration.sql.encode())  # bytes: no % interpolation
                conn.execute(record, (migration.name, migration.checksum))
        else:
            conn.execute(migration.sql.encode())
            conn.execute(record, (migration.name, migration.checksum))
    except psycopg.Error as exc:
        raise MigrationError(f"migrate: {migration.name} failed: {one_line(exc)}") from exc


def applied_migrations(conn: psycopg.Connection[Any]) -> list[str]:
    """Names recorded as applied, oldest first (empty before the first migrate)."""
    with wrap_errors("cannot read trr_assets.schema_migrations"):
        exists = conn.execute("select to_regclass('trr_assets.schema_migrations') is not null").fetchone()
        if not exists or not exists[0]:
            return []
        return [r[0] for r in conn.execute(
            "select name from trr_assets.schema_migrations order by applied_at, name"
        )]


# --- row streams (what diff merges against a listing) --------------------------

# The queries' columns are RowInfo's fields in order, so a row becomes a
# RowInfo by tuple.__new__ in C, with no Python frame per row.
_make_row_info = functools.partial(tuple.__new__, RowInfo)


def _row_info_maker(_cursor: Any) -> Callable[[Sequence[Any]], RowInfo]:
    return _make_row_info  # type: ignore[return-value]


def stream_rows(
    conn: psycopg.Connection[Any], bucket: str, key_range: KeyRange, *, itersize: int = 500
) -> Iterator[RowInfo]:
    """Rows and queued deletions of ``bucket`` in ``key_range``, in key order.

    One query, streamed: PostgreSQL sends rows while Python merges the ones
    already received (psycopg's ``Cursor.stream``, in chunks of
    ``itersize`` rows), in binary (no text parsing) and straight into
    ``RowInfo``; memory holds a chunk, whatever the range. (With a
    server-side cursor's FETCH, one side idles while the other works: 10-30 %
    slower over 1M rows on 2 cores, measured.) Run it inside a transaction.

    The query holds the connection until the stream is exhausted or closed:
    close it (``diff.merge`` does, however it ends) before using ``conn``
    again. Closing it early cancels the query, which aborts the transaction.
    """
    return _stream(conn, "stream_rows_in_range", bucket, key_range, itersize, first="stream_rows_in_utc")


def stream_row_keys(
    conn: psycopg.Connection[Any], bucket: str, key_range: KeyRange, *, itersize: int = 500
) -> Iterator[RowInfo]:
    """``stream_rows`` with only key, size and ETag in each row (``asset_id``
    and ``updated_at`` are None): all that sync compares, and cheaper to read."""
    return _stream(conn, "stream_row_keys_in_range", bucket, key_range, itersize)


def _stream(
    conn: psycopg.Connection[Any], name: str, bucket: str, key_range: KeyRange, itersize: int,
    *, first: str | None = None,
) -> Iterator[RowInfo]:
    """The named query's rows (after running the query ``first``, when
    given), streamed; nothing runs until the first row is asked for."""
    params = {"bucket": bucket, "start_at": key_range.start_at, "stop_before": key_range.stop_before}
    cursor = conn.cursor(binary=True, row_factory=_row_info_maker)
    # Chunked rows need libpq 17 (bundled with psycopg-binary); row by row otherwise.
    size = itersize if psycopg.capabilities.has_stream_chunked() else 1
    with wrap_errors(f"read rows of bucket {bucket}"):
        if first is not None:
            conn.execute(query(first))
        yield from cursor.stream(query(name), params, binary=True, size=size)
