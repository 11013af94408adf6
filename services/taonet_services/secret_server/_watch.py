"""Watch: a long poll for "this object changed" events, fanned out once per change.

Event log. Every committed change (created, written, rotated, deleted) has a row in
``secret_events(seq, name, epoch, kind, time_ns)``, appended by :meth:`WatchHub.change_in`
inside the change's own transaction (so an event exists exactly when its change
does); ``seq`` is the log's order and the watchers' cursor. On PostgreSQL the same
transaction runs ``NOTIFY taonet_secret_events``, which PostgreSQL delivers at
commit to every replica's listener. The log keeps the newest :data:`KEEP_EVENTS`
rows (older ones are pruned as new ones come).

Fan-out. One task per server (:meth:`WatchHub.run`) waits for a change: the local
``on_change`` hook after a commit here, or a notification from another replica
(a dedicated PostgreSQL connection with ``LISTEN``, read by waiting on its socket:
no polling). It then reads the new rows once (one query whatever the number of
watchers) into a ring buffer of the latest :data:`BUFFER_EVENTS` events, and sets
one :class:`trio.Event` that every waiting watcher shares (one wake-up per change,
not one query per watcher).

Watch requests (:meth:`WatchHub.serve`, the ``SecretService.Watch`` extension): a
caller that could Read no name under the prefix (no rule of the guard, no grant;
``SecretServer.may_reach``) is refused at once, audited a few times per principal
then summarized, and is never told a cursor (which would say how many changes the
server has seen); no request looks at more than :data:`MAX_WATCH_SCAN` rows of the
log (it then answers what it found, with the cursor to go on from).
``cursor`` 0 means "from now" (the current end of the log); the answer holds the
events after the cursor under ``prefix``
(segment-wise) on names the caller may Read (the guard, grants), at most
:data:`~taonet.secrets.MAX_EVENTS`, as soon as there is one; or none after
:data:`LONG_POLL` seconds. The answer's cursor is the last event looked at, so
events the caller may not see are skipped for good. A cursor older than the
buffer is served from the database, a page at a time. Read decisions are
remembered per (principal, name) until the next fetch of the log (so a thousand
watchers of one program cost one guard query per event; a right revoked, a grant
taken back, holds from the next change on).

A watcher that stops reading its channel is the server's send timeout's to drop;
watchers on other channels never wait for it (each channel sends on its own task).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import functools
import itertools
import time
from collections.abc import Callable
from typing import Any, Final

import attrs
import structlog
import trio

from taonet import auth
from taonet.audit import bounded
from taonet.protected import ObjectId
from taonet.secrets import (
    MAX_EVENTS,
    ErrorCode,
    Failure,
    Request,
    Response,
    WatchBatch,
    WatchEvent,
    WatchRequest,
)
from taonet_services.secret_server._service import Call
from taonet_services.secret_server._store import RESERVED_PREFIX
from taonet_services.storage import Database

__all__ = ["BUFFER_EVENTS", "CHANNEL", "KEEP_EVENTS", "LONG_POLL", "MAX_WATCH_SCAN", "WatchHub"]

log = structlog.get_logger(__name__)

#: Seconds a Watch waits for an event before answering with none.
LONG_POLL: Final = 20.0
#: Events kept in memory for watchers (older cursors read the database).
BUFFER_EVENTS: Final = 10_000
#: Events kept in the database.
KEEP_EVENTS: Final = 100_000
#: The PostgreSQL notification channel.
CHANNEL: Final = "taonet_secret_events"
#: The PostgreSQL advisory lock event writers take (transaction-scoped): "tevents".
_EVENT_LOCK: Final = 0x74657665_6E7473
#: Read decisions remembered between two fetches of the log.
_MAX_DECISIONS: Final = 10_000
#: Most rows one database read of the log returns.
_PAGE: Final = 5 * MAX_EVENTS
#: Most rows of the log one Watch request looks at (then it answers what it found).
MAX_WATCH_SCAN: Final = 2 * _PAGE


@attrs.frozen
class _Row:
    seq: int
    name: str
    epoch: int
    kind: str


def event_statements(db: Database) -> list[str]:
    text = "TEXT" if db.dialect == "sqlite" else 'TEXT COLLATE "C"'
    return [
        f"""CREATE TABLE IF NOT EXISTS secret_events (
            seq {db.id_column},
            name {text} NOT NULL,
            epoch BIGINT NOT NULL,
            kind TEXT NOT NULL,
            time_ns BIGINT NOT NULL)""",
    ]


def _under(name: str, prefix: str) -> bool:
    if prefix == "/":
        return True
    base = prefix.rstrip("/")
    return name == base or name.startswith(base + "/")


def _reserved(name: str) -> bool:
    return name == RESERVED_PREFIX or name.startswith(RESERVED_PREFIX + "/")


class WatchHub:
    """The event log and the watchers of one server (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        listen_url: str | None = None,
        long_poll: float = LONG_POLL,
        buffer_events: int = BUFFER_EVENTS,
        keep_events: int = KEEP_EVENTS,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.db: Final = db
        self.listen_url: Final = listen_url
        self.long_poll: Final = long_poll
        self.keep_events: Final = keep_events
        self._clock = clock
        self._buffer: collections.deque[_Row] = collections.deque(maxlen=buffer_events)
        #: The last seq read from the log (the buffer holds what follows its start).
        self.head = 0
        self._floor = 0  # events after this seq are all in the buffer
        self._changed = trio.Event()
        self._poke = trio.Event()
        self._fetching = trio.Lock()
        # (principal, name) -> may Read, for the watchers woken by one fetch: a thousand
        # watchers of one program ask the guard once per event, not a thousand times.
        self._decisions: dict[tuple[auth.Prin, str], bool] = {}
        #: Reads of the log made to fan out (one per batch of changes), for tests.
        self.fetches = 0
        #: Watch calls being answered now.
        self.watching = 0
        self._counted = trio.Event()

    # -- the log --------------------------------------------------------------------

    async def create_tables(self) -> None:
        def create(cur: Any) -> None:
            for statement in event_statements(self.db):
                cur.execute(statement)

        await self.db.transaction(create)
        self.head = self._floor = await self.db.transaction(self._max_seq, write=False)

    def _max_seq(self, cur: Any) -> int:
        cur.execute("SELECT COALESCE(MAX(seq), 0) FROM secret_events")
        return int(cur.fetchone()[0])

    def change_in(self, cur: Any, oid: ObjectId, kind: str) -> None:
        """Append the event of a change inside its transaction (the server's hook)."""
        db = self.db
        if db.dialect == "postgresql":
            # Events get their seq in commit order: a watcher that has read up to seq N
            # never misses an N-1 committed later (held until this transaction ends).
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_EVENT_LOCK,))
        cur.execute(
            db.sql(
                "INSERT INTO secret_events (name, epoch, kind, time_ns) VALUES (?, ?, ?, ?)"
                " RETURNING seq"
            ),
            (oid.name, oid.epoch, kind, self._clock()),
        )
        seq = int(cur.fetchone()[0])
        if seq % 1000 == 0:
            cur.execute(
                db.sql("DELETE FROM secret_events WHERE seq <= ?"), (seq - self.keep_events,)
            )
        if db.dialect == "postgresql":
            cur.execute(f"NOTIFY {CHANNEL}")

    def on_change(self, oid: ObjectId, kind: str) -> None:
        """A change here committed (the server's ``on_change`` hook): fetch and fan out."""
        self._poke.set()

    def _read(self, cur: Any, after: int, limit: int) -> list[_Row]:
        cur.execute(
            self.db.sql(
                "SELECT seq, name, epoch, kind FROM secret_events WHERE seq > ?"
                " ORDER BY seq LIMIT ?"
            ),
            (after, limit),
        )
        return [_Row(int(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in cur.fetchall()]

    async def fetch(self) -> None:
        """Read what the log holds after ``head`` into the buffer; wake the watchers."""
        async with self._fetching:  # one reader at a time, or rows would be buffered twice
            await self._fetch()

    async def _fetch(self) -> None:
        while True:
            head = self.head
            rows: list[_Row] = await self.db.transaction(
                functools.partial(self._read, after=head, limit=_PAGE), write=False
            )
            self.fetches += 1
            if rows:
                self._buffer.extend(rows)
                self.head = rows[-1].seq
                if len(self._buffer) == self._buffer.maxlen:  # the oldest may have left it
                    self._floor = max(self._floor, self._buffer[0].seq - 1)
            if len(rows) < _PAGE:
                break
        self._decisions = {}  # grants and guards may have changed: ask again
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    # -- background tasks ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch and fan out after each change here or (PostgreSQL) on another replica."""
        async with trio.open_nursery() as nursery:
            if self.db.dialect == "postgresql" and self.listen_url is not None:
                await nursery.start(self._listen)
            task_status.started()
            while True:
                await self._poke.wait()
                self._poke = trio.Event()
                try:
                    await self.fetch()
                except Exception as exc:  # the database: keep serving, try again next change
                    log.warning("watch_fetch_failed", error=bounded(str(exc), 300))
                    await trio.sleep(0.5)
                    self._poke.set()

    async def _listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """LISTEN on a dedicated connection; poke on each notification (no polling)."""
        import psycopg

        url = self.listen_url
        assert url is not None
        started = False
        while True:
            try:
                conn = await trio.to_thread.run_sync(
                    lambda: psycopg.connect(url, autocommit=True, connect_timeout=10)
                )
            except psycopg.Error as exc:
                log.warning("watch_listen_failed", error=bounded(str(exc), 300))
                if not started:
                    started = True
                    task_status.started()
                await trio.sleep(1.0)
                continue
            try:
                await trio.to_thread.run_sync(conn.execute, f"LISTEN {CHANNEL}")
                self._poke.set()  # whatever happened while not listening
                if not started:
                    started = True
                    task_status.started()
                pgconn = conn.pgconn
                while True:
                    await trio.lowlevel.wait_readable(pgconn.socket)
                    pgconn.consume_input()
                    got = False
                    while pgconn.notifies() is not None:
                        got = True
                    if got:
                        self._poke.set()
                    if pgconn.status != 0:  # CONNECTION_OK
                        raise psycopg.OperationalError("the LISTEN connection was lost")
            except (psycopg.Error, OSError) as exc:
                log.warning("watch_listen_lost", error=bounded(str(exc), 300))
                await trio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

    # -- Watch requests -----------------------------------------------------------------

    def _after(self, cursor: int) -> list[_Row] | None:
        """Buffered events after ``cursor``; None if the buffer does not reach back."""
        if cursor < self._floor:
            return None
        start = bisect.bisect_right(self._buffer, cursor, key=lambda r: r.seq)
        return list(itertools.islice(self._buffer, start, None))

    async def serve(self, call: Call, request: Request) -> Response:
        """The Watch extension (see the module docstring)."""
        if not isinstance(request, WatchRequest):
            return Failure(ErrorCode.INVALID, "not a Watch request")
        if not call.server.may_reach(call.principal, "Read", request.prefix):
            # Nothing it could ever see: no scan, no wait, no cursor (the log's length).
            why = f"the caller may Read no name under {request.prefix[:200]}"
            return await call.server.refuse(call.principal, call.peer, "Watch", request.prefix, why)
        scanned = 0
        cursor = request.cursor or self.head
        if cursor > self.head:
            await self.fetch()
            cursor = min(cursor, self.head)
        self._count(+1)
        try:
            with trio.move_on_after(self.long_poll):
                while True:
                    changed = self._changed
                    buffered = self._after(cursor)
                    if buffered is None:
                        rows: list[_Row] = await self.db.transaction(
                            functools.partial(self._read, after=cursor, limit=_PAGE), write=False
                        )
                    else:
                        rows = buffered
                    events: list[WatchEvent] = []
                    for row in rows:
                        if len(events) == MAX_EVENTS or scanned >= MAX_WATCH_SCAN:
                            break
                        scanned += 1
                        cursor = row.seq
                        if (
                            _under(row.name, request.prefix)
                            and not _reserved(row.name)
                            and self._may_read(call, row.name)
                        ):
                            events.append(
                                WatchEvent(ObjectId(row.name, row.epoch), row.kind, row.seq)
                            )
                    if events or scanned >= MAX_WATCH_SCAN:
                        return WatchBatch(events, cursor)  # the next call goes on from here
                    if rows and cursor < self.head:
                        continue  # a page of others' events from the database: read on
                    await changed.wait()
            return WatchBatch((), cursor)
        finally:
            self._count(-1)

    def _may_read(self, call: Call, name: str) -> bool:
        key = (call.principal, name)
        decision = self._decisions.get(key)
        if decision is None:
            decision = call.server.is_authorized(call.principal, "Read", name)
            if len(self._decisions) >= _MAX_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def _count(self, delta: int) -> None:
        self.watching += delta
        counted, self._counted = self._counted, trio.Event()
        counted.set()

    async def wait_watching(self, n: int) -> None:
        """Wait until ``n`` Watch calls are waiting here (for tests and benchmarks)."""
        while self.watching < n:
            await self._counted.wait()
