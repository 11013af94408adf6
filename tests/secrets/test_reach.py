"""List and Watch by a caller with no possible right under the prefix: refused at once.

The attacks of the review (F6, F9, F10): a program the guard gives nothing lists a
prefix (the server filtered every name under it, ~200 ms at 6,000 names: a count and
timing oracle), watches with an old cursor (the server scanned the whole event log,
100,000 rows, for nothing) and reads the answer's cursor (how many changes the server
has seen). Now each is refused before any scan, audited a few times then summarized;
a caller with some right under the prefix still lists and watches, and no Watch
request looks at more than MAX_WATCH_SCAN rows of the log.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import trio

from taonet.secrets import (
    Listing,
    ListRequest,
    UnauthorizedError,
    WatchBatch,
    WatchEvent,
    WatchRequest,
    connect,
)
from taonet_services.secret_server._watch import MAX_WATCH_SCAN
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.world import secret_world

GRANTS = [("owner", op, "/app") for op in ("Read", "Write", "Create")] + [
    ("reader", "Read", "/app/x"),
]


def refusal_rows(path: Path, op: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(
            db.execute(
                "select count(*) from audit_entries where kind = 'secret_refused'"
                " and details like ?",
                (f"%{op}%",),
            ).fetchone()[0]
        )
    finally:
        db.close()


async def test_a_stranger_cannot_list_or_watch(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            owner = await world.identity("owner")
            async with connect(world.address, owner) as store:
                for i in range(9):
                    await store.create(f"/app/n{i}", b"v")
            async with connect(world.address, await world.identity("stranger")) as store:
                # The old server answered an empty Listing (after filtering every name).
                with pytest.raises(UnauthorizedError):
                    await store.call(ListRequest("/app"))
                # The old server long-polled, then answered cursor=9: the change count.
                for cursor in (0, 1):
                    with pytest.raises(UnauthorizedError):
                        await store.call(WatchRequest("/", cursor))
                for _ in range(40):  # repeated: a few rows, not one each
                    with pytest.raises(UnauthorizedError):
                        await store.call(ListRequest("/"))
            path = world.domain.path / "secrets.db"
            assert 1 <= refusal_rows(path, "Watch") <= 2
            assert 1 <= refusal_rows(path, "List") <= 10
            # Callers with a right under the prefix are served as before.
            async with connect(world.address, await world.identity("reader")) as store:
                assert await store.call(ListRequest("/app")) == Listing(())
            async with connect(world.address, owner) as store:
                listing = await store.call(ListRequest("/app"))
                assert isinstance(listing, Listing)
                assert len(listing.names) == 9


async def test_a_watch_looks_at_a_bounded_part_of_the_log(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(120):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            owner = await world.identity("owner")
            async with connect(world.address, owner) as store:
                await store.create("/app/x", b"v")
                # A long history of changes the reader may not see (as rows, quickly).
                path = world.domain.path / "secrets.db"
                db = sqlite3.connect(path)
                try:
                    now = time.time_ns()
                    with db:
                        db.executemany(
                            "insert into secret_events (name, epoch, kind, time_ns)"
                            " values (?, 1, 'written', ?)",
                            [(f"/app/other{i}", now) for i in range(3 * MAX_WATCH_SCAN)],
                        )
                finally:
                    db.close()
                await store.write("/app/x", b"w")  # the hub fetches past its buffer
            async with connect(world.address, await world.identity("reader")) as store:
                batch = await store.call(WatchRequest("/app", 1))
                assert isinstance(batch, WatchBatch)
                # The old server read all 3 x MAX_WATCH_SCAN rows in this one request
                # (then waited its long poll and answered the end of the log).
                assert batch.events == ()
                assert batch.cursor <= 1 + MAX_WATCH_SCAN
                # Going on from there reaches the reader's event, a bounded step each.
                cursor = batch.cursor
                seen: tuple[WatchEvent, ...] = ()
                for _ in range(5):
                    batch = await store.call(WatchRequest("/app", cursor))
                    assert isinstance(batch, WatchBatch)
                    assert batch.cursor - cursor <= MAX_WATCH_SCAN
                    cursor, seen = batch.cursor, batch.events
                    if seen:
                        break
                assert [e.id.name for e in seen] == ["/app/x"]
