"""An audit chain (:mod:`taonet.audit`) kept in a :class:`Database`.

Two tables (and ``taonet_schema``, which records their version):

* ``audit_entries``: one row per entry (``seq`` is the primary key), with the
  ``prev_hash`` it links to, the ``entry_hash`` computed when it was written and
  the last checkpoint then (``checkpoint_seq``);
* ``audit_checkpoints``: signed checkpoints.

Appending reads the head (the last entry, and the last checkpoint) and inserts
the next entry, in one transaction; nothing else is written, so an append costs
one row more than the write it records. Appends serialize: on SQLite every write
transaction holds the database's write lock (``BEGIN IMMEDIATE``); on PostgreSQL
the appender takes a transaction-scoped advisory lock (``pg_advisory_xact_lock``)
first, so appends from several processes or replicas on one database wait for
each other and the chain stays one line. The lock is held until the surrounding
transaction commits: keep audited transactions short.

:meth:`AuditStore.append_in` appends inside a caller's transaction (the cursor
``Database.transaction`` passes to ``fn``), so the entry commits or rolls back
with the write it records; :meth:`AuditStore.append` runs its own.

With a ``signer``, a checkpoint over the new head is signed in the same
transaction every ``checkpoint_every`` entries, or on the first append
``checkpoint_interval`` seconds after the last checkpoint; :meth:`checkpoint`
signs one now (services call it on shutdown, so that entries written last are
covered: entries after the last checkpoint can be cut without a trace).

A store remembers the last entry it knows committed, ``(seq, hash)``: its own
appends once :meth:`AuditStore.append` returns or a caller reports its transaction
committed (:meth:`AuditStore.committed`), and every head it read. Each append checks
that the chain still holds that entry (the head at or past its seq, the row at that
seq with that hash: one primary-key read). A chain cut behind it (newest entries
deleted by someone with write access to the database) or edited there is refused:
``audit_chain_behind`` is logged as an error and the append raises StorageError
(CORRUPT), so nothing more is recorded, or released, over a chain that lost entries.

Entry MACs. Entry hashes use no key: anyone who can write the database can append
an entry that links to the head. A store given a ``mac_key`` (the secret server
derives one from its master key, so replicas sharing a database share it) stores
each entry it writes with ``mac`` = HMAC-SHA256(key, entry hash), and before it
appends after, or signs a checkpoint over, entries it did not write itself (another
replica's, or anyone's) it reads them (from the last entry it knows to the head: one
query, a page at a time) and checks each: it links to the one before, its fields
hash to its stored hash, and its MAC verifies. One that does not is refused like a
cut chain: ``audit_chain_forged`` is logged as an error and the append (or the
checkpoint) raises StorageError (CORRUPT); nothing is released over it until the
entry is removed. On its first look after opening, a store knows no entry yet: it
checks the head alone (every entry before it is bound to it by the hash links,
which ``taonet audit verify`` checks, and the writers checked those before it).

Entries written before a store had a key carry no MAC (``mac`` NULL; a store
without a key, such as the domain service's, writes none and checks none). The
first time a keyed store opens a database it records the head then (seq, hash,
under a MAC) in ``audit_mac_start``; entries without a MAC are accepted at or
before that head only, and a chain cut below it is refused. What a database alone
cannot show: someone with write access who removes that record *and* every MAC
(the database put back to its form before the upgrade) is taken for an upgrade; a
checkpoint signed before (``taonet audit verify --cert``) still covers the entries
up to it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs
import structlog

from taonet.audit import (
    GENESIS,
    AuditEntry,
    AuditError,
    AuditReason,
    ChainSummary,
    Checkpoint,
    decode_details,
    encode_details,
    sign_checkpoint,
    verify_chain,
)
from taonet.crypto import Signer, Verifier
from taonet_services._db import Database, StorageError, StorageReason

__all__ = ["SCHEMA_VERSION", "AuditStore", "schema_statements"]

log = structlog.get_logger(__name__)

#: The version of the audit tables this module writes (in ``taonet_schema``); version 1
#: (no ``mac`` column) is upgraded in place when opened.
SCHEMA_VERSION: Final = 2
_COMPONENT: Final = "audit"
#: The PostgreSQL advisory lock appenders take (transaction-scoped): "taudit".
_APPEND_LOCK: Final = 0x746175646974
#: The advisory lock taken while creating the tables.
_SCHEMA_LOCK: Final = 0x74617564697473
_ENTRY_COLUMNS: Final = (
    "seq, time_ns, kind, actor, subject, outcome, details, prev_hash, entry_hash, checkpoint_seq"
)
_CHECKPOINT_COLUMNS: Final = "seq, head_hash, time_ns, signer, signer_key, signature"
#: What an entry's MAC is computed over (then its hash), and the start record's.
_ENTRY_MAC_LABEL: Final = b"taonet audit entry mac v1\0"
_START_MAC_LABEL: Final = b"taonet audit mac start v1\0"
#: Entries read at a time when checking those another writer appended.
_CHECK_PAGE: Final = 1000


def schema_statements(dialect: str) -> list[str]:
    """The CREATE statements of the audit tables for ``dialect``."""
    blob = "BLOB" if dialect == "sqlite" else "BYTEA"
    serial = "INTEGER PRIMARY KEY" if dialect == "sqlite" else "BIGSERIAL PRIMARY KEY"
    return [
        "CREATE TABLE IF NOT EXISTS taonet_schema ("
        " component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS audit_entries (
            seq BIGINT PRIMARY KEY,
            time_ns BIGINT NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            subject TEXT NOT NULL,
            outcome TEXT NOT NULL,
            details TEXT NOT NULL,
            prev_hash {blob} NOT NULL,
            entry_hash {blob} NOT NULL,
            checkpoint_seq BIGINT NOT NULL,
            mac {blob}
        )""",
        f"""CREATE TABLE IF NOT EXISTS audit_checkpoints (
            id {serial},
            seq BIGINT NOT NULL,
            head_hash {blob} NOT NULL,
            time_ns BIGINT NOT NULL,
            signer TEXT NOT NULL,
            signer_key {blob} NOT NULL,
            signature {blob} NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS audit_checkpoints_seq ON audit_checkpoints (seq)",
        # A keyed store's first open: the head then; entries without a MAC end there.
        f"""CREATE TABLE IF NOT EXISTS audit_mac_start (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL,
            entry_hash {blob} NOT NULL,
            mac {blob} NOT NULL
        )""",
    ]


@attrs.frozen
class _Head:
    seq: int
    hash: bytes
    checkpoint_seq: int
    checkpoint_ns: int


class AuditStore:
    """The audit chain in one database; open with :meth:`open` (or :meth:`open_sync`)."""

    def __init__(
        self,
        db: Database,
        *,
        signer: Signer | None = None,
        checkpoint_every: int = 100,
        checkpoint_interval: float = 60.0,
        clock: Callable[[], int] = time.time_ns,
        mac_key: bytes | None = None,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if not checkpoint_interval > 0:
            raise ValueError("checkpoint_interval must be positive")
        if mac_key is not None and len(mac_key) < 32:
            raise ValueError("an audit MAC key is at least 32 bytes")
        self.db = db
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_ns = int(checkpoint_interval * 1e9)
        self.clock = clock
        #: The last entry known committed, (seq, hash): the chain must still hold it.
        self.known: tuple[int, bytes] | None = None
        self._mac_key = mac_key
        #: A keyed store: the head when the database first had a key (seq, hash);
        #: entries without a MAC are accepted up to it only (read by :meth:`create_in`).
        self._mac_start: tuple[int, bytes] | None = None

    @classmethod
    async def open(cls, db: Database, **options: Any) -> AuditStore:
        """The chain in ``db``, creating its tables if missing (options: see the class)."""
        store = cls(db, **options)
        await db.transaction(store.create_in)
        return store

    @classmethod
    def open_sync(cls, db: Database, **options: Any) -> AuditStore:
        """:meth:`open` for synchronous code."""
        store = cls(db, **options)
        db.transaction_sync(store.create_in)
        return store

    def create_in(self, cur: Any) -> None:
        """Create the tables (if missing) in the caller's transaction; check their version."""
        sql = self.db.sql
        if self.db.dialect == "postgresql":
            # Replicas starting together: one creates the tables, the others wait.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in schema_statements(self.db.dialect):
            cur.execute(statement)
        cur.execute(sql("SELECT version FROM taonet_schema WHERE component = ?"), (_COMPONENT,))
        row = cur.fetchone()
        if row is None:
            cur.execute(
                sql("INSERT INTO taonet_schema (component, version) VALUES (?, ?)"),
                (_COMPONENT, SCHEMA_VERSION),
            )
        elif int(row[0]) == 1:  # before entry MACs: add the column (NULL for every row)
            blob = "BLOB" if self.db.dialect == "sqlite" else "BYTEA"
            cur.execute(f"ALTER TABLE audit_entries ADD COLUMN mac {blob}")
            cur.execute(
                sql("UPDATE taonet_schema SET version = ? WHERE component = ?"),
                (SCHEMA_VERSION, _COMPONENT),
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise StorageError(
                f"database {self.db.where}: audit tables of version {row[0]}; this taonet"
                f" reads version {SCHEMA_VERSION}",
                reason=StorageReason.CORRUPT,
            )
        if self._mac_key is not None:
            self._mac_start = self._mac_start_in(cur)

    def _mac_start_in(self, cur: Any) -> tuple[int, bytes]:
        """The head at this database's first keyed open (recorded now if this is it)."""
        cur.execute("SELECT seq, entry_hash, mac FROM audit_mac_start WHERE id = 1")
        row = cur.fetchone()
        if row is not None:
            seq, digest = int(row[0]), bytes(row[1])
            if not hmac.compare_digest(bytes(row[2]), self._start_mac(seq, digest)):
                raise self._refusal(
                    "audit_mac_start_refused",
                    seq,
                    f"database {self.db.where}: the audit chain's MAC start record does not"
                    " verify under this server's key (edited, or another server's database)",
                )
            return seq, digest
        cur.execute("SELECT seq FROM audit_entries WHERE mac IS NOT NULL LIMIT 1")
        marked = cur.fetchone()
        if marked is not None:
            raise self._refusal(
                "audit_mac_start_refused",
                int(marked[0]),
                f"database {self.db.where}: the audit chain holds entries with MACs but"
                " its MAC start record was removed",
            )
        cur.execute("SELECT seq, entry_hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
        head = cur.fetchone()
        seq, digest = (0, GENESIS) if head is None else (int(head[0]), bytes(head[1]))
        cur.execute(
            self.db.sql(
                "INSERT INTO audit_mac_start (id, seq, entry_hash, mac) VALUES (1, ?, ?, ?)"
            ),
            (seq, digest, self._start_mac(seq, digest)),
        )
        if seq:
            log.info("audit_mac_start", seq=seq, where=self.db.where)
        return seq, digest

    # Entry MACs (see the module docstring).

    def _entry_mac(self, digest: bytes) -> bytes:
        assert self._mac_key is not None
        return hmac.new(self._mac_key, _ENTRY_MAC_LABEL + digest, hashlib.sha256).digest()

    def _start_mac(self, seq: int, digest: bytes) -> bytes:
        assert self._mac_key is not None
        message = _START_MAC_LABEL + seq.to_bytes(8, "big") + digest
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()

    def _refusal(self, event: str, seq: int, message: str) -> StorageError:
        log.error(event, seq=seq, where=self.db.where)
        return StorageError(message, reason=StorageReason.CORRUPT)

    def _check_macs(self, rows: Sequence[tuple[Any, ...]], prev: tuple[int, bytes]) -> None:
        """Each of ``rows`` (entry columns, then mac; in seq order) follows ``prev`` (seq,
        hash), hashes to its stored hash and carries this store's MAC (or is an entry
        from before the key, at or before the start record's head)."""
        start_seq = 0 if self._mac_start is None else self._mac_start[0]
        prev_seq, prev_hash = prev
        for row in rows:
            seq = row[0] if isinstance(row[0], int) else prev_seq + 1
            why: str | None = None
            digest = b""
            try:
                entry = _entry(row[:10])
                mac = row[10]
                if seq != prev_seq + 1 or entry.prev_hash != prev_hash:
                    why = "does not follow the entry before it"
                elif entry.recorded_hash != (digest := entry.hash):
                    why = "does not hash to its stored hash"
                elif mac is None:
                    if seq > start_seq:
                        why = "carries no MAC"
                elif not hmac.compare_digest(bytes(mac), self._entry_mac(digest)):
                    why = "carries a MAC this server's key did not make"
            except (AuditError, TypeError, ValueError):
                why = "is malformed"
            if why is not None:
                raise self._refusal(
                    "audit_chain_forged",
                    seq,
                    f"database {self.db.where}: audit entry {seq} {why}: it was not written"
                    " by a server holding this store's key (forged, or edited, by someone"
                    " with write access to the database?); nothing more is recorded over it",
                )
            prev_seq, prev_hash = seq, digest

    # Appending.

    def _head(self, cur: Any) -> _Head:
        """Lock the chain for appending (until commit) and read its head."""
        if self.db.dialect == "postgresql":
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
        cur.execute("SELECT seq, entry_hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
        row = cur.fetchone()
        seq, digest = (0, GENESIS) if row is None else (int(row[0]), bytes(row[1]))
        self._check_known(cur, seq, digest)
        cur.execute("SELECT seq, time_ns FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
        cp = cur.fetchone()
        if cp is not None:
            return _Head(seq, digest, int(cp[0]), int(cp[1]))
        if self.signer is None:
            return _Head(seq, digest, 0, 0)
        # No checkpoint yet: the interval runs from the first entry.
        cur.execute("SELECT time_ns FROM audit_entries WHERE seq = 1")
        first = cur.fetchone()
        return _Head(seq, digest, 0, 0 if first is None else int(first[0]))

    def _check_known(self, cur: Any, seq: int, digest: bytes) -> None:
        """StorageError (CORRUPT) if the chain no longer holds the last entry known
        committed, or (a keyed store) holds an entry after it without this store's MAC;
        else remember the head read as known."""
        known = self.known
        keyed = self._mac_key is not None
        if known is not None and (known[0] > 0 or keyed):
            # (an empty chain is held by every chain)
            known_seq, known_hash = known
            held: bytes | None
            if seq == known_seq:
                held = digest
            elif seq > known_seq and keyed:  # entries another writer appended: checked
                held = self._check_since_in(cur, known_seq, known_hash, seq)
            elif seq > known_seq:
                cur.execute(
                    self.db.sql("SELECT entry_hash FROM audit_entries WHERE seq = ?"),
                    (known_seq,),
                )
                row = cur.fetchone()
                held = None if row is None else bytes(row[0])
            else:
                held = None
            if held != known_hash:
                raise self._behind(seq, known_seq)
        elif keyed:
            self._check_first_head_in(cur, seq, digest)
        if known is None or seq >= known[0]:
            self.known = (seq, digest)

    def _behind(self, seq: int, known_seq: int) -> StorageError:
        log.error("audit_chain_behind", head=seq, known=known_seq, where=self.db.where)
        return StorageError(
            f"database {self.db.where}: the audit chain no longer holds entry"
            f" {known_seq} as this server wrote it (its head is {seq}): entries were"
            " removed or edited; nothing more is recorded over it",
            reason=StorageReason.CORRUPT,
        )

    def _check_since_in(self, cur: Any, known_seq: int, known_hash: bytes, head: int) -> bytes:
        """Check the entries after ``known_seq`` up to ``head`` (a page at a time, the
        chain locked for appending); the hash stored at ``known_seq`` (GENESIS for 0)."""
        query = self.db.sql(
            f"SELECT {_ENTRY_COLUMNS}, mac FROM audit_entries"  # noqa: S608
            " WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?"
        )
        held = GENESIS
        prev = (known_seq, known_hash)
        since = known_seq if known_seq > 0 else 1
        while True:
            cur.execute(query, (since, head, _CHECK_PAGE))
            rows = cur.fetchall()
            if since == known_seq:  # the known entry first: still there, as written?
                if not rows or int(rows[0][0]) != known_seq:
                    return b""
                held = bytes(rows[0][8])
                if held != known_hash:
                    return held
                rows = rows[1:]
            self._check_macs(rows, prev)
            if not rows or int(rows[-1][0]) >= head:
                return held
            prev = (int(rows[-1][0]), bytes(rows[-1][8]))
            since = prev[0] + 1

    def _check_first_head_in(self, cur: Any, seq: int, digest: bytes) -> None:
        """A keyed store's first look at the chain: its head must carry this store's
        MAC, or be the head recorded when the database first had a key."""
        if self._mac_start is None:  # a store used without create_in
            self._mac_start = self._mac_start_in(cur)
        start_seq, start_hash = self._mac_start
        if seq < start_seq:
            raise self._behind(seq, start_seq)
        if seq == start_seq:
            if digest != start_hash:
                raise self._behind(seq, start_seq)
            return
        cur.execute(
            self.db.sql(f"SELECT {_ENTRY_COLUMNS}, mac FROM audit_entries WHERE seq = ?"),  # noqa: S608
            (seq,),
        )
        row = cur.fetchone()
        if row is None:  # the head moved under the lock: cannot be
            raise self._behind(seq, start_seq)
        self._check_macs([row], (seq - 1, bytes(row[7])))

    def committed(self, entry: AuditEntry) -> None:
        """The transaction that appended ``entry`` committed: the chain must keep it."""
        if entry.recorded_hash is not None and (self.known is None or entry.seq > self.known[0]):
            self.known = (entry.seq, entry.recorded_hash)

    def append_in(
        self,
        cur: Any,
        *,
        kind: str,
        actor: str,
        subject: str,
        outcome: str,
        details: Mapping[str, str] | None = None,
        time_ns: int | None = None,
    ) -> AuditEntry:
        """Append an entry inside the caller's transaction; returns it (with its seq).

        The entry is dated now (the store's clock) unless ``time_ns`` says when it
        happened (entries carried over from an older log). ValueError if a field is
        out of its bounds (cut text from outside with :func:`taonet.audit.bounded`
        first). May sign a checkpoint (see the class).
        """
        fields = {"kind": kind, "actor": actor, "subject": subject, "outcome": outcome}
        return self.append_many_in(cur, [{**fields, "details": details, "time_ns": time_ns}])[0]

    def append_many_in(self, cur: Any, items: Sequence[Mapping[str, Any]]) -> list[AuditEntry]:
        """Append one entry for each of ``items`` (the keyword arguments of
        :meth:`append_in`), in order, inside the caller's transaction: the head is
        read (and checked) once and the rows go in with one statement, so a batch
        costs little more than its hashes. Checkpoints are signed where
        :meth:`append_in` would sign them. ValueError if a field is out of its bounds
        (nothing of the batch is then written)."""
        if not items:
            return []
        head = self._head(cur)
        now = int(self.clock())
        entries: list[AuditEntry] = []
        rows: list[tuple[Any, ...]] = []
        checkpoints: list[_Head] = []
        for item in items:
            time_ns = item.get("time_ns")
            entry = AuditEntry(
                seq=head.seq + 1,
                time_ns=now if time_ns is None else time_ns,
                kind=item["kind"],
                actor=item["actor"],
                subject=item["subject"],
                outcome=item["outcome"],
                details=item.get("details") or {},
                prev_hash=head.hash,
                checkpoint_seq=head.checkpoint_seq,
            )
            digest = entry.hash
            # Nobody else holds the entry yet: record its hash without a second
            # construction (attrs.evolve would validate every field again).
            object.__setattr__(entry, "recorded_hash", digest)
            rows.append(
                (
                    entry.seq,
                    entry.time_ns,
                    entry.kind,
                    entry.actor,
                    entry.subject,
                    entry.outcome,
                    encode_details(entry.details),
                    entry.prev_hash,
                    digest,
                    entry.checkpoint_seq,
                    None if self._mac_key is None else self._entry_mac(digest),
                )
            )
            entries.append(entry)
            # The interval runs from the last checkpoint, or from the first entry.
            since = head.checkpoint_ns or now
            head = _Head(entry.seq, digest, head.checkpoint_seq, since)
            if self.signer is not None and (
                head.seq - head.checkpoint_seq >= self.checkpoint_every
                or now - since >= self.checkpoint_interval_ns
            ):
                checkpoints.append(head)
                head = _Head(head.seq, head.hash, head.seq, now)
        cur.executemany(
            self.db.sql(
                f"INSERT INTO audit_entries ({_ENTRY_COLUMNS}, mac)"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            rows,
        )
        for signed in checkpoints:
            self._sign_in(cur, signed, now)
        return entries

    async def append(self, **fields: Any) -> AuditEntry:
        """:meth:`append_in` in a transaction of its own; returns once committed."""
        entry = await self.db.transaction(lambda cur: self.append_in(cur, **fields))
        self.committed(entry)
        return entry

    def append_sync(self, **fields: Any) -> AuditEntry:
        """:meth:`append` for synchronous code."""
        entry = self.db.transaction_sync(lambda cur: self.append_in(cur, **fields))
        self.committed(entry)
        return entry

    def _sign_in(self, cur: Any, head: _Head, now: int) -> Checkpoint:
        assert self.signer is not None
        cp = sign_checkpoint(self.signer, seq=head.seq, head_hash=head.hash, time_ns=now)
        cur.execute(
            self.db.sql(
                f"INSERT INTO audit_checkpoints ({_CHECKPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"  # noqa: S608
            ),
            (cp.seq, cp.head_hash, cp.time_ns, cp.signer, cp.signer_key, cp.signature),
        )
        return cp

    def checkpoint_in(self, cur: Any) -> Checkpoint | None:
        """Sign the head now, unless it is already signed or the chain is empty."""
        if self.signer is None:
            raise ValueError("this audit store has no signer")
        head = self._head(cur)
        if head.seq == 0 or head.seq == head.checkpoint_seq:
            return None
        return self._sign_in(cur, head, int(self.clock()))

    async def checkpoint(self) -> Checkpoint | None:
        """:meth:`checkpoint_in` in a transaction of its own (call it on shutdown)."""
        return await self.db.transaction(self.checkpoint_in)

    def checkpoint_sync(self) -> Checkpoint | None:
        return self.db.transaction_sync(self.checkpoint_in)

    # Reading.

    def chain_exists_in(self, cur: Any) -> bool:
        """Whether the database holds the audit tables at all (without creating them)."""
        if self.db.dialect == "sqlite":
            cur.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                " AND name IN ('audit_entries', 'audit_checkpoints')"
            )
        else:
            cur.execute(
                "SELECT (to_regclass('audit_entries') IS NOT NULL)::int"
                " + (to_regclass('audit_checkpoints') IS NOT NULL)::int"
            )
        return int(cur.fetchone()[0]) == 2

    async def chain_exists(self) -> bool:
        return await self.db.transaction(self.chain_exists_in, write=False)

    def entries_in(
        self, cur: Any, *, since_seq: int = 0, limit: int | None = None
    ) -> list[AuditEntry]:
        """Entries after ``since_seq`` in seq order (at most ``limit``), as stored.

        AuditError (MALFORMED) for a row that is not an entry at all (a field out of
        bounds, details that are not a JSON object of strings).
        """
        query = f"SELECT {_ENTRY_COLUMNS} FROM audit_entries WHERE seq > ? ORDER BY seq"  # noqa: S608
        params: tuple[int, ...] = (since_seq,)
        if limit is not None:
            query += " LIMIT ?"
            params += (limit,)
        cur.execute(self.db.sql(query), params)
        return [_entry(row) for row in cur.fetchall()]

    def iter_entries_in(
        self, cur: Any, *, since_seq: int = 0, page: int = 1000
    ) -> Iterator[AuditEntry]:
        """Every entry after ``since_seq`` in seq order, read ``page`` at a time (so a
        long chain is never all in memory). Inside one transaction, for one snapshot."""
        while True:
            batch = self.entries_in(cur, since_seq=since_seq, limit=page)
            yield from batch
            if len(batch) < page:
                return
            since_seq = batch[-1].seq

    async def entries(self, *, since_seq: int = 0, limit: int | None = None) -> list[AuditEntry]:
        return await self.db.transaction(
            lambda cur: self.entries_in(cur, since_seq=since_seq, limit=limit), write=False
        )

    def checkpoints_in(self, cur: Any) -> list[Checkpoint]:
        cur.execute(f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq, id")  # noqa: S608
        result = []
        for row in cur.fetchall():
            try:
                result.append(
                    Checkpoint(
                        seq=int(row[0]),
                        head_hash=bytes(row[1]),
                        time_ns=int(row[2]),
                        signer=row[3],
                        signer_key=bytes(row[4]),
                        signature=bytes(row[5]),
                    )
                )
            except (TypeError, ValueError) as exc:
                seq = row[0] if isinstance(row[0], int) else 0
                raise AuditError(
                    f"checkpoint {seq} is malformed: {exc}", seq=seq, reason=AuditReason.MALFORMED
                ) from None
        return result

    def verify_in(self, cur: Any, trusted: Collection[Verifier] | None = None) -> ChainSummary:
        """:meth:`verify` inside the caller's transaction: the entries are read a page
        at a time (:meth:`iter_entries_in`), never all held at once."""
        checkpoints = self.checkpoints_in(cur)
        return verify_chain(
            self.iter_entries_in(cur),
            checkpoints,
            trusted,
            locate=lambda digest: self._seq_of_in(cur, digest),
        )

    def _seq_of_in(self, cur: Any, digest: bytes) -> int | None:
        """The seq of the entry stored with hash ``digest`` (a scan: only on a failure)."""
        cur.execute(
            self.db.sql("SELECT seq FROM audit_entries WHERE entry_hash = ? ORDER BY seq LIMIT 1"),
            (digest,),
        )
        row = cur.fetchone()
        return None if row is None else int(row[0])

    async def verify(self, trusted: Collection[Verifier] | None = None) -> ChainSummary:
        """Verify the whole chain as stored (see :func:`taonet.audit.verify_chain`)."""
        # REPEATABLE READ-like view: one read transaction sees one state of the chain.
        return await self.db.transaction(
            lambda cur: self.verify_in(cur, trusted), write=False, serializable=True
        )

    def verify_sync(self, trusted: Collection[Verifier] | None = None) -> ChainSummary:
        return self.db.transaction_sync(
            lambda cur: self.verify_in(cur, trusted), write=False, serializable=True
        )


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    seq = row[0]
    try:
        return AuditEntry(
            seq=int(seq),
            time_ns=int(row[1]),
            kind=row[2],
            actor=row[3],
            subject=row[4],
            outcome=row[5],
            details=decode_details(row[6]),
            prev_hash=bytes(row[7]),
            recorded_hash=bytes(row[8]),
            checkpoint_seq=int(row[9]),
        )
    except (TypeError, ValueError) as exc:
        where = seq if isinstance(seq, int) and seq > 0 else 0
        raise AuditError(
            f"entry {seq} is malformed (edited?): {str(exc)[:200]}",
            seq=where,
            reason=AuditReason.MALFORMED,
        ) from None
