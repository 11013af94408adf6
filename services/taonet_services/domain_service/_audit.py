"""The domain service's audit log: a hash-chained, checkpointed record in SQLite.

Every certificate the domain service issues and every revocation is one entry of
an audit chain (:mod:`taonet.audit`, kept by
:class:`taonet_services.storage.AuditStore` in ``DIR/audit.sqlite``); so is every
refused request, up to a rate, and beyond it one summary entry per client and
interval counts the rest; and so is what the service did with a changed domain
configuration (a ``guard`` entry: a new guard in force, or files refused and the guard
in force kept, see ``taonet_services._domain_watch``). Each entry carries the hash
of the one before it, and while the service runs its policy key signs a checkpoint
over the head every :data:`CHECKPOINT_EVERY` entries, on the first entry :data:`CHECKPOINT_INTERVAL`
seconds after the last one, and when the log is closed. ``taonet audit verify
--domain DIR`` then proves that no entry up to the last checkpoint was edited,
removed or moved. (Entries written after the last checkpoint, by a service that
was killed or by ``taonet domain revoke``, which opens the log without a signer,
are linked but not yet signed: the next checkpoint covers them.)

Why the policy key signs: it is the one key the running service holds, and the one
every verifier of the domain already trusts, so no other key has to be made,
kept and handed out. Its checkpoint signatures are under their own context
(``taonet audit checkpoint v1``), so none of them can pass for an attestation, a
guard or a certificate signature.

Every issued certificate is recorded in full. What a refusal records comes from
an unauthenticated client, so each of its text fields is bounded
(:func:`bounded`: cut with a marker that keeps the length and SHA-256 of the
whole value, so equal values still match); summaries are written with
:meth:`AuditLog.record_refusal_summary` (the rate is the service's business).

Certificate serials are up to 160 bits, more than an SQLite INTEGER holds, so
they are kept as canonical decimal TEXT. A ``domain_certs`` table indexes them
(serial, the entry that issued it, the entry that revoked it), written in the
same transaction as the entry. The set of revoked serials comes from it.

A log of the first layout (an ``events`` table, ``user_version`` 1) is carried
over when it is opened: its events are appended to the chain in order, with
their times and ``migrated_id``, and the old table is dropped, in one
transaction. The chain proves nothing about those events before that moment.

Certificates issued together are recorded in one transaction
(:meth:`AuditLog.record_issued_many`): one durable commit for all of them, each
still its own entry.

This module is synchronous (sqlite3 blocks). The service calls it through
``trio.to_thread.run_sync``; several threads may use one :class:`AuditLog` at
once. Every storage failure surfaces as :class:`taonet.ConfigError` naming the
file and what was being done, its cause the
:class:`~taonet_services.storage.StorageError` that says why (full, read-only,
...); nothing is reported recorded that was not committed.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar

import attrs
import structlog

from taonet import ConfigError
from taonet.audit import MAX_ACTOR_CHARS, MAX_DETAIL_CHARS, AuditEntry, AuditError
from taonet.audit import bounded as _bounded
from taonet.crypto import Signer
from taonet_services.storage import AuditStore, Database, StorageError

log = structlog.get_logger(__name__)
T = TypeVar("T")

__all__ = [
    "CHECKPOINT_EVERY",
    "CHECKPOINT_INTERVAL",
    "GUARD_OUTCOMES",
    "MAX_FIELD_CHARS",
    "MAX_PEER_CHARS",
    "SCHEMA_VERSION",
    "SUMMARY_CODE",
    "AuditEvent",
    "AuditLog",
    "EventKind",
    "IssuedCertificate",
    "bounded",
    "format_events",
]

#: The ``PRAGMA user_version`` of audit logs this module writes and reads (1 was the
#: first layout, without the chain; it is carried over when opened).
SCHEMA_VERSION: Final = 2
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

EventKind = Literal["issued", "refused", "revoked", "guard"]
_KINDS: Final = ("issued", "refused", "revoked", "guard")

_DOMAIN_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS domain_certs (
        serial TEXT PRIMARY KEY
            CHECK (serial <> '' AND serial NOT GLOB '*[^0-9]*'),
        issued_seq INTEGER NOT NULL,
        revoked_seq INTEGER
    )
    """,
    # Against accidents (a bug, an operator in the sqlite3 shell), not against someone
    # who drops them: the chain's hashes and checkpoints are what catch that.
    """
    CREATE TRIGGER IF NOT EXISTS audit_entries_no_update BEFORE UPDATE ON audit_entries
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be updated'); END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS audit_entries_no_delete BEFORE DELETE ON audit_entries
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be deleted'); END
    """,
)
#: The entry kinds of the domain service, and the kinds of :class:`AuditEvent`.
_ENTRY_KINDS: Final = {
    "cert_issued": "issued",
    "cert_refused": "refused",
    "cert_revoked": "revoked",
    "domain_guard": "guard",
}
#: The ``reason_code`` of a guard event: what a look at the domain's files did.
GUARD_OUTCOMES: Final = ("reloaded", "refused", "unchanged")
#: Entries are signed by a checkpoint at least this often (entries, seconds).
CHECKPOINT_EVERY: Final = 100
CHECKPOINT_INTERVAL: Final = 60.0
#: The ``user_version`` of the first layout (an ``events`` table, carried over).
_FIRST_LAYOUT: Final = 1


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
    :data:`SUMMARY_CODE`, ``peer`` the client). A ``guard`` event says what the
    service did with a changed domain configuration (``reason_code``, one of
    :data:`GUARD_OUTCOMES`; ``principal`` the guard in force after it, ``reason``
    why) with ``config_serial`` and ``count`` (the refusals it stands for).
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
    """``value`` if it has at most ``limit`` characters, else a cut of it that has
    (:func:`taonet.audit.bounded`: the start, then a marker giving the full length and
    the SHA-256 of the full value, so an operator can still tell two long values apart
    or match one against a known value)."""
    return _bounded(value, limit)


