"""A watcher that stops reading its channel is dropped; the others are not slowed.

A real channel that pipelines Watch calls whose answers are about 1 MB each and
never reads them, against a real server on SQLite with a short send timeout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from taonet.channel import open_channel
from taonet.protected import ObjectId
from taonet.secrets import MAX_RESPONSE_BODY, WatchEvent, WatchRequest, connect, encode_request
from taonet.wire import Envelope, Role
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.test_watch import GRANTS, collect, hub_of
from tests.secrets.world import secret_world


async def test_a_watcher_that_stops_reading_is_dropped_and_slows_nobody(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """A client pipelines Watch calls whose answers are 1 MB each and never reads: the
    server's sends to it block, then time out and its channel is closed; meanwhile a
    watcher on another channel gets its event."""
    send_timeout = 3.0
    with trio.fail_after(120):
        async with secret_world(
            tmp_path, make_domain, make_host, grants=GRANTS, send_timeout=send_timeout
        ) as world:
            hub = hub_of(world)
            # 1,000 events of names of ~1,000 bytes under /app/db (the reader may Read).
            names = [f"/app/db/{'x' * 990}/{i}" for i in range(1000)]

            def flood(cur: Any) -> None:
                for name in names:
                    hub.change_in(cur, ObjectId(name, 1), "created")

            await hub.db.transaction(flood)
            hub.on_change(ObjectId(names[-1], 1), "created")
            reader = await world.identity("reader")
            slow = await open_channel(*world.address, reader)
            envelope = Envelope(Role.CLIENT, body_limit=MAX_RESPONSE_BODY, max_frame=2**24)
            method, body = encode_request(WatchRequest("/app/db", 1))
            long_method, long_body = encode_request(WatchRequest(names[0], 1))
            sent = 0
            dropped = trio.Event()

            async def never_read() -> None:
                # Watch calls whose answers are ~1 MB each, then more calls for ever (their
                # own answers are tiny): it sends, it never reads. The server's sends to it
                # block; once the server closes the channel, our sends fail.
                nonlocal sent
                try:
                    while True:
                        sent += 1
                        m, b = (method, body) if sent <= 64 else (long_method, long_body)
                        await slow.send_all(b"".join(envelope.request(m, sent, b)))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    dropped.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(never_read)
                # Meanwhile, another watcher on its own channel is served at once.
                got: list[WatchEvent] = []
                async with connect(world.address, reader) as store, trio.open_nursery() as inner:
                    before = hub.watching
                    inner.start_soon(collect, store, "/app/db", 1, got)
                    await hub.wait_watching(before + 1)
                    async with connect(world.address, await world.identity("owner")) as owner:
                        started = time.perf_counter()
                        await owner.create("/app/db/fresh", b"new")
                latency = time.perf_counter() - started
                assert [e.id.name for e in got] == ["/app/db/fresh"]
                assert not dropped.is_set()  # served while the slow client still hung on
                # The client that never read is dropped (its sends fail), not kept for ever.
                with trio.fail_after(10 * send_timeout):
                    await dropped.wait()
                dropped_after = time.perf_counter() - started
            await trio.aclose_forcefully(slow)
    print(
        f"\nslow watcher: 64 ~1 MB answers and {sent - 64} more calls unread, dropped"
        f" {dropped_after:.1f} s after the other watcher's write (send timeout"
        f" {send_timeout:.0f} s); the other watcher got its event {latency * 1000:.0f} ms"
        " after the write"
    )
