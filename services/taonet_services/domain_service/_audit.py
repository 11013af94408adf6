"""The domain service's audit log: an append-only record in SQLite.

Every certificate the domain service issues and every revocation is one row of
the ``events`` table; so is every refused request, up to a rate, and beyond it
one summary row per client and interval counts the rest. Rows are never changed
or removed:
triggers abort any UPDATE or DELETE on the table, so a bug (or a hurried operator
with the sqlite3 shell) cannot rewrite history by accident. They do not stop
someone who can write the file from dropping the table; the log is a record, not
a tamper-proof ledger.

Every issued certificate is recorded in full. What a refusal records comes from
an unauthenticated client, so each of its text fields is bounded
(:func:`bounded`: cut with a marker that keeps the length and SHA-256 of the
whole value, so equal values still match); summaries are written with
:meth:`AuditLog.record_refusal_summary` (the rate is the service's business).

Certificate serials are up to 160 bits, more than an SQLite INTEGER holds, so
they are stored as canonical decimal TEXT (indexed). Revocation is an event too:
the set of revoked serials is derived from the log.

This module is synchronous (sqlite3 blocks). The service calls it through
``trio.to_thread.run_sync``. An :class:`AuditLog` may be handed from thread to
thread but is used by one thread at a time; an internal lock serializes calls
made concurrently anyway. Every sqlite3 failure surfaces as
:class:`taonet.ConfigError` naming the file and what was being done.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import sqlite3
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, Literal

import attrs

from taonet import ConfigError

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_PEER_CHARS",
    "SCHEMA_VERSION",
    "SUMMARY_CODE",
    "AuditEvent",
    "AuditLog",
    "EventKind",
    "bounded",
    "format_events",
]

#: The ``PRAGMA user_version`` of audit logs this module writes and reads.
SCHEMA_VERSION: Final = 1
#: Largest serial (exclusive): X.509 serials are at most 20 octets.
_SERIAL_LIMIT: Final = 1 << 160

#: Longest principal or reason a refusal records (a real name fits: hosts cap names
#: at 1024 bytes); longer ones are cut by :func:`bounded`.
MAX_FIELD_CHARS: Final = 1024
#: Longest peer description recorded.
MAX_PEER_CHARS: Final = 256
#: Longest error code, and most codes, a refusal summary records.
_MAX_CODE_CHARS: Final = 64
_MAX_SUMMARY_CODES: Final = 16
#: The ``reason_code`` of a refusal summary row.
SUMMARY_CODE: Final = "summarized"

EventKind = Literal["issued", "refused", "revoked"]
_KINDS: Final = ("issued", "refused", "revoked")

_SCHEMA: Final = (
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ns INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('issued', 'refused', 'revoked')),
        serial TEXT CHECK (serial IS NULL OR (serial <> '' AND serial NOT GLOB '*[^0-9]*')),
        principal TEXT,
        reason_code TEXT,
        reason TEXT,
        peer TEXT NOT NULL,
        detail TEXT NOT NULL,
        CHECK ((kind = 'refused') = (serial IS NULL))
    )
    """,
    "CREATE INDEX events_serial ON events (serial)",
    "CREATE UNIQUE INDEX events_one_issue ON events (serial) WHERE kind = 'issued'",
    "CREATE UNIQUE INDEX events_one_revocation ON events (serial) WHERE kind = 'revoked'",
    """
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: events cannot be updated'); END
    """,
    """
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: events cannot be deleted'); END
    """,
)
_COLUMNS: Final = "id, time_ns, kind, serial, principal, reason_code, reason, peer, detail"


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class AuditEvent:
    """One row of the audit log.

    ``serial`` is None for refusals. ``detail`` holds the kind-specific extras:
    ``key_hash_hex``, ``not_before_ns``, ``not_after_ns`` and
    ``attestation_sha256_hex`` for issued certificates, ``attestation_sha256_hex``
    (when known) for refusals, and ``count``, ``codes`` (refusals per error code),
    ``first_ns`` and ``last_ns`` for a refusal summary (``reason_code`` is
    :data:`SUMMARY_CODE`, ``peer`` the client).
    """

    id: int
    time_ns: int
    kind: EventKind = attrs.field(validator=attrs.validators.in_(_KINDS))
    serial: int | None
    principal: str | None
    reason_code: str | None
    reason: str | None
    peer: str
    detail: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_frozen_mapping, hash=False, repr=lambda d: repr(dict(d))
    )


def _check_serial(serial: int) -> str:
    if isinstance(serial, bool) or not isinstance(serial, int):
        raise TypeError(f"serial must be an int, not {type(serial).__name__}")
    if not 0 <= serial < _SERIAL_LIMIT:
        raise ValueError("serial must be from 0 to 2**160 - 1")
    return str(serial)