def _check_hex(name: str, value: str) -> str:
    try:
        bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a hex string") from None
    return value.lower()


def _key_hash_hex(value: str) -> str:
    return _check_hex("key_hash_hex", value)


def _attestation_hex(value: str) -> str:
    return _check_hex("attestation_sha256_hex", value)


@attrs.frozen
class IssuedCertificate:
    """What the audit log records of one issued certificate (checked when made:
    ValueError for a serial out of range or a hash that is not hex)."""

    serial: int = attrs.field()
    principal: str
    key_hash_hex: str = attrs.field(converter=_key_hash_hex)
    not_before_ns: int = attrs.field(converter=int)
    not_after_ns: int = attrs.field(converter=int)
    peer: str
    attestation_sha256_hex: str = attrs.field(converter=_attestation_hex)
    #: What the issuance means, when the issuer says (the quote service: the
    #: certificate is usable only by the TPM that activates it); None: nothing said.
    reason: str | None = None

    @serial.validator
    def _serial(self, _attribute: object, value: int) -> None:
        _check_serial(value)

    def entry_fields(self) -> dict[str, Any]:
        """The audit chain entry (the keyword arguments of ``AuditStore.append_in``)."""
        return {
            "kind": "cert_issued",
            "actor": bounded(self.peer, MAX_ACTOR_CHARS),
            "subject": bounded(self.principal, MAX_ACTOR_CHARS),
            "outcome": "ok",
            "details": {
                "serial": str(self.serial),
                "key_hash_hex": self.key_hash_hex,
                "not_before_ns": str(self.not_before_ns),
                "not_after_ns": str(self.not_after_ns),
                "attestation_sha256_hex": self.attestation_sha256_hex,
            }
            | ({} if self.reason is None else {"reason": bounded(self.reason)}),
        }


