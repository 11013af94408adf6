"""The watch hub's log and buffer on a real database: old cursors, concurrent fetches,
events that commit with their change or not at all."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from taonet import auth
from taonet.crypto import Signer
from taonet.protected import ObjectId
from taonet.secrets import WatchBatch, WatchRequest
from taonet_services.secret_server._service import Call
from taonet_services.secret_server._watch import WatchHub
from taonet_services.storage import Database

PRINCIPAL = auth.key_principal(Signer.generate().public_key_der())


@attrs.define
class Guarded:
    """Stands for the server in a Call: may Read everything but /hidden."""

    def is_authorized(self, principal: auth.Prin, op: str, name: str) -> bool:
        return op == "Read" and not name.startswith("/hidden")

    def may_reach(self, principal: auth.Prin, op: str, prefix: str) -> bool:
        return self.is_authorized(principal, op, prefix)


def call() -> Call:
    return Call(Guarded(), PRINCIPAL, "test")  # type: ignore[arg-type]


async def add(hub: WatchHub, names: list[str]) -> None:
    def append(cur: Any) -> None:
        for name in names:
            hub.change_in(cur, ObjectId(name, 1), "created")

    await hub.db.transaction(append)
    hub.on_change(ObjectId(names[-1], 1), "created")


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        url: Any = tmp_path / "events.db"
    else:
        url = request.getfixturevalue("postgres_url")
    with trio.fail_after(30):
        database = await Database.open(url)
    yield database
    with trio.fail_after(30):
        await database.aclose()


async def test_old_cursors_read_the_log_and_new_ones_the_buffer(db: Database) -> None:
    hub = WatchHub(db, buffer_events=10, long_poll=5.0)
    with trio.fail_after(30):
        await hub.create_tables()
        names = [f"/a/{i:03}" for i in range(40)]
        await add(hub, names[:20])
        await add(hub, ["/hidden/x"])
        await add(hub, names[20:])
        await hub.fetch()
        fetches = hub.fetches
        # From the start: served from the database (the buffer holds the last 10).
        seen: list[str] = []
        cursor = 1
        while len(seen) < 39:
            batch = await hub.serve(call(), WatchRequest("/a", cursor))
            assert isinstance(batch, WatchBatch)
            seen += [e.id.name for e in batch.events]
            cursor = batch.cursor
        assert seen == names[1:]  # after seq 1, in order, /hidden never
        # A cursor inside the buffer: from memory, no read of the log.
        batch = await hub.serve(call(), WatchRequest("/", cursor - 3))
        assert [e.id.name for e in batch.events] == names[-3:]  # type: ignore[union-attr]
        assert hub.fetches == fetches


async def test_concurrent_fetches_buffer_each_event_once(db: Database) -> None:
    hub = WatchHub(db)
    with trio.fail_after(30):
        await hub.create_tables()
        await add(hub, [f"/a/{i}" for i in range(50)])
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(hub.fetch)
        batch = await hub.serve(call(), WatchRequest("/", 1))
        assert isinstance(batch, WatchBatch)
        seqs = [e.seq for e in batch.events]
        assert seqs == sorted(set(seqs))
        assert len(seqs) == 49


async def test_an_event_exists_only_if_its_change_committed(db: Database) -> None:
    hub = WatchHub(db, long_poll=0.5)

    def fails(cur: Any) -> None:
        hub.change_in(cur, ObjectId("/a/rolled-back", 1), "created")
        raise RuntimeError("the change failed after its event was appended")

    with trio.fail_after(30):
        await hub.create_tables()
        await add(hub, ["/a/first"])
        await hub.fetch()
        with pytest.raises(RuntimeError):
            await db.transaction(fails)
        await add(hub, ["/a/second"])
        await hub.fetch()
        batch = await hub.serve(call(), WatchRequest("/", 1))
        assert [e.id.name for e in batch.events] == ["/a/second"]  # type: ignore[union-attr]


async def test_a_watch_with_nothing_new_answers_empty_after_the_long_poll(
    db: Database, autojump_clock: trio.testing.MockClock
) -> None:
    hub = WatchHub(db, long_poll=20.0)
    # The clock stands still while the database works in its thread (it would jump to
    # the deadline otherwise), then jumps through the long poll.
    autojump_clock.autojump_threshold = math.inf
    with trio.fail_after(60):
        await hub.create_tables()
        await add(hub, ["/a/x"])
        await hub.fetch()
    autojump_clock.autojump_threshold = 0
    with trio.fail_after(60):
        start = trio.current_time()
        batch = await hub.serve(call(), WatchRequest("/a", 0))
        assert trio.current_time() - start >= 20.0
    assert batch == WatchBatch((), 1)
