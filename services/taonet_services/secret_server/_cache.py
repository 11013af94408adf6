"""A cache of verified objects for a secret server on SQLite, checked at every hit.

A Read answered from the database costs a worker-thread transaction: the name's
manifest, each row of the chain up to the master key, their MACs, the AES-GCM
unwraps. :class:`ObjectCache` keeps what such a read verified (the object, and the
window in which every key of its chain is usable) so the next Read of the same
name and epoch skips all of it, and is never served stale:

* every entry carries the **generation** of the object tables it was read at, read
  in the same database snapshot as its rows (``secret_generation.n``, which SQLite
  triggers bump on every insert, update and delete of ``secret_objects`` and
  ``secret_names``, whichever connection or process makes it: this server, a
  second one on the same file, or someone editing rows with ``sqlite3``);
* a hit first reads the current generation, on the event loop's thread, from a
  connection of its own that never writes and never waits (``busy_timeout`` 0:
  a busy database is a miss, served from the database as before); an entry of an
  older generation is never served, and then the whole cache is dropped;
* an entry is served only strictly inside its window (the leaf's and every key's
  ``not_before``/``not_after``): at its edges the database path decides.

So a read after a change committed, by this server or another, sees the change. What
the cache cannot see is an edit that also drops the triggers first (an attacker
with the file can): it then keeps serving the values it verified, nothing it did
not, and a restart (or any change) re-verifies every row.

Plaintext values stay in memory while cached: at most :data:`MAX_ENTRIES` entries,
each at most :data:`MAX_CACHED_VALUE` bytes (larger values are not cached). Only for
SQLite: on PostgreSQL the check would be a round trip of its own (and replicas would
write one hot row), so there every Read goes to the database.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Final

import attrs
import structlog

from taonet.protected import SecretObject
from taonet_services.storage import Database

__all__ = ["GENERATION_QUERY", "MAX_CACHED_VALUE", "MAX_ENTRIES", "ObjectCache", "Verified"]

log = structlog.get_logger(__name__)

#: The generation of the object tables (see the module docstring).
GENERATION_QUERY: Final = "SELECT n FROM secret_generation WHERE id = 1"
#: Most entries held (the oldest goes first).
MAX_ENTRIES: Final = 10_000
#: Largest value cached, in bytes.
MAX_CACHED_VALUE: Final = 4096


@attrs.frozen
class Verified:
    """What one read from the database verified: the object, the generation of the
    tables it was read at (None: not known), and when every key of its chain is usable."""

    obj: SecretObject
    generation: int | None
    valid_from: datetime | None
    valid_until: datetime | None
    #: The tag of the object's row (what its audit entries name; None: not known).
    tag: bytes | None = None
    #: The id of the key that protects the object's row ("NAME#EPOCH" in its release).
    protector: str | None = None
    #: The audit chain's head seq in the read's snapshot (every change recorded up to
    #: it was visible to the read: a release's ``read_after``; None: not known).
    audit_seq: int | None = None

    def usable_at(self, now: datetime) -> bool:
        """Strictly inside the window (at an edge, the database path decides)."""
        if self.valid_from is not None and not self.valid_from < now:
            return False
        return self.valid_until is None or now < self.valid_until


class ObjectCache:
    """Verified objects by (name, epoch or None for the latest active); see the module."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._generation = -1
        self._entries: dict[tuple[str, int | None], Verified] = {}
        self.hits = 0
        self.misses = 0

    @classmethod
    def open(cls, db: Database) -> ObjectCache | None:
        """A cache for ``db`` (None unless it is SQLite, or if its connection cannot be
        opened: then every Read goes to the database). Blocks briefly: call at start."""
        if db.dialect != "sqlite":
            return None
        try:
            conn = sqlite3.connect(
                db.where, isolation_level=None, check_same_thread=False, timeout=0
            )
        except sqlite3.Error as exc:
            log.warning("read_cache_off", error=str(exc)[:200])
            return None
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            conn.close()
            log.warning("read_cache_off", error=str(exc)[:200])
            return None
        except BaseException:
            conn.close()
            raise
        return cls(conn)

    def close(self) -> None:
        self._entries.clear()
        self._conn.close()

    def _current(self) -> int | None:
        try:
            row = self._conn.execute(GENERATION_QUERY).fetchone()
        except sqlite3.Error:
            return None  # busy, or gone: a miss
        return None if row is None else int(row[0])

    def get(self, name: str, epoch: int | None, now: datetime) -> SecretObject | None:
        """The cached object if the tables have not changed since it was verified."""
        entry = self.lookup(name, epoch, now)
        return None if entry is None else entry.obj

    def lookup(self, name: str, epoch: int | None, now: datetime) -> Verified | None:
        """:meth:`get`, with what was verified with the object (its row's tag)."""
        entry = self._entries.get((name, epoch))
        if entry is None or not entry.usable_at(now):
            self.misses += 1
            return None
        current = self._current()
        if current is None or current != entry.generation:
            self._entries.clear()  # the tables moved on (or cannot be checked now)
            if current is not None and current > self._generation:
                self._generation = current  # reads of older snapshots are not kept
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, name: str, epoch: int | None, verified: Verified) -> None:
        """Keep what a read from the database verified (unless older than the cache)."""
        generation = verified.generation
        if generation is None or generation < self._generation:
            return
        if len(verified.obj.value) > MAX_CACHED_VALUE:
            return
        if generation > self._generation:
            self._entries.clear()
            self._generation = generation
        if len(self._entries) >= MAX_ENTRIES:
            del self._entries[next(iter(self._entries))]
        self._entries[(name, epoch)] = verified

    def __len__(self) -> int:
        return len(self._entries)