class AuditLog:
    """An open audit log; create or open one with :meth:`open`."""

    def __init__(
        self, db: Database, store: AuditStore, path: str, clock: Callable[[], int]
    ) -> None:
        self._db = db
        self._store = store
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], int] = time.time_ns,
        signer: Signer | None = None,
    ) -> AuditLog:
        """Open the log at ``path``, creating the file and its tables if missing.

        With ``signer`` (the domain's policy key, in the service) checkpoints are
        signed as entries are added and when the log is closed. A log of the first
        layout is carried over (see the module docstring). ConfigError if the file is
        not an SQLite database, is some other database, or has a schema version this
        code does not know.
        """
        where = os.fspath(path)
        try:
            db = Database.open_sync(where, pool_size=2)
        except StorageError as exc:
            raise ConfigError(f"audit log {where}: cannot open: {exc}") from exc
        try:
            store = AuditStore(
                db,
                signer=signer,
                checkpoint_every=CHECKPOINT_EVERY,
                checkpoint_interval=CHECKPOINT_INTERVAL,
                clock=clock,
            )
            try:
                db.transaction_sync(lambda cur: _prepare(cur, store, where))
            except StorageError as exc:
                raise ConfigError(f"audit log {where}: cannot open: {exc}") from exc
        except BaseException:
            db.close_sync()
            raise
        return cls(db, store, where, clock)

    @property
    def path(self) -> str:
        return self._path

    @property
    def store(self) -> AuditStore:
        """The chain underneath (for verification)."""
        return self._store

    def close(self) -> None:
        """Sign a last checkpoint (with a signer), then close; later calls raise ConfigError.

        Closing twice is fine. A checkpoint that cannot be written is logged, and the
        log closed all the same.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self._store.signer is not None:
                self._store.checkpoint_sync()
        except StorageError as exc:
            log.warning("audit_checkpoint_failed", path=self._path, reason=bounded(str(exc)))
        finally:
            self._db.close_sync()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A log left to the garbage collector has no last checkpoint and its SQLite
        # connections close whenever the collector runs. Say so on every Python (3.13's
        # sqlite3 does, 3.11 and 3.12 do not), as files and sockets do.
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed audit log {self._path}", ResourceWarning, stacklevel=1)

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
        reason: str | None = None,
    ) -> int:
        """Record a certificate issued; returns the event id (its entry's seq).
        ``reason`` (bounded) says what the issuance means, if the issuer says.

        ConfigError if a certificate with this serial was already recorded.
        """
        issued = IssuedCertificate(
            serial=serial,
            principal=principal,
            key_hash_hex=key_hash_hex,
            not_before_ns=not_before_ns,
            not_after_ns=not_after_ns,
            peer=peer,
            attestation_sha256_hex=attestation_sha256_hex,
            reason=reason,
        )
        (result,) = self.record_issued_many([issued])
        if isinstance(result, ConfigError):
            raise result
        return result

    def record_issued_many(
        self, certificates: Sequence[IssuedCertificate]
    ) -> list[int | ConfigError]:
        """Record several issued certificates in one transaction (one durable commit).

        Returns, for each in order, its event id, or a ConfigError if a certificate
        with its serial was already recorded (earlier, or before it in this batch):
        that one is not recorded, the others are. ConfigError (raised) if the
        transaction fails: then none of them is recorded.
        """
        if not certificates:
            return []
        texts = [_check_serial(c.serial) for c in certificates]

        def fn(cur: Any) -> list[int | ConfigError]:
            results: list[int | ConfigError] = []
            fresh: list[tuple[int, str, dict[str, Any]]] = []
            taken: set[str] = set()
            for i, (text, cert) in enumerate(zip(texts, certificates, strict=True)):
                cur.execute("SELECT 1 FROM domain_certs WHERE serial = ?", (text,))
                if text in taken or cur.fetchone() is not None:
                    results.append(
                        ConfigError(f"audit log {self._path}: serial {text} was already issued")
                    )
                    continue
                taken.add(text)
                results.append(0)
                fresh.append((i, text, cert.entry_fields()))
            entries = self._store.append_many_in(cur, [fields for _, _, fields in fresh])
            cur.executemany(
                "INSERT INTO domain_certs (serial, issued_seq) VALUES (?, ?)",
                [(text, entry.seq) for (_, text, _), entry in zip(fresh, entries, strict=True)],
            )
            for (i, _, _), entry in zip(fresh, entries, strict=True):
                results[i] = entry.seq
            return results

        what = (
            f"record issued serial {texts[0]}"
            if len(texts) == 1
            else f"record {len(texts)} issued certificates"
        )
        return self._write(what, fn)

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
        details = {
            "reason_code": bounded(reason_code, _MAX_CODE_CHARS),
            "reason": bounded(reason),
        }
        if attestation_sha256_hex is not None:
            details["attestation_sha256_hex"] = _check_hex(
                "attestation_sha256_hex", attestation_sha256_hex
            )
        return self._append(
            "record a refusal",
            kind="cert_refused",
            actor=bounded(peer, MAX_PEER_CHARS),
            subject="" if principal is None else bounded(principal),
            outcome="refused",
            details=details,
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
        return self._append(
            "record a refusal summary",
            kind="cert_refused",
            actor=bounded(peer, MAX_PEER_CHARS),
            subject="",
            outcome=SUMMARY_CODE,
            details={
                "reason_code": SUMMARY_CODE,
                "reason": reason,
                "count": str(total),
                "codes": json.dumps(counts, sort_keys=True),
                "first_ns": str(int(first_ns)),
                "last_ns": str(int(last_ns)),
            },
        )

    def record_guard(
        self, *, outcome: str, config_serial: int, guard: str, reason: str, count: int = 1
    ) -> int:
        """Record what the service did with a changed domain configuration.

        ``outcome`` is one of :data:`GUARD_OUTCOMES`; ``guard`` names the guard in
        force after it and ``config_serial`` its configuration's serial; ``reason``
        says why (cut to :data:`MAX_FIELD_CHARS`); ``count`` is how many refusals this
        entry stands for. Returns the event id.
        """
        if outcome not in GUARD_OUTCOMES:
            raise ValueError(f"outcome must be one of {GUARD_OUTCOMES}, not {outcome!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive int, got {count!r}")
        return self._append(
            "record a guard change",
            kind="domain_guard",
            actor="",
            subject=bounded(guard, MAX_ACTOR_CHARS),
            outcome="refused" if outcome == "refused" else "ok",
            details={
                "reason_code": outcome,
                "reason": bounded(reason),
                "config_serial": str(int(config_serial)),
                "count": str(count),
            },
        )

    def revoke(self, serial: int, *, reason: str) -> bool:
        """Record the revocation of ``serial``; False if it was already revoked.

        ConfigError if no certificate with this serial was ever issued.
        """
        text = _check_serial(serial)

        def fn(cur: Any) -> bool:
            cur.execute(
                "SELECT issued_seq, revoked_seq FROM domain_certs WHERE serial = ?", (text,)
            )
            row = cur.fetchone()
            if row is None:
                raise _Refused(
                    f"audit log {self._path}: no certificate with serial {serial} was issued"
                )
            if row[1] is not None:
                return False
            issued = self._store.entries_in(cur, since_seq=row[0] - 1, limit=1)
            principal = issued[0].subject if issued and issued[0].seq == row[0] else ""
            entry = self._store.append_in(
                cur,
                kind="cert_revoked",
                actor="",
                subject=principal,
                outcome="ok",
                details={"serial": text, "reason": bounded(reason, MAX_DETAIL_CHARS)},
            )
            cur.execute(
                "UPDATE domain_certs SET revoked_seq = ? WHERE serial = ?", (entry.seq, text)
            )
            return True

        return self._write(f"revoke serial {serial}", fn)

    # Reads.

    def is_revoked(self, serial: int) -> bool:
        text = _check_serial(serial)

        def fn(cur: Any) -> bool:
            cur.execute(
                "SELECT 1 FROM domain_certs WHERE serial = ? AND revoked_seq IS NOT NULL", (text,)
            )
            return cur.fetchone() is not None

        return self._read("check a revocation", fn)

    def revoked_serials(self) -> frozenset[int]:
        def fn(cur: Any) -> frozenset[int]:
            cur.execute("SELECT serial FROM domain_certs WHERE revoked_seq IS NOT NULL")
            return frozenset(int(serial) for (serial,) in cur.fetchall())

        return self._read("list revoked serials", fn)

    def issued(self, serial: int) -> AuditEvent | None:
        """The event that recorded the certificate ``serial``, if any."""
        text = _check_serial(serial)

        def fn(cur: Any) -> AuditEvent | None:
            cur.execute("SELECT issued_seq FROM domain_certs WHERE serial = ?", (text,))
            row = cur.fetchone()
            if row is None:
                return None
            entries = self._store.entries_in(cur, since_seq=row[0] - 1, limit=1)
            return _event(entries[0]) if entries else None

        return self._read(f"look up serial {serial}", fn)

    def events(self, *, limit: int | None = None, since_id: int = 0) -> list[AuditEvent]:
        """Events with an id above ``since_id``, oldest first, at most ``limit`` of them.

        Only the domain service's own entries (issued, refused, revoked, guard) are events;
        others in the chain (a carried-over log's marker) are skipped.
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        kinds = tuple(_ENTRY_KINDS)

        def fn(cur: Any) -> list[AuditEvent]:
            cur.execute(
                "SELECT seq FROM audit_entries WHERE seq > ? AND kind IN (?, ?, ?, ?)"
                " ORDER BY seq LIMIT ?",
                (since_id, *kinds, -1 if limit is None else limit),
            )
            seqs = [seq for (seq,) in cur.fetchall()]
            if not seqs:
                return []
            entries = self._store.entries_in(
                cur, since_seq=seqs[0] - 1, limit=seqs[-1] - seqs[0] + 1
            )
            wanted = set(seqs)
            return [_event(e) for e in entries if e.seq in wanted]

        return self._read("read events", fn)

    # Plumbing.

    def _append(self, what: str, **fields: Any) -> int:
        return self._write(what, lambda cur: self._store.append_in(cur, **fields).seq)

    def _write(self, what: str, fn: Callable[[Any], T]) -> T:
        return self._call(what, fn, write=True)

    def _read(self, what: str, fn: Callable[[Any], T]) -> T:
        return self._call(what, fn, write=False)

    def _call(self, what: str, fn: Callable[[Any], T], *, write: bool) -> T:
        if self._closed:
            raise ConfigError(f"audit log {self._path}: cannot {what}: the log is closed")
        try:
            return self._db.transaction_sync(fn, write=write)
        except _Refused as exc:
            raise ConfigError(str(exc)) from None
        except (StorageError, AuditError) as exc:
            raise ConfigError(f"audit log {self._path}: cannot {what}: {exc}") from exc


class _Refused(Exception):
    """A write the log refuses (raised inside a transaction, so it rolls back)."""


def _prepare(cur: Any, store: AuditStore, where: str) -> None:
    """Create the schema, check the one that is there, or carry over the first layout."""
    (version,) = cur.execute("PRAGMA user_version").fetchone()
    tables = {
        name for (name,) in cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if version == 0:
        if tables:
            raise ConfigError(f"audit log {where}: an SQLite database, but not a taonet audit log")
    elif version == _FIRST_LAYOUT:
        if "events" not in tables:
            raise ConfigError(f"audit log {where}: the events table is missing")
    elif version != SCHEMA_VERSION:
        raise ConfigError(
            f"audit log {where}: schema version {version} is not supported"
            f" (this taonet reads version {SCHEMA_VERSION})"
        )
    elif not {"audit_entries", "domain_certs"} <= tables:
        raise ConfigError(f"audit log {where}: the audit tables are missing")
    store.create_in(cur)
    for statement in _DOMAIN_SCHEMA:
        cur.execute(statement)
    if version == _FIRST_LAYOUT:
        _carry_over(cur, store, where)
    if version != SCHEMA_VERSION:
        cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _carry_over(cur: Any, store: AuditStore, where: str) -> None:
    """Append every event of the first layout to the chain, in order; drop the old table."""
    rows = cur.execute(
        "SELECT id, time_ns, kind, serial, principal, reason_code, reason, peer, detail"
        " FROM events ORDER BY id"
    ).fetchall()
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(list(row), default=str).encode() + b"\n")
        id_, time_ns, kind, serial, principal, reason_code, reason, peer, detail = row
        try:
            extra = json.loads(detail)
            if not isinstance(extra, dict):
                raise TypeError("not a JSON object")
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"audit log {where}: event {id_} of the old layout is malformed: {exc}"
            ) from None
        details = {
            k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True))
            for k, v in extra.items()
        }
        details["migrated_id"] = str(id_)
        if serial is not None:
            details["serial"] = str(serial)
        if kind == "refused":
            details["reason_code"] = bounded(reason_code or "", _MAX_CODE_CHARS)
            details["reason"] = bounded(reason or "")
            outcome = SUMMARY_CODE if reason_code == SUMMARY_CODE else "refused"
        else:
            outcome = "ok"
            if kind == "revoked":
                details["reason"] = bounded(reason or "", MAX_DETAIL_CHARS)
        entry = store.append_in(
            cur,
            kind=f"cert_{kind}",
            actor=bounded(peer or "", MAX_ACTOR_CHARS),
            subject=bounded(principal or "", MAX_ACTOR_CHARS),
            outcome=outcome,
            details={k: bounded(v, MAX_DETAIL_CHARS) for k, v in details.items()},
            time_ns=int(time_ns),
        )
        if kind == "issued":
            cur.execute(
                "INSERT INTO domain_certs (serial, issued_seq) VALUES (?, ?)", (serial, entry.seq)
            )
        elif kind == "revoked":
            cur.execute(
                "UPDATE domain_certs SET revoked_seq = ? WHERE serial = ?", (entry.seq, serial)
            )
    store.append_in(
        cur,
        kind="audit_carried_over",
        actor="",
        subject=where[-MAX_ACTOR_CHARS:],
        outcome="ok",
        details={"events": str(len(rows)), "events_sha256": digest.hexdigest()},
    )
    cur.execute("DROP TABLE events")
    log.info("audit_carried_over", path=where, events=len(rows))


