"""The secret server's objects in a :class:`~taonet_services.storage.Database`.

Key chain. The root is the server's master key, a 32-byte
:data:`~taonet.protected.KEY_TYPE` :class:`~taonet.protected.SecretObject` named
:data:`MASTER_ID`, made on the first start and kept only sealed by a server's Tao
(table ``secret_master``, one row per server principal, so replicas on other hosts
can add theirs). Every stored object is a protected object whose protector is the
master key or another stored key (``CreateRequest.protector``), so a chain runs
from the master key to each leaf. Rotating a key writes its new epoch, rewraps
every object it protected under the new epoch and stores the old epoch RETIRED,
all in ONE transaction (:func:`taonet.protected.plan_rotation`).

Tables:

* ``secret_objects(name, epoch, protector_name, protector_epoch, tag, blob, mac)``:
  one row per epoch of an object; ``blob`` is the AES-256-GCM blob (both ids bound
  as associated data), ``tag`` 16 random bytes new at every write of the row, and
  ``mac`` an HMAC-SHA256 under the row key (HKDF of the master key) over the name,
  epoch, protector id, tag and the blob's SHA-256.
* ``secret_names(name, manifest, mac)``: one row per name: its epochs with their
  status and the tag of each epoch's row, MACed with the name.
* ``secret_epoch_floor(name, last_epoch, mac)``: for each name that ever had an epoch
  deleted, the highest epoch it had at its last delete (``mac`` an HMAC-SHA256 under
  the row key over the name and ``last_epoch``). It outlives the name's manifest,
  and is raised in the same transaction as every delete, never lowered.
* ``secret_generation(id, n)`` (SQLite only): one row whose ``n`` triggers bump at
  every insert, update and delete in ``secret_objects`` and ``secret_names``, by any
  connection; the read cache (``_cache``) serves an object only while ``n`` is what
  it was when the object was read and verified.

What that detects (never served: ``corrupt``): an edited blob (AEAD); a blob or row
moved to another id (associated data, MAC); a row or a manifest edited or forged
without the master key (MAC); **a row rolled back to an older valid copy of
itself** (its tag is not the one its name's manifest holds), a manifest rolled back
while its rows moved on, a row deleted that the manifest lists, and **a row (with its
manifest) put back from before a rotation of its protector**: a rotation rewraps
every row under the key's new epoch, so a row of the chain whose protector is not
its protector name's latest ACTIVE epoch (per that name's manifest) is refused,
although the retired epoch would still unwrap it. What it cannot
detect on its own is a consistent rollback of a name's manifest together with all
its rows (or of the whole database): a database without a trusted counter cannot;
the audit chain records every write (name, epoch, tag) and the tag of every row
released, so a later verify of the log against the rows shows it (``taonet audit
verify --against-rows``).

What an epoch number promises. The epochs of a name only grow: a Create starts
the name after the highest epoch it ever had (at 1 only for a name never used), and
a Rotate makes the epoch after both its latest and that high-water mark, so a
deleted (name, epoch) is never made again by this database. A disclosure directive
and an audit entry name exactly (name, epoch): each names one object for good, and
a directive for a deleted epoch never opens a later object of the same name. A floor
row that fails its MAC is ``corrupt`` and refuses the Create, Rotate or Delete of its
name (like any other row). The limit above holds here too: someone with write access
to the database who removes a floor row (or puts back an older copy of it) once the
name's last epochs are gone makes old numbers come back, since a removed row looks
like one never written; the audit chain still shows the earlier create and delete.
Names deleted by an older taonet (before this table) have no floor: their numbers
start again at 1, once.

The audit chain in the same database (``AuditStore``) is keyed with
:attr:`SecretTables.audit_mac_key` (HKDF of the master key, its own label): replicas
share the master key, so they check each other's entries.

All functions ending in ``_in`` run inside a :meth:`Database.transaction` (in its
worker thread) and raise the :mod:`taonet.secrets` exceptions for refusals.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from taonet.protected import (
    KEY_BYTES,
    KEY_TYPE,
    MAX_CHAIN_DEPTH,
    MAX_EPOCH,
    ObjectId,
    ObjectStateError,
    ProtectedObject,
    ProtectedObjectError,
    SecretObject,
    Status,
    plan_rotation,
    protect,
    recover,
)
from taonet.secrets import (
    ConflictError,
    CorruptError,
    InvalidRequestError,
    NotFoundError,
)
from taonet_services.secret_server._cache import GENERATION_QUERY, Verified
from taonet_services.storage import Database, StorageError, StorageReason

__all__ = [
    "MASTER_ID",
    "RESERVED_PREFIX",
    "ObjectRow",
    "SecretTables",
    "new_master_key",
    "schema_statements",
]

#: Names under this prefix are the server's own; clients cannot use them.
RESERVED_PREFIX: Final = "/taonet.secret-server"
#: The master key's id (it is never stored as a row, only sealed).
MASTER_ID: Final = ObjectId(f"{RESERVED_PREFIX}/master", 1)
SCHEMA_VERSION: Final = 1
_COMPONENT: Final = "secret_server"
_TAG_BYTES: Final = 16
_ENTRY: Final = struct.Struct(">IB16s")  # epoch, status, tag
_STATUS_CODES: Final = {Status.ACTIVE: 1, Status.INACTIVE: 2, Status.RETIRED: 3, Status.REVOKED: 4}
_STATUS_OF: Final = {code: status for status, code in _STATUS_CODES.items()}
#: The audit chain's head seq (``AuditStore``'s table, in the same database).
_AUDIT_HEAD: Final = "SELECT max(seq) FROM audit_entries"
#: SQLite: the object tables' generation and the audit head, in one statement.
_GENERATION_AND_HEAD: Final = f"SELECT ({GENERATION_QUERY}), ({_AUDIT_HEAD})"
#: Most names one List request scans (a page may come back short, with next_after).
MAX_LIST_SCAN: Final = 5000


def new_master_key() -> SecretObject:
    """A fresh random master key."""
    return SecretObject(MASTER_ID, KEY_TYPE, Status.ACTIVE, None, None, os.urandom(KEY_BYTES))


def schema_statements(dialect: str) -> list[str]:
    """CREATE statements of the secret server's tables for ``dialect``."""
    blob = "BLOB" if dialect == "sqlite" else "BYTEA"
    text = "TEXT" if dialect == "sqlite" else 'TEXT COLLATE "C"'  # byte order on both
    return [
        "CREATE TABLE IF NOT EXISTS taonet_schema ("
        " component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS secret_master (
            principal TEXT PRIMARY KEY,
            sealed {blob} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS secret_names (
            name {text} PRIMARY KEY,
            manifest {blob} NOT NULL,
            mac {blob} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS secret_objects (
            name {text} NOT NULL,
            epoch INTEGER NOT NULL,
            protector_name {text} NOT NULL,
            protector_epoch INTEGER NOT NULL,
            tag {blob} NOT NULL,
            blob {blob} NOT NULL,
            mac {blob} NOT NULL,
            PRIMARY KEY (name, epoch))""",
        "CREATE INDEX IF NOT EXISTS secret_objects_protector"
        " ON secret_objects (protector_name, protector_epoch)",
        # New in place (no version bump): a database without it gets it at the next start.
        f"""CREATE TABLE IF NOT EXISTS secret_epoch_floor (
            name {text} PRIMARY KEY,
            last_epoch INTEGER NOT NULL,
            mac {blob} NOT NULL)""",
        *(_generation_statements() if dialect == "sqlite" else []),
    ]


def _generation_statements() -> list[str]:
    """SQLite: the generation of the object tables, bumped by triggers on every change
    of a row, by any connection (what the read cache checks, see ``_cache``)."""
    statements = [
        "CREATE TABLE IF NOT EXISTS secret_generation ("
        " id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)",
        "INSERT OR IGNORE INTO secret_generation (id, n) VALUES (1, 0)",
    ]
    for table in ("secret_objects", "secret_names"):
        for event in ("INSERT", "UPDATE", "DELETE"):
            trigger = f"{table}_{event.lower()}_generation"
            statements.append(
                f"CREATE TRIGGER IF NOT EXISTS {trigger} AFTER {event} ON {table} BEGIN"  # noqa: S608
                " UPDATE secret_generation SET n = n + 1 WHERE id = 1; END"
            )
    return statements


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


@attrs.frozen
class _Entry:
    epoch: int
    status: Status
    tag: bytes


@attrs.frozen
class _Manifest:
    name: str
    entries: tuple[_Entry, ...]

    def entry(self, epoch: int) -> _Entry | None:
        for e in self.entries:
            if e.epoch == epoch:
                return e
        return None

    def latest_active(self) -> _Entry | None:
        active = [e for e in self.entries if e.status is Status.ACTIVE]
        return max(active, key=lambda e: e.epoch) if active else None

    def latest(self) -> _Entry:
        return max(self.entries, key=lambda e: e.epoch)

    def with_entry(self, entry: _Entry) -> _Manifest:
        kept = [e for e in self.entries if e.epoch != entry.epoch]
        return _Manifest(self.name, tuple(sorted([*kept, entry], key=lambda e: e.epoch)))

    def without(self, epochs: Iterable[int]) -> _Manifest:
        gone = set(epochs)
        return _Manifest(self.name, tuple(e for e in self.entries if e.epoch not in gone))

    def encode(self) -> bytes:
        return b"".join(_ENTRY.pack(e.epoch, _STATUS_CODES[e.status], e.tag) for e in self.entries)


@attrs.frozen
class ObjectRow:
    """One stored epoch of an object, as read (integrity checked)."""

    po: ProtectedObject
    tag: bytes


class SecretTables:
    """The secret server's tables in ``db``, keyed by the master key (see the module)."""

    def __init__(self, db: Database, master: SecretObject) -> None:
        if not master.is_key:
            raise ValueError("the master key must be a 32-byte key")
        self.db = db
        self.master = master
        self._mac_key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"taonet secret-server row integrity v1",
        ).derive(master.value)
        #: The audit chain's entry MAC key (``AuditStore(mac_key=...)``).
        self.audit_mac_key: Final = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"taonet secret-server audit entry mac v1",
        ).derive(master.value)
        self._lock = " FOR UPDATE" if db.dialect == "postgresql" else ""

    # -- schema and master key (no master key needed: static) ---------------------------

    @staticmethod
    def create_tables_in(db: Database, cur: Any) -> None:
        """Create the tables if missing (in the caller's transaction); check their version."""
        if db.dialect == "postgresql":
            cur.execute("SELECT pg_advisory_xact_lock(7461757)")  # replicas starting at once
        for statement in schema_statements(db.dialect):
            cur.execute(statement)
        cur.execute(db.sql("SELECT version FROM taonet_schema WHERE component = ?"), (_COMPONENT,))
        row = cur.fetchone()
        if row is None:
            cur.execute(
                db.sql("INSERT INTO taonet_schema (component, version) VALUES (?, ?)"),
                (_COMPONENT, SCHEMA_VERSION),
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise StorageError(
                f"database {db.where}: secret tables of version {row[0]}; this taonet reads"
                f" version {SCHEMA_VERSION}",
                reason=StorageReason.CORRUPT,
            )

    @staticmethod
    def sealed_master_in(db: Database, cur: Any, principal: str) -> tuple[bytes | None, int]:
        """The master key sealed for ``principal`` (or None) and how many principals hold one."""
        cur.execute(db.sql("SELECT sealed FROM secret_master WHERE principal = ?"), (principal,))
        row = cur.fetchone()
        cur.execute("SELECT COUNT(*) FROM secret_master")
        count = int(cur.fetchone()[0])
        return (None if row is None else bytes(row[0])), count

    @staticmethod
    def add_sealed_master_in(db: Database, cur: Any, principal: str, sealed: bytes) -> bool:
        """Store ``sealed`` for ``principal`` unless one is there; True if stored."""
        cur.execute(
            db.sql(
                "INSERT INTO secret_master (principal, sealed) VALUES (?, ?)"
                " ON CONFLICT (principal) DO NOTHING"
            ),
            (principal, sealed),
        )
        return bool(cur.rowcount == 1)

    # -- integrity ----------------------------------------------------------------------

    def _row_mac(self, po: ProtectedObject, tag: bytes) -> bytes:
        message = b"".join(
            (
                b"row\0",
                _lp(po.protected_id.name.encode()),
                po.protected_id.epoch.to_bytes(4, "big"),
                _lp(po.protector_id.name.encode()),
                po.protector_id.epoch.to_bytes(4, "big"),
                _lp(tag),
                hashlib.sha256(po.blob).digest(),
            )
        )
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()

    def _names_mac(self, manifest: _Manifest) -> bytes:
        message = b"names\0" + _lp(manifest.name.encode()) + manifest.encode()
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()

    def _floor_mac(self, name: str, last_epoch: int) -> bytes:
        message = b"floor\0" + _lp(name.encode()) + last_epoch.to_bytes(4, "big")
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()

    def _floor_in(self, cur: Any, name: str) -> int:
        """The highest epoch ``name`` had when one of its epochs was last deleted (0:
        none ever was), integrity checked."""
        cur.execute(
            self.db.sql("SELECT last_epoch, mac FROM secret_epoch_floor WHERE name = ?"), (name,)
        )
        row = cur.fetchone()
        if row is None:
            return 0
        try:
            last_epoch, mac = int(row[0]), bytes(row[1])
        except (TypeError, ValueError):
            raise CorruptError(f"{name}: its epoch floor is malformed") from None
        if not 1 <= last_epoch <= MAX_EPOCH:
            raise CorruptError(f"{name}: its epoch floor is malformed")
        if not hmac.compare_digest(mac, self._floor_mac(name, last_epoch)):
            raise CorruptError(f"{name}: its epoch floor fails its integrity check")
        return last_epoch

    def _raise_floor_in(self, cur: Any, name: str, last_epoch: int) -> None:
        """Keep ``last_epoch`` as the floor of ``name`` (never lowered)."""
        if self._floor_in(cur, name) >= last_epoch:
            return
        cur.execute(
            self.db.sql(
                "INSERT INTO secret_epoch_floor (name, last_epoch, mac) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET last_epoch = excluded.last_epoch,"
                " mac = excluded.mac"
            ),
            (name, last_epoch, self._floor_mac(name, last_epoch)),
        )

    def _manifest_in(self, cur: Any, name: str, *, lock: bool = False) -> _Manifest | None:
        query = "SELECT manifest, mac FROM secret_names WHERE name = ?"
        cur.execute(self.db.sql(query + (self._lock if lock else "")), (name,))
        row = cur.fetchone()
        if row is None:
            return None
        raw, mac = bytes(row[0]), bytes(row[1])
        if len(raw) % _ENTRY.size or not raw:
            raise CorruptError(f"{name}: its manifest is malformed")
        entries = []
        for offset in range(0, len(raw), _ENTRY.size):
            epoch, status, tag = _ENTRY.unpack_from(raw, offset)
            if status not in _STATUS_OF or not 1 <= epoch <= MAX_EPOCH:
                raise CorruptError(f"{name}: its manifest is malformed")
            entries.append(_Entry(epoch, _STATUS_OF[status], tag))
        manifest = _Manifest(name, tuple(entries))
        if not hmac.compare_digest(mac, self._names_mac(manifest)):
            raise CorruptError(f"{name}: its manifest fails its integrity check")
        return manifest

    def _put_manifest_in(self, cur: Any, manifest: _Manifest, *, new: bool) -> None:
        mac = self._names_mac(manifest)
        if new:
            cur.execute(
                self.db.sql("INSERT INTO secret_names (name, manifest, mac) VALUES (?, ?, ?)"),
                (manifest.name, manifest.encode(), mac),
            )
        elif manifest.entries:
            cur.execute(
                self.db.sql("UPDATE secret_names SET manifest = ?, mac = ? WHERE name = ?"),
                (manifest.encode(), mac, manifest.name),
            )
        else:
            cur.execute(self.db.sql("DELETE FROM secret_names WHERE name = ?"), (manifest.name,))

    def _row_in(self, cur: Any, oid: ObjectId, manifest: _Manifest) -> ObjectRow:
        entry = manifest.entry(oid.epoch)
        if entry is None:
            raise NotFoundError(f"{oid} does not exist")
        cur.execute(
            self.db.sql(
                "SELECT protector_name, protector_epoch, tag, blob, mac FROM secret_objects"
                " WHERE name = ? AND epoch = ?"
            ),
            (oid.name, oid.epoch),
        )
        row = cur.fetchone()
        if row is None:
            raise CorruptError(f"{oid}: its row is missing")
        try:
            po = ProtectedObject(oid, ObjectId(str(row[0]), int(row[1])), bytes(row[3]))
        except (TypeError, ValueError):
            raise CorruptError(f"{oid}: its row is malformed") from None
        tag = bytes(row[2])
        if not hmac.compare_digest(bytes(row[4]), self._row_mac(po, tag)):
            raise CorruptError(f"{oid}: its row fails its integrity check")
        if not hmac.compare_digest(tag, entry.tag):
            raise CorruptError(f"{oid}: its row is not the one last written (rolled back?)")
        return ObjectRow(po, tag)

    def _store_row_in(self, cur: Any, po: ProtectedObject, *, new: bool) -> bytes:
        tag = os.urandom(_TAG_BYTES)
        values = (
            po.protector_id.name,
            po.protector_id.epoch,
            tag,
            po.blob,
            self._row_mac(po, tag),
            po.protected_id.name,
            po.protected_id.epoch,
        )
        if new:
            cur.execute(
                self.db.sql(
                    "INSERT INTO secret_objects (protector_name, protector_epoch, tag, blob,"
                    " mac, name, epoch) VALUES (?, ?, ?, ?, ?, ?, ?)"
                ),
                values,
            )
        else:
            cur.execute(
                self.db.sql(
                    "UPDATE secret_objects SET protector_name = ?, protector_epoch = ?, tag = ?,"
                    " blob = ?, mac = ? WHERE name = ? AND epoch = ?"
                ),
                values,
            )
        return tag

    # -- reading ------------------------------------------------------------------------

    def _chain_in(self, cur: Any, oid: ObjectId, manifest: _Manifest) -> dict[ObjectId, ObjectRow]:
        """Rows from ``oid`` up to the master key, integrity checked."""
        rows: dict[ObjectId, ObjectRow] = {}
        current, current_manifest = oid, manifest
        while current != self.master.id and current not in rows:
            if len(rows) >= MAX_CHAIN_DEPTH:
                break  # recover() says so
            row = self._row_in(cur, current, current_manifest)
            rows[current] = row
            current = row.po.protector_id
            if current == self.master.id:
                break
            found = self._manifest_in(cur, current.name)
            if found is None:
                raise CorruptError(f"{oid}: its protector {current} is missing")
            active = found.latest_active()
            if active is None or active.epoch != current.epoch:
                # Every rotation rewraps the key's rows under its new epoch: a row still
                # under a retired one is a copy from before it (put back).
                raise CorruptError(
                    f"{oid}: the row of {row.po.protected_id} is wrapped under {current},"
                    f" not under the active epoch of {current.name[:200]} (a copy from"
                    " before its rotation, put back?)"
                )
            current_manifest = found
        return rows

    def _recover(
        self, oid: ObjectId, rows: dict[ObjectId, ObjectRow], manifest: _Manifest, now: datetime
    ) -> SecretObject:
        try:
            obj = recover(oid, self.master, lambda i: _po(rows.get(i)), now=now)
        except ObjectStateError as exc:  # expired, not yet valid, revoked: not usable now
            raise ConflictError(str(exc)) from None
        except ProtectedObjectError as exc:
            raise CorruptError(f"{oid}: {exc}") from None
        entry = manifest.entry(oid.epoch)
        if entry is None or obj.status is not entry.status:
            raise CorruptError(f"{oid}: its status does not match its manifest")
        return obj

    def _resolve(self, manifest: _Manifest, epoch: int | None) -> ObjectId:
        if epoch is None:
            entry = manifest.latest_active()
            if entry is None:
                raise NotFoundError(f"{manifest.name} has no active epoch")
            return ObjectId(manifest.name, entry.epoch)
        if manifest.entry(epoch) is None:
            raise NotFoundError(f"{manifest.name}#{epoch} does not exist")
        return ObjectId(manifest.name, epoch)

    def _load_in(
        self, cur: Any, name: str, epoch: int | None, *, lock: bool = False
    ) -> tuple[_Manifest, ObjectId, dict[ObjectId, ObjectRow]]:
        manifest = self._manifest_in(cur, name, lock=lock)
        if manifest is None:
            raise NotFoundError(f"{name} does not exist")
        oid = self._resolve(manifest, epoch)
        return manifest, oid, self._chain_in(cur, oid, manifest)

    def read_in(self, cur: Any, name: str, epoch: int | None, now: datetime) -> SecretObject:
        """``name`` at ``epoch`` (or its latest ACTIVE epoch), integrity checked."""
        manifest, oid, rows = self._load_in(cur, name, epoch)
        return self._recover(oid, rows, manifest, now)

    def read_verified_in(self, cur: Any, name: str, epoch: int | None, now: datetime) -> Verified:
        """:meth:`read_in`, with what the read cache keeps: the tables' generation (SQLite
        only), the audit chain's head seq (both read in the same snapshot as the rows,
        in one statement on SQLite), the row's tag and protector, and the window in which
        every key of the chain, and the object, are usable."""
        generation: int | None = None
        if self.db.dialect == "sqlite":
            cur.execute(_GENERATION_AND_HEAD)
            row = cur.fetchone()
            generation = None if row is None or row[0] is None else int(row[0])
        else:
            cur.execute(_AUDIT_HEAD)
            row = cur.fetchone()
        audit_seq = 0 if row is None or row[-1] is None else int(row[-1])
        manifest, oid, rows = self._load_in(cur, name, epoch)
        obj = self._recover(oid, rows, manifest, now)
        starts = [obj.not_before]
        ends = [obj.not_after]
        for key_id in rows:
            if key_id != oid:  # each key of the chain (a chain is a few keys at most)
                key = recover(key_id, self.master, lambda i: _po(rows.get(i)), now=now)
                starts.append(key.not_before)
                ends.append(key.not_after)
        return Verified(
            obj,
            generation,
            max((t for t in starts if t is not None), default=None),
            min((t for t in ends if t is not None), default=None),
            rows[oid].tag,
            str(rows[oid].po.protector_id),
            audit_seq,
        )

    def exists_in(self, cur: Any, name: str) -> bool:
        cur.execute(self.db.sql("SELECT 1 FROM secret_names WHERE name = ?"), (name,))
        return cur.fetchone() is not None

    def list_in(self, cur: Any, prefix: str, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` names under ``prefix`` (segment-wise), after ``after``, in order."""
        sql = "SELECT name FROM secret_names WHERE name > ?"
        params: list[Any] = [after or ""]
        base = prefix.rstrip("/")
        if base:
            # base itself, or base + "/" + anything: "0" is the character after "/".
            sql += " AND (name = ? OR (name > ? AND name < ?))"
            params += [base, base + "/", base + "0"]
        cur.execute(self.db.sql(sql + " ORDER BY name LIMIT ?"), (*params, limit))
        return [str(r[0]) for r in cur.fetchall()]

    # -- writing ------------------------------------------------------------------------

    def _has_children_in(self, cur: Any, oid: ObjectId) -> bool:
        cur.execute(
            self.db.sql(
                "SELECT 1 FROM secret_objects WHERE protector_name = ? AND protector_epoch = ?"
                " LIMIT 1"
            ),
            (oid.name, oid.epoch),
        )
        return cur.fetchone() is not None

    def _protector_key_in(self, cur: Any, name: str | None, now: datetime) -> SecretObject:
        if name is None:
            return self.master
        manifest, oid, rows = self._load_in(cur, name, None)
        key = self._recover(oid, rows, manifest, now)
        if not key.is_key:
            raise ConflictError(f"{oid} is not a {KEY_TYPE} key: it cannot protect others")
        return key

    def create_in(
        self,
        cur: Any,
        name: str,
        value: bytes | None,
        kind: str,
        protector: str | None,
        not_before: datetime | None,
        not_after: datetime | None,
        now: datetime,
    ) -> tuple[ObjectId, bytes]:
        """Create ``name`` at the epoch after the highest it ever had (1 for a new
        name); its id and row tag."""
        if self.exists_in(cur, name):
            raise ConflictError(f"{name} exists")
        floor = self._floor_in(cur, name)
        if floor >= MAX_EPOCH:
            raise ConflictError(f"{name} has had every epoch: it cannot be created again")
        epoch = floor + 1
        if value is None:
            value = os.urandom(KEY_BYTES)
        if kind == KEY_TYPE and len(value) != KEY_BYTES:
            raise InvalidRequestError(f"a {KEY_TYPE} key is {KEY_BYTES} bytes")
        key = self._protector_key_in(cur, protector, now)
        try:
            obj = SecretObject(
                ObjectId(name, epoch), kind, Status.ACTIVE, not_before, not_after, value
            )
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        tag = self._store_row_in(cur, protect(obj, key, now=now), new=True)
        self._put_manifest_in(cur, _Manifest(name, (_Entry(epoch, Status.ACTIVE, tag),)), new=True)
        return obj.id, tag

    def write_in(
        self, cur: Any, name: str, epoch: int | None, value: bytes, now: datetime
    ) -> tuple[ObjectId, bytes]:
        """Replace the value of ``name`` at ``epoch`` (or its latest ACTIVE one) in place."""
        manifest, oid, rows = self._load_in(cur, name, epoch, lock=True)
        old = self._recover(oid, rows, manifest, now)
        if old.type == KEY_TYPE and len(value) != KEY_BYTES:
            raise InvalidRequestError(f"{oid} is a {KEY_TYPE} key: its value is {KEY_BYTES} bytes")
        if self._has_children_in(cur, oid):
            raise ConflictError(f"{oid} protects other objects: rotate it instead")
        protector_id = rows[oid].po.protector_id
        parent = self._key_of(cur, protector_id, now)
        new = attrs.evolve(old, value=value)
        tag = self._store_row_in(cur, protect(new, parent, now=now), new=False)
        entry = manifest.entry(oid.epoch)
        assert entry is not None
        self._put_manifest_in(cur, manifest.with_entry(attrs.evolve(entry, tag=tag)), new=False)
        return oid, tag

    def _key_of(self, cur: Any, oid: ObjectId, now: datetime) -> SecretObject:
        if oid == self.master.id:
            return self.master
        found = self._manifest_in(cur, oid.name)
        if found is None:
            raise CorruptError(f"the protector {oid} is missing")
        return self._recover(oid, self._chain_in(cur, oid, found), found, now)

    def delete_in(self, cur: Any, name: str, epoch: int | None) -> tuple[int, ...]:
        """Delete ``name`` at ``epoch`` (or every epoch); the epochs removed. The name's
        highest epoch is kept as its floor, so that no later epoch reuses a number."""
        manifest = self._manifest_in(cur, name, lock=True)
        if manifest is None:
            raise NotFoundError(f"{name} does not exist")
        epochs = (
            tuple(e.epoch for e in manifest.entries)
            if epoch is None
            else (self._resolve(manifest, epoch).epoch,)
        )
        for e in epochs:
            if self._has_children_in(cur, ObjectId(name, e)):
                raise ConflictError(f"{name}#{e} protects other objects: delete them first")
        for e in epochs:
            cur.execute(
                self.db.sql("DELETE FROM secret_objects WHERE name = ? AND epoch = ?"), (name, e)
            )
        self._raise_floor_in(cur, name, manifest.latest().epoch)
        self._put_manifest_in(cur, manifest.without(epochs), new=False)
        return epochs

    def rotate_in(
        self, cur: Any, name: str, value: bytes | None, now: datetime
    ) -> tuple[ObjectId, int, bytes, bytes]:
        """A new epoch of ``name`` (after its latest and after its floor): the new id, how
        many objects were rewrapped, and the tags of the new epoch's row and of the
        retired epoch's (both rewritten)."""
        manifest, oid, rows = self._load_in(cur, name, None, lock=True)
        if manifest.latest().epoch != oid.epoch:
            raise ConflictError(f"{name} has an epoch after its latest active one {oid.epoch}")
        # Only the latest epoch is ever active, so a floor above it means that the
        # active epoch was deleted and rotate cannot be reached through the service;
        # still, a number is never reused (a key's rotation makes exactly epoch + 1).
        after = max(oid.epoch, self._floor_in(cur, name))
        old = self._recover(oid, rows, manifest, now)
        parent = self._key_of(cur, rows[oid].po.protector_id, now)
        if old.is_key:
            if after != oid.epoch:
                raise ConflictError(f"{name} had epochs up to {after}: {oid} cannot be rotated")
            children = self._children_in(cur, oid)
            try:
                plan = plan_rotation(
                    old, [row.po for _, row in children], now=now, new_value=value, parent=parent
                )
            except ProtectedObjectError as exc:
                raise CorruptError(f"{oid}: {exc}") from None
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from None
            assert plan.new_key_protected is not None
            assert plan.retired_old_protected is not None
            new_po, retired_po = plan.new_key_protected, plan.retired_old_protected
            rewrapped = plan.rewrapped
        else:
            if value is None:
                raise InvalidRequestError(f"{oid} is not a key: its rotation needs a new value")
            if after >= MAX_EPOCH:
                raise ConflictError(f"{oid} is at the last epoch")
            new_obj = attrs.evolve(old, id=ObjectId(name, after + 1), value=value)
            new_po = protect(new_obj, parent, now=now)
            retired_po = protect(old.with_status(Status.RETIRED), parent, now=now)
            children, rewrapped = [], ()
        new_tag = self._store_row_in(cur, new_po, new=True)
        old_tag = self._store_row_in(cur, retired_po, new=False)
        manifest = manifest.with_entry(_Entry(oid.epoch, Status.RETIRED, old_tag))
        manifest = manifest.with_entry(_Entry(new_po.protected_id.epoch, Status.ACTIVE, new_tag))
        self._put_manifest_in(cur, manifest, new=False)
        manifests = {m.name: m for m, _ in children}
        for po in rewrapped:
            tag = self._store_row_in(cur, po, new=False)
            child = manifests[po.protected_id.name]
            entry = child.entry(po.protected_id.epoch)
            assert entry is not None
            manifests[child.name] = child.with_entry(attrs.evolve(entry, tag=tag))
        for child in manifests.values():
            self._put_manifest_in(cur, child, new=False)
        return new_po.protected_id, len(rewrapped), new_tag, old_tag

    def _children_in(self, cur: Any, oid: ObjectId) -> list[tuple[_Manifest, ObjectRow]]:
        cur.execute(
            self.db.sql(
                "SELECT name, epoch FROM secret_objects WHERE protector_name = ?"
                " AND protector_epoch = ? ORDER BY name, epoch"
            ),
            (oid.name, oid.epoch),
        )
        ids = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
        found: list[tuple[_Manifest, ObjectRow]] = []
        manifests: dict[str, _Manifest] = {}
        for child_name, child_epoch in ids:
            manifest = manifests.get(child_name)
            if manifest is None:
                manifest = self._manifest_in(cur, child_name, lock=True)
                if manifest is None:
                    raise CorruptError(f"{child_name}: a row without a manifest")
                manifests[child_name] = manifest
            found.append((manifest, self._row_in(cur, ObjectId(child_name, child_epoch), manifest)))
        return found


def _po(row: ObjectRow | None) -> ProtectedObject | None:
    return None if row is None else row.po


def utc_now() -> datetime:
    return datetime.now(UTC)
