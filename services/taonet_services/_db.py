"""One database layer for services: SQLite embedded, PostgreSQL to scale out.

``await Database.open(url)`` takes ``sqlite:///abs/path.db`` (or a bare path) or
``postgresql://...`` (psycopg 3, the ``postgres`` extra; imported only for such
URLs). Work is done in transactions::

    def add(cur: Cursor) -> int:
        cur.execute(db.sql("INSERT INTO t (a) VALUES (?) RETURNING id"), (1,))
        return cur.fetchone()[0]

    row_id = await db.transaction(add)

``fn(cursor)`` runs in a worker thread (``trio.to_thread.run_sync`` behind a
CapacityLimiter as wide as the connection pool) inside one transaction that is
committed when ``fn`` returns and rolled back when it raises. Writes take the
database's write lock up front: ``BEGIN IMMEDIATE`` on SQLite (so concurrent
writers wait, up to ``busy_timeout``, rather than fail half-way); on PostgreSQL a
READ COMMITTED transaction (or SERIALIZABLE with ``serializable=True``) in which
callers lock what they read-modify-write (``SELECT ... FOR UPDATE``). A
transaction that PostgreSQL aborts for a serialization failure or a deadlock is
retried (``fn`` is called again, on a fresh transaction, so it must do nothing
but database work); past the retries it is a :class:`StorageError` with reason
CONFLICT.

Placeholders are qmark (``?``) in the text passed to :meth:`Database.sql`, which
converts them for psycopg (``%s``; a literal ``%`` is escaped). Portable column
types: ``INTEGER``/``BIGINT``, ``TEXT``, :attr:`Database.blob_type` for bytes
(``BLOB`` or ``BYTEA``) and :attr:`Database.id_column` for an auto-numbered key;
``INSERT ... RETURNING`` works on both.

Every failure of the database itself is a :class:`StorageError` with a
:class:`StorageReason`: UNAVAILABLE (cannot open or reach it, locked too long),
READ_ONLY, FULL, CORRUPT, CONFLICT (a constraint, or a serialization failure
past the retries). A transaction that raises was not committed, except in one
case the message says: a PostgreSQL connection lost during COMMIT, where the
outcome is unknown (the caller must not report success either way). Nothing is
reported stored that was not committed: the call returns only after COMMIT
returned.

SQLite opens in WAL mode with ``synchronous=FULL`` (a committed transaction is
on disk when COMMIT returns) and foreign keys on.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import structlog
import trio

from taonet import TaoError

__all__ = [
    "Cursor",
    "Database",
    "Dialect",
    "StorageError",
    "StorageReason",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")
Dialect = Literal["sqlite", "postgresql"]

#: How long an SQLite writer waits for another writer's lock, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
#: How often a PostgreSQL transaction aborted by a serialization failure or a deadlock
#: is tried again before it is a CONFLICT.
PG_RETRIES: Final = 20
#: Connection attempts to PostgreSQL time out after this many seconds.
PG_CONNECT_TIMEOUT: Final = 10
#: Longest text of a driver error kept in a StorageError message.
_MAX_DETAIL: Final = 300

_EXTRA_HINT: Final = (
    "PostgreSQL support needs psycopg 3: pip install 'taonet[postgres]' (or 'psycopg[binary]>=3.2')"
)


class StorageReason(enum.Enum):
    """Why the database failed."""

    UNAVAILABLE = "unavailable"
    READ_ONLY = "read_only"
    FULL = "full"
    CORRUPT = "corrupt"
    CONFLICT = "conflict"


class StorageError(TaoError):
    """The database failed; ``reason`` says how. The transaction was not committed."""

    def __init__(self, message: str, *, reason: StorageReason) -> None:
        super().__init__(message)
        self.reason = reason


class Cursor(Protocol):
    """What ``fn`` gets: the DB-API cursor both drivers share (qmark via :meth:`Database.sql`)."""

    def execute(self, query: Any, params: Sequence[Any] = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


# SQLite primary result codes (the low byte of sqlite_errorcode).
_SQLITE_REASONS: Final = {
    5: StorageReason.UNAVAILABLE,  # SQLITE_BUSY
    6: StorageReason.UNAVAILABLE,  # SQLITE_LOCKED
    8: StorageReason.READ_ONLY,  # SQLITE_READONLY
    10: StorageReason.UNAVAILABLE,  # SQLITE_IOERR
    11: StorageReason.CORRUPT,  # SQLITE_CORRUPT
    13: StorageReason.FULL,  # SQLITE_FULL
    14: StorageReason.UNAVAILABLE,  # SQLITE_CANTOPEN
    19: StorageReason.CONFLICT,  # SQLITE_CONSTRAINT
    26: StorageReason.CORRUPT,  # SQLITE_NOTADB
}


def _sqlite_reason(exc: sqlite3.Error) -> StorageReason:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        if code & 0xFF == 10:
            # SQLITE_IOERR_WRITE / _FSYNC / ... on a full disk or a read-only remount
            errno_text = str(exc).lower()
            if "full" in errno_text:
                return StorageReason.FULL
        reason = _SQLITE_REASONS.get(code & 0xFF)
        if reason is not None:
            return reason
    if isinstance(exc, sqlite3.IntegrityError):
        return StorageReason.CONFLICT
    text = str(exc).lower()
    if "full" in text:
        return StorageReason.FULL
    if "readonly" in text or "read-only" in text:
        return StorageReason.READ_ONLY
    if "malformed" in text or "not a database" in text:
        return StorageReason.CORRUPT
    return StorageReason.UNAVAILABLE


def _pg_reason(exc: BaseException) -> StorageReason:
    import psycopg
    from psycopg import errors

    if isinstance(exc, errors.DiskFull | errors.OutOfMemory):
        return StorageReason.FULL
    if isinstance(exc, errors.ReadOnlySqlTransaction):
        return StorageReason.READ_ONLY
    if isinstance(exc, errors.DataCorrupted | errors.IndexCorrupted):
        return StorageReason.CORRUPT
    if isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected):
        return StorageReason.CONFLICT
    if isinstance(exc, psycopg.IntegrityError):
        return StorageReason.CONFLICT
    return StorageReason.UNAVAILABLE


def _parse_url(url: str | os.PathLike[str]) -> tuple[Dialect, str]:
    if isinstance(url, os.PathLike) or "://" not in url:
        path = Path(url)
        if not path.is_absolute():
            path = path.absolute()
        return "sqlite", str(path)
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path_text = unquote(parts.path)
        if parts.netloc or not path_text.startswith("/"):
            raise StorageError(
                f"database URL {_redact(url)}: an SQLite URL is sqlite:///absolute/path.db",
                reason=StorageReason.UNAVAILABLE,
            )
        return "sqlite", path_text
    if parts.scheme in ("postgresql", "postgres"):
        return "postgresql", url
    raise StorageError(
        f"database URL {_redact(url)}: the scheme must be sqlite:// or postgresql://",
        reason=StorageReason.UNAVAILABLE,
    )


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and reports (the storage layer's and
    ``taonet loadtest``'s), at most 300 characters.

    The password goes from the authority (``user:***@``, through the last ``@``) and
    from every query parameter libpq would read as ``password`` (percent-encoded too,
    ``%70assword=``); a libpq ``key=value`` text keeps no ``password=`` value."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return re.sub(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)", r"\1***", url)[:300]
    authority, slash, tail = rest.partition("/")
    tail = "/" + tail if slash else ""
    authority, q, query = authority.partition("?")
    if q:
        tail = "?" + query + tail  # no path: the query follows the authority
    if "@" in authority:
        userinfo, hostports = authority.partition("@")[0], authority.rpartition("@")[2]
        if ":" in userinfo or authority.count("@") > 1:
            authority = f"{userinfo.partition(':')[0]}:***@{hostports}"
    path, q, query = tail.partition("?")
    if q:
        pieces = []
        for piece in query.split("&"):
            key = unquote(piece.partition("=")[0]).strip()
            pieces.append(f"{key}=***" if key.lower() == "password" else piece)
        path += "?" + "&".join(pieces)
    return f"{scheme}://{authority}{path}"[:300]


def _redact(url: str) -> str:
    """The URL without a password, for messages (:func:`redact_url`)."""
    return redact_url(url)[:_MAX_DETAIL]


class _Backend:
    """The dialect-specific half of :class:`Database` (synchronous, used from worker threads)."""

    dialect: Dialect
    where: str

    def connect(self) -> Any:
        raise NotImplementedError

    def run(self, conn: Any, fn: Callable[[Any], T], *, write: bool, serializable: bool) -> T:
        raise NotImplementedError

    def close(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()


class _SQLite(_Backend):
    dialect: Dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.where = path

    def connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.where,
                isolation_level=None,
                check_same_thread=False,
                timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
            )
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StorageError(
                    f"database {self.where}: cannot switch to WAL (journal mode {mode})",
                    reason=StorageReason.READ_ONLY,
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            # A read of the schema: an SQLite file that is not a database fails here.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise self._error("cannot open", exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _error(self, what: str, exc: sqlite3.Error) -> StorageError:
        reason = _sqlite_reason(exc)
        if reason is StorageReason.UNAVAILABLE and self._read_only_fs():
            # A WAL database on a read-only file system cannot even be opened.
            reason = StorageReason.READ_ONLY
        return StorageError(f"database {self.where}: {what}: {_detail(exc)}", reason=reason)

    def _read_only_fs(self) -> bool:
        try:
            return bool(os.statvfs(Path(self.where).parent).f_flag & os.ST_RDONLY)
        except OSError:
            return False

    def run(
        self, conn: sqlite3.Connection, fn: Callable[[Any], T], *, write: bool, serializable: bool
    ) -> T:
        cur = conn.cursor()
        try:
            try:
                if not write:
                    cur.execute("PRAGMA query_only = ON")
                # SQLite transactions are serializable; IMMEDIATE takes the write lock now.
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                result = fn(cur)
                cur.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            finally:
                if not write:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA query_only = OFF")
                cur.close()
        except sqlite3.Error as exc:
            raise self._error("transaction failed, nothing was committed", exc) from exc
        return result


class _Postgres(_Backend):
    dialect: Dialect = "postgresql"

    def __init__(self, url: str) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise StorageError(_EXTRA_HINT, reason=StorageReason.UNAVAILABLE) from exc
        self.url = url
        self.where = _redact(url)

    def connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise StorageError(
                f"database {self.where}: cannot connect: {_detail(exc)}", reason=_pg_reason(exc)
            ) from exc

    def run(self, conn: Any, fn: Callable[[Any], T], *, write: bool, serializable: bool) -> T:
        import psycopg
        from psycopg import errors

        level = "SERIALIZABLE" if serializable else "READ COMMITTED"
        # A write transaction does not say READ WRITE: a database or server set to
        # default_transaction_read_only (or a standby) then refuses the write itself.
        mode = "" if write else " READ ONLY"
        for attempt in range(PG_RETRIES + 1):
            try:
                with conn.cursor() as cur:
                    cur.execute(f"BEGIN ISOLATION LEVEL {level}{mode}")
                    try:
                        result = fn(cur)
                    except BaseException:
                        with contextlib.suppress(psycopg.Error):
                            cur.execute("ROLLBACK")
                        raise
                    try:
                        cur.execute("COMMIT")
                    except psycopg.OperationalError as exc:
                        if conn.closed or conn.broken:
                            raise StorageError(
                                f"database {self.where}: the connection was lost during"
                                f" COMMIT; the outcome is unknown: {_detail(exc)}",
                                reason=StorageReason.UNAVAILABLE,
                            ) from exc
                        raise
            except (errors.SerializationFailure, errors.DeadlockDetected) as exc:
                if attempt < PG_RETRIES and not conn.broken:
                    log.debug("db_retry", attempt=attempt, reason=_detail(exc))
                    continue
                raise StorageError(
                    f"database {self.where}: transaction failed after {attempt + 1} tries,"
                    f" nothing was committed: {_detail(exc)}",
                    reason=StorageReason.CONFLICT,
                ) from exc
            except psycopg.Error as exc:
                raise StorageError(
                    f"database {self.where}: transaction failed, nothing was committed:"
                    f" {_detail(exc)}",
                    reason=_pg_reason(exc),
                ) from exc
            else:
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def healthy(conn: Any) -> bool:
        return not (conn.closed or conn.broken)


class Database:
    """An open database; see the module docstring. Open with :meth:`open`."""

    def __init__(self, backend: _Backend, *, pool_size: int) -> None:
        self._backend = backend
        self._pool_size = pool_size
        self._limiter = trio.CapacityLimiter(pool_size)
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    async def open(cls, url: str | os.PathLike[str], *, pool_size: int = 4) -> Database:
        """Open ``url`` (``sqlite:///abs/path``, a path, or ``postgresql://...``).

        Checks that the database can be reached by opening one connection.
        StorageError if it cannot (the reason says why), or if psycopg is missing
        for a PostgreSQL URL (the message names the extra to install).
        """
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        dialect, where = _parse_url(url)
        backend: _Backend = _SQLite(where) if dialect == "sqlite" else _Postgres(where)
        db = cls(backend, pool_size=pool_size)
        conn = await trio.to_thread.run_sync(backend.connect, limiter=db._limiter)
        db._idle.append(conn)
        return db

    @classmethod
    def open_sync(cls, url: str | os.PathLike[str], *, pool_size: int = 4) -> Database:
        """:meth:`open` for synchronous code (blocks; use :meth:`transaction_sync`)."""
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        dialect, where = _parse_url(url)
        backend: _Backend = _SQLite(where) if dialect == "sqlite" else _Postgres(where)
        db = cls(backend, pool_size=pool_size)
        db._idle.append(backend.connect())
        return db

    def close_sync(self) -> None:
        """:meth:`aclose` for synchronous code."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self._backend.close(conn)

    @property
    def dialect(self) -> Dialect:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._backend.dialect

    @property
    def where(self) -> str:
        """The file or the URL without its password, for messages."""
        return self._backend.where

    @property
    def blob_type(self) -> str:
        """The column type for bytes: ``BLOB`` on SQLite, ``BYTEA`` on PostgreSQL."""
        return "BLOB" if self.dialect == "sqlite" else "BYTEA"

    @property
    def id_column(self) -> str:
        """An auto-numbered primary key column: ``INTEGER PRIMARY KEY`` or ``BIGSERIAL ...``."""
        return "INTEGER PRIMARY KEY" if self.dialect == "sqlite" else "BIGSERIAL PRIMARY KEY"

    def sql(self, text: str) -> str:
        """``text`` with qmark placeholders, converted for this database's driver."""
        if self.dialect == "sqlite":
            return text
        return text.replace("%", "%%").replace("?", "%s")

    async def transaction(
        self, fn: Callable[[Any], T], *, write: bool = True, serializable: bool = False
    ) -> T:
        """Run ``fn(cursor)`` in one transaction in a worker thread; its result once committed.

        ``write=False`` opens a read-only transaction. On PostgreSQL,
        ``serializable=True`` runs at SERIALIZABLE isolation; either way a
        serialization failure or deadlock is retried, calling ``fn`` again.
        """
        return await trio.to_thread.run_sync(
            self._run, fn, write, serializable, limiter=self._limiter
        )

    def transaction_sync(
        self, fn: Callable[[Any], T], *, write: bool = True, serializable: bool = False
    ) -> T:
        """:meth:`transaction` for code already in a worker thread (blocks)."""
        return self._run(fn, write, serializable)

    def _run(self, fn: Callable[[Any], T], write: bool, serializable: bool) -> T:
        conn = self._take()
        keep = True
        try:
            return self._backend.run(conn, fn, write=write, serializable=serializable)
        except BaseException:
            keep = isinstance(self._backend, _SQLite) or _Postgres.healthy(conn)
            raise
        finally:
            self._give(conn, keep)

    def _take(self) -> Any:
        with self._lock:
            if self._closed:
                raise StorageError(
                    f"database {self.where}: closed", reason=StorageReason.UNAVAILABLE
                )
            if self._idle:
                return self._idle.pop()
        return self._backend.connect()

    def _give(self, conn: Any, keep: bool) -> None:
        with self._lock:
            if keep and not self._closed and len(self._idle) < self._pool_size:
                self._idle.append(conn)
                return
        self._backend.close(conn)

    async def aclose(self) -> None:
        """Close every connection; later transactions raise StorageError. Idempotent."""
        self.close_sync()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