def _event(entry: AuditEntry) -> AuditEvent:
    """The event an entry of the domain service records."""
    d = dict(entry.details)
    try:
        kind = _ENTRY_KINDS[entry.kind]
        detail: dict[str, Any]
        serial = None if "serial" not in d else int(d["serial"])
        if kind == "issued":
            detail = {
                "key_hash_hex": d["key_hash_hex"],
                "not_before_ns": int(d["not_before_ns"]),
                "not_after_ns": int(d["not_after_ns"]),
                "attestation_sha256_hex": d["attestation_sha256_hex"],
            }
            return AuditEvent(
                id=entry.seq,
                time_ns=entry.time_ns,
                kind="issued",
                serial=serial,
                principal=entry.subject,
                reason_code=None,
                reason=d.get("reason"),
                peer=entry.actor,
                detail=detail,
            )
        if kind == "refused":
            if d.get("reason_code") == SUMMARY_CODE:
                detail = {
                    "count": int(d["count"]),
                    "codes": json.loads(d["codes"]),
                    "first_ns": int(d["first_ns"]),
                    "last_ns": int(d["last_ns"]),
                }
            else:
                detail = {}
                if "attestation_sha256_hex" in d:
                    detail["attestation_sha256_hex"] = d["attestation_sha256_hex"]
            return AuditEvent(
                id=entry.seq,
                time_ns=entry.time_ns,
                kind="refused",
                serial=None,
                principal=entry.subject or None,
                reason_code=d.get("reason_code"),
                reason=d.get("reason"),
                peer=entry.actor,
                detail=detail,
            )
        if kind == "guard":
            return AuditEvent(
                id=entry.seq,
                time_ns=entry.time_ns,
                kind="guard",
                serial=None,
                principal=entry.subject or None,
                reason_code=d["reason_code"],
                reason=d.get("reason"),
                peer=entry.actor,
                detail={"config_serial": int(d["config_serial"]), "count": int(d["count"])},
            )
        return AuditEvent(
            id=entry.seq,
            time_ns=entry.time_ns,
            kind="revoked",
            serial=serial,
            principal=entry.subject or None,
            reason_code=None,
            reason=d.get("reason"),
            peer=entry.actor,
            detail={},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"audit log event {entry.seq} is malformed: {exc}") from None


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