def bounded(value: str, limit: int = MAX_FIELD_CHARS) -> str:
    """``value`` if it has at most ``limit`` characters, else a cut of it that has.

    The cut keeps the start of ``value`` and ends with a marker giving the full
    length and the SHA-256 of the full value (UTF-8), e.g.
    ``key(...).Program("AAAA...[cut: 60310 chars, sha256 3f2a...]``, so an operator can
    still tell two long values apart or match one against a known value.
    """
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    marker = f"...[cut: {len(value)} chars, sha256 {digest}]"
    if limit <= len(marker):
        return marker[:limit]
    return value[: limit - len(marker)] + marker


def _check_hex(name: str, value: str) -> str:
    try:
        bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a hex string") from None
    return value.lower()


class AuditLog:
    """An open audit log; create or open one with :meth:`open`."""

    def __init__(self, connection: sqlite3.Connection, path: str, clock: Callable[[], int]) -> None:
        self._conn: sqlite3.Connection | None = connection
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, clock: Callable[[], int] = time.time_ns
    ) -> AuditLog:
        """Open the log at ``path``, creating the file and its tables if missing.

        ConfigError if the file is not an SQLite database, is some other database,
        or has a schema version this code does not know.
        """
        where = os.fspath(path)
        try:
            conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ConfigError(f"audit log {where}: cannot open: {exc}") from exc
        try:
            _prepare(conn, where)
        except BaseException:
            conn.close()
            raise
        return cls(conn, where, clock)

    @property
    def path(self) -> str:
        return self._path

    def close(self) -> None:
        """Close the database; later calls raise ConfigError. Closing twice is fine."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Writes.

    def record_issued(
        self,
        *,
        serial: int,
        principal: str,
        key_hash_hex: str,
        not_before_ns: int,
        not_after_ns: int,
        peer: str,
        attestation_sha256_hex: str,
    ) -> int:
        """Record a certificate issued; returns the event id.

        ConfigError if a certificate with this serial was already recorded.
        """
        text = _check_serial(serial)
        detail = {
            "key_hash_hex": _check_hex("key_hash_hex", key_hash_hex),
            "not_before_ns": int(not_before_ns),
            "not_after_ns": int(not_after_ns),
            "attestation_sha256_hex": _check_hex("attestation_sha256_hex", attestation_sha256_hex),
        }
        with self._transaction(f"record issued serial {serial}") as conn:
            if _find(conn, "issued", text) is not None:
                raise ConfigError(f"audit log {self._path}: serial {serial} was already issued")
            return self._insert(conn, "issued", text, principal, None, None, peer, detail)

    def record_refused(
        self,
        *,
        principal: str | None,
        reason_code: str,
        reason: str,
        peer: str,
        attestation_sha256_hex: str | None,
    ) -> int:
        """Record a refused request; returns the event id.

        Every text field is cut to its bound (:func:`bounded`): the principal and
        the reason to :data:`MAX_FIELD_CHARS`, the peer to :data:`MAX_PEER_CHARS`.
        """
        detail: dict[str, Any] = {}
        if attestation_sha256_hex is not None:
            detail["attestation_sha256_hex"] = _check_hex(
                "attestation_sha256_hex", attestation_sha256_hex
            )
        with self._transaction("record a refusal") as conn:
            return self._insert(
                conn,
                "refused",
                None,
                None if principal is None else bounded(principal),
                bounded(reason_code, _MAX_CODE_CHARS),
                bounded(reason),
                bounded(peer, MAX_PEER_CHARS),
                detail,
            )

    def record_refusal_summary(
        self, *, peer: str, codes: Mapping[str, int], first_ns: int, last_ns: int
    ) -> int:
        """Record refusals from ``peer`` that were counted, not recorded one by one.

        ``codes`` maps error codes to counts (at most 16 codes are kept by name, the
        rest are added up under ``"other"``). Returns the event id.
        """
        counts: dict[str, int] = {}
        for code, n in sorted(codes.items(), key=lambda item: (-item[1], item[0])):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"refusal counts must be positive ints, got {n!r}")
            key = bounded(str(code), _MAX_CODE_CHARS)
            if len(counts) >= _MAX_SUMMARY_CODES - 1 and key not in counts:
                key = "other"
            counts[key] = counts.get(key, 0) + n
        if not counts:
            raise ValueError("a refusal summary needs at least one refusal")
        total = sum(counts.values())
        reason = bounded(
            f"{total} refusals counted, not recorded one by one: "
            + ", ".join(f"{code} {n}" for code, n in counts.items())
        )
        detail = {
            "count": total,
            "codes": counts,
            "first_ns": int(first_ns),
            "last_ns": int(last_ns),
        }
        with self._transaction("record a refusal summary") as conn:
            return self._insert(
                conn,
                "refused",
                None,
                None,
                SUMMARY_CODE,
                reason,
                bounded(peer, MAX_PEER_CHARS),
                detail,
            )

    def revoke(self, serial: int, *, reason: str) -> bool:
        """Record the revocation of ``serial``; False if it was already revoked.

        ConfigError if no certificate with this serial was ever issued.
        """
        text = _check_serial(serial)
        with self._transaction(f"revoke serial {serial}") as conn:
            issued = _find(conn, "issued", text)
            if issued is None:
                raise ConfigError(
                    f"audit log {self._path}: no certificate with serial {serial} was issued"
                )
            if _find(conn, "revoked", text) is not None:
                return False
            self._insert(conn, "revoked", text, issued.principal, None, reason, "", {})
            return True

    # Reads.

    def is_revoked(self, serial: int) -> bool:
        text = _check_serial(serial)
        with self._reading("check a revocation") as conn:
            return _find(conn, "revoked", text) is not None

    def revoked_serials(self) -> frozenset[int]:
        with self._reading("list revoked serials") as conn:
            rows = conn.execute("SELECT serial FROM events WHERE kind = 'revoked'").fetchall()
        return frozenset(int(serial) for (serial,) in rows)

    def issued(self, serial: int) -> AuditEvent | None:
        """The event that recorded the certificate ``serial``, if any."""
        text = _check_serial(serial)
        with self._reading(f"look up serial {serial}") as conn:
            return _find(conn, "issued", text)

    def events(self, *, limit: int | None = None, since_id: int = 0) -> list[AuditEvent]:
        """Events with an id above ``since_id``, oldest first, at most ``limit`` of them."""
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        with self._reading("read events") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?",  # noqa: S608
                (since_id, -1 if limit is None else limit),
            ).fetchall()
            return [_event(row) for row in rows]

    # Plumbing.

    def _connection(self, what: str) -> sqlite3.Connection:
        if self._conn is None:
            raise ConfigError(f"audit log {self._path}: cannot {what}: the log is closed")
        return self._conn

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection(what)
            try:
                yield conn
            except sqlite3.Error as exc:
                raise ConfigError(f"audit log {self._path}: cannot {what}: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection(what)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise ConfigError(f"audit log {self._path}: cannot {what}: {exc}") from exc

    def _insert(
        self,
        conn: sqlite3.Connection,
        kind: EventKind,
        serial: str | None,
        principal: str | None,
        reason_code: str | None,
        reason: str | None,
        peer: str,
        detail: Mapping[str, Any],
    ) -> int:
        cursor = conn.execute(
            "INSERT INTO events (time_ns, kind, serial, principal, reason_code, reason, peer,"
            " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                int(self._clock()),
                kind,
                serial,
                principal,
                reason_code,
                reason,
                peer,
                json.dumps(dict(detail), sort_keys=True),
            ),
        )
        row_id = cursor.lastrowid
        assert row_id is not None
        return row_id


def _prepare(conn: sqlite3.Connection, where: str) -> None:
    """Switch to WAL, then create the schema or check the one that is there."""
    try:
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == 0:
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise ConfigError(
                        f"audit log {where}: an SQLite database, but not a taonet audit log"
                    )
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise ConfigError(
                    f"audit log {where}: schema version {version} is not supported"
                    f" (this taonet reads version {SCHEMA_VERSION})"
                )
            elif not conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'"
            ).fetchone()[0]:
                raise ConfigError(f"audit log {where}: the events table is missing")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise ConfigError(f"audit log {where}: cannot open: {exc}") from exc


def _find(conn: sqlite3.Connection, kind: EventKind, serial: str) -> AuditEvent | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE kind = ? AND serial = ?",  # noqa: S608
        (kind, serial),
    ).fetchone()
    return None if row is None else _event(row)


def _event(row: tuple[Any, ...]) -> AuditEvent:
    id_, time_ns, kind, serial, principal, reason_code, reason, peer, detail = row
    try:
        parsed = json.loads(detail)
        if not isinstance(parsed, dict):
            raise TypeError("not a JSON object")
        return AuditEvent(
            id=id_,
            time_ns=time_ns,
            kind=kind,
            serial=None if serial is None else int(serial),
            principal=principal,
            reason_code=reason_code,
            reason=reason,
            peer=peer,
            detail=parsed,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"audit log event {id_} is malformed: {exc}") from None


def _iso(time_ns: int) -> str:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{nanos // 1000:06d}Z"


def _clean(value: object) -> str:
    """One printable token: missing values as '-', control characters escaped."""
    if value is None or value == "":
        return "-"
    text = str(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_events(events: Iterable[AuditEvent]) -> list[str]:
    """One human-readable line per event (for ``taonet domain audit``)."""
    lines = []
    for event in events:
        reason = event.reason
        if event.reason_code:
            reason = f"{event.reason_code}: {reason}" if reason else event.reason_code
        lines.append(
            f"{_iso(event.time_ns)} #{event.id} {event.kind:<7} serial={_clean(event.serial)}"
            f" principal={_clean(event.principal)} peer={_clean(event.peer)}"
            f" reason={_clean(reason)}"
        )
    return lines
